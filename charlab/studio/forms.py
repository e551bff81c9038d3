"""The launch form shared by the Training and Evaluation pages: any stage, its groups and every key.

The form is built from the composed config only: the stage's keys (and LoRA's, for training stages) with their
YAML defaults and comments, the config groups' options from `configs/`, and inputs that name files or runs
offered from the existing run directories. What the user changed becomes overrides; the command shown is the
command launched.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import streamlit as st
import yaml

from charlab.studio import configs, ui
from charlab.studio.runs import RunInfo, data_files, find_adapters

# Which artifacts a stage key that names an input can point at, by words in the key's name.
_INPUT_KINDS = (
    (("pairs",), "pairs.jsonl"),
    (("introspection", "data"), "introspection.jsonl"),
    (("adapter", "checkpoint"), "adapter"),
    (("resume_from", "run", "runs"), "run"),
)
TYPED = "(type a path)"
_MAIN_GROUPS = ("persona", "model", "backend", "lora", "data")
_TRAINING_NODES = ("data", "backend", "teacher", "student", "judge")
_EVAL_NODES = ("eval", "judge", "student", "backend")

_MORE_GROUPS = ("provider@teacher", "provider@student", "provider@judge", "eval", "logger", "launcher")


def input_kind(key: str) -> Optional[str]:
    """What kind of artifact a stage key names (`stage.pairs` -> pairs.jsonl), or None for plain settings."""
    name = key.rsplit(".", 1)[-1]
    for words, kind in _INPUT_KINDS:
        if any(w == name or name.startswith(w + "_") or name.endswith("_" + w) for w in words):
            return kind
    return None


def candidates(kind: str, runs: list[RunInfo]) -> list[Path]:
    """Existing artifacts of a kind, newest runs first."""
    completed = [r for r in runs if r.status == "completed"]
    if kind == "adapter":
        return [a for r in completed for a in find_adapters(r)]
    if kind == "run":
        return [r.dir for r in completed]
    return data_files(completed, (kind,))


def stage_summary(stage: str) -> str:
    """The prose at the top of a stage's YAML (up to its example commands)."""
    lines = []
    for line in configs.header_comment(configs.yaml_of("stage", stage)).splitlines():
        if line.strip().startswith(("python ", "charlab", "OPENAI_", "TINKER_")) or not line.strip():
            break
        lines.append(line.strip())
    text = re.sub(r"\s*(Examples?|e\.g\.)\s*:?\s*$", "", " ".join(lines))
    return re.sub(r"\s*:\s*$", ".", text).strip()


def uses_lora(stage: str) -> bool:
    """Whether a stage trains or loads a LoRA (it has a LoRA shape of its own or mentions one in its YAML)."""
    path = configs.yaml_of("stage", stage)
    return stage in configs.group_options("lora") or (path is not None and "lora" in path.read_text().lower())


def global_nodes(stage: str) -> list[str]:
    """Extra top-level nodes a `@package _global_` stage YAML defines (e.g. the pipeline's `pipeline:`)."""
    path = configs.yaml_of("stage", stage)
    if path is None or "@package _global_" not in configs.header_comment(path) + path.read_text()[:200]:
        return []
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [k for k in data if k not in ("defaults", "stage")]


def _group_overrides(base: configs.Composed, stage: str, key: str, training: bool) -> list[str]:
    """The persona and config-group pickers (main groups in a row, the rest folded away); their overrides."""
    paths = configs.paths(base)
    groups = [g for g in _MAIN_GROUPS if training or g != "lora"]
    cols = st.columns(len(groups))
    selected: dict[str, Any] = {}
    persona: Optional[str] = None
    with cols[0]:
        persona = ui.persona_picker(paths["constitutions"], key)
    for col, group in zip(cols[1:], groups[1:]):
        with col:
            # the stage's own LoRA shape (lora=sft for stage=sft) is the natural start
            default = stage if group == "lora" and stage in configs.group_options("lora") else None
            selected[group] = ui.group_picker(base, group, key=f"{key}{stage}", default=default)
    with st.expander("Providers, logging and other config groups"):
        more = st.columns(3)
        for i, group in enumerate(g for g in _MORE_GROUPS if g in base.choices):
            with more[i % 3]:
                selected[group] = ui.group_picker(base, group, key=f"{key}{stage}")
    overrides = []
    if persona is not None and persona != base.choices.get("persona"):
        overrides += configs.persona_overrides(persona)
    return overrides + configs.group_overrides(base.choices, selected)


def stage_form(stages: list[str], key: str, training: bool) -> Optional[list[str]]:
    """Draw the form; return the override list (or None when the config does not compose)."""
    if not stages:
        st.info("No stages of this kind exist yet: their YAML files appear in configs/stage/ as they are written.")
        return None
    stage = st.selectbox("Stage", stages, key=f"{key}stage")
    base = ui.compose([f"stage={stage}"])
    if base is None:
        return None
    doc = stage_summary(stage)
    if doc:
        st.caption(doc)
    # the stage is always named, even when it is the default: the command says what it runs
    overrides = [f"stage={stage}", *_group_overrides(base, stage, key, training)]
    composed = ui.compose(overrides)
    if composed is None:
        return None

    runs = ui.all_runs()
    values: dict[str, Any] = {}
    specs = configs.field_specs(composed, "stage")
    plain = [s for s in specs if input_kind(s.key) is None]
    inputs = [s for s in specs if input_kind(s.key) is not None]
    if inputs:
        st.subheader("Inputs")
        for spec in inputs:
            values[spec.key] = _input_widget(spec, runs, f"{key}{stage}")
    if training and "lora" in composed.cfg:
        title = f"LoRA ({composed.choices.get('lora')})"
        lora_specs = configs.field_specs(composed, "lora")
        # a stage that names LoRA in its YAML trains one: its shape is a main setting; elsewhere it is tucked away
        shown = st.container() if uses_lora(stage) else st.expander(title + ": used by the stages that train")
        with shown:
            if uses_lora(stage):
                st.subheader(title)
            values.update(ui.fields_form(lora_specs, key=f"{key}{stage}{composed.choices.get('lora')}", split=False))
        specs = specs + lora_specs
    st.subheader("Stage settings")
    values.update(ui.fields_form(plain, key=f"{key}{stage}"))
    for node in global_nodes(stage):
        st.subheader(node.capitalize())
        node_specs = configs.field_specs(composed, node)
        values.update(ui.fields_form(node_specs, key=f"{key}{stage}{node}", split=False))
        specs = specs + node_specs
    nodes = [n for n in (_TRAINING_NODES if training else _EVAL_NODES) if n in composed.cfg]
    with st.expander(f"Settings of the {', '.join(nodes)} configs"):
        for tab, node in zip(st.tabs([f"{n} ({_choice(composed, n)})" for n in nodes]), nodes):
            with tab:
                node_specs = configs.field_specs(composed, node, skip=("name", "kind"))
                values.update(
                    ui.fields_form(node_specs, key=f"{key}{stage}{node}{_choice(composed, node)}", split=False)
                )
                specs = specs + node_specs
    missing = ui.missing_required(specs, values)
    if missing:
        st.warning("Fill in: " + ", ".join(missing), icon=":material/edit_note:")
        return None
    overrides += configs.changed_overrides(specs, values)
    return overrides if ui.compose(overrides) is not None else None


def _choice(composed: configs.Composed, node: str) -> str:
    """The option a node's group got (`teacher` -> the `provider@teacher` choice)."""
    group = next((g for g in composed.choices if g == node or g.endswith(f"@{node}")), node)
    return str(composed.choices.get(group))


def _input_widget(spec: configs.FieldSpec, runs: list[RunInfo], key: str) -> Any:
    kind = input_kind(spec.key) or ""
    found = candidates(kind, runs)
    stage_word = spec.name.split("_")[0]  # dpo_adapter: a dpo run's adapter first
    found.sort(key=lambda p: stage_word not in p.parts)
    help_text = spec.help or f"a {kind} from an earlier run, or a path"
    label = spec.name.replace("_", " ") + (" *" if spec.required else "")
    wkey = f"{key}{spec.key}"
    if spec.kind == "list":
        default = [str(v) for v in (spec.value or [])]
        options = list(dict.fromkeys(default + [str(p) for p in found]))
        return st.multiselect(label, options, default=default, key=wkey, help=help_text, accept_new_options=True)
    choices: list[Any] = ([ui.REQUIRED] if spec.required else []) + [None] + [str(p) for p in found]
    if spec.value not in (None, "") and str(spec.value) not in choices:
        choices.insert(0, str(spec.value))
    start = choices.index(str(spec.value)) if spec.value not in (None, "") else 0
    names = {ui.REQUIRED: "(choose one)", None: "(none: null)", TYPED: TYPED}
    choice = st.selectbox(
        label, [*choices, TYPED], index=start, key=wkey, format_func=lambda c: names.get(c, c), help=help_text
    )
    if choice == TYPED:
        typed = st.text_input(f"{label}: path", key=f"{wkey}typed").strip()
        return typed or (ui.REQUIRED if spec.required else None)
    return choice
