"""Streamlit widgets the pages share: error boxes, config forms, group, persona and run pickers.

Page modules stay small by composing these (and `live` for runs); everything that is not drawing lives in the
plain modules (`configs`, `runs`, `launcher`, `editor`, `services`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import streamlit as st

from charlab.errors import CharlabError
from charlab.studio import configs
from charlab.studio.runs import RunInfo, list_runs

REQUIRED = "???"  # a required key the user has not filled in yet (OmegaConf's own marker)
STATUS_ICONS = {"completed": "✓", "running": "●", "failed": "✗", "stopped": "■"}  # plain glyphs: every font has them


# ---------------------------------------------------------------------------------------------- basics


def header(title: str, intro: str) -> None:
    st.title(title)
    st.caption(intro)


def error_text(err: BaseException) -> str:
    """One line for the user: our own errors as they are, anything else with its type (never a traceback)."""
    if isinstance(err, CharlabError):
        return str(err)
    text = " ".join(str(err).split()) or "no details"
    return f"{type(err).__name__}: {text[:300]}"


@contextlib.contextmanager
def shown_errors(prefix: str = "") -> Iterator[None]:
    """Show any error raised inside as a red box instead of a stack trace (reruns and stops pass through)."""
    try:
        yield
    except Exception as err:  # Streamlit's rerun/stop are BaseExceptions and are not caught here
        st.error(f"{prefix}{error_text(err)}", icon=":material/error:")


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def cached_sampler(key: tuple, _build: Callable[[], Any]) -> Any:
    """One sampler per (provider, model, adapter) for the whole Studio: a local model is loaded once."""
    return _build()


def compose(overrides: list[str]) -> Optional[configs.Composed]:
    """The composed config, or None after showing why it does not compose."""
    try:
        return configs.compose(overrides)
    except CharlabError as err:
        st.error(str(err), icon=":material/error:")
        return None


def paths() -> dict[str, Path]:
    return configs.paths(configs.compose([]))


def runs_root() -> Path:
    return paths()["output_root"]


# ---------------------------------------------------------------------------------------------- forms


def group_picker(
    composed: configs.Composed,
    group: str,
    label: Optional[str] = None,
    key: str = "",
    help: Optional[str] = None,
    default: Optional[str] = None,
) -> Optional[str]:
    """A select box over a config group's options, starting at `default` or the composed choice."""
    options = configs.group_options(group)
    current = default or composed.choices.get(group)
    if group == "experiment":
        options = [None, *options]
    if current not in options:
        options = [current, *options]
    return st.selectbox(
        label or group,
        options,
        index=options.index(current),
        key=f"{key}group:{group}",
        format_func=lambda o: "(none)" if o is None else str(o),
        help=help,
    )


def field_widget(spec: configs.FieldSpec, key: str) -> Any:
    """One config key as a widget; returns the value in the key's own type (None = null)."""
    label = spec.label + (" *" if spec.required else "")
    help_text = spec.help or None
    if spec.interpolation:
        help_text = f"{spec.help + ' · ' if spec.help else ''}default follows {spec.interpolation}"
    wkey = f"{key}{spec.key}"
    if spec.kind == "bool":
        return st.checkbox(label, value=bool(spec.value), key=wkey, help=help_text)
    if spec.kind == "list":
        value = [str(v) for v in spec.value or []]
        options = list(dict.fromkeys(spec.choices + value))
        return st.multiselect(label, options, default=value, key=wkey, help=help_text, accept_new_options=True)
    number = isinstance(spec.value, (int, float)) and not isinstance(spec.value, bool)
    if spec.kind == "int" and number:
        return int(st.number_input(label, value=int(spec.value), step=1, key=wkey, help=help_text))
    if spec.kind == "float" and number:
        value = float(spec.value)
        step = 10.0 ** math.floor(math.log10(abs(value))) if value else 0.01  # lr 1e-4 steps by 1e-4, beta 0.1 by 0.1
        return float(st.number_input(label, value=value, step=step, format="%g", key=wkey, help=help_text))
    if spec.choices:
        index = spec.choices.index(spec.value) if spec.value in spec.choices else None
        choice = st.selectbox(label, spec.choices, index=index, key=wkey, help=help_text, placeholder="choose one")
        return REQUIRED if choice is None and spec.required else choice
    shown = "" if spec.value is None else str(spec.value)
    placeholder = "required" if spec.required else ("null" if spec.optional else None)
    text = st.text_input(label, value=shown, key=wkey, help=help_text, placeholder=placeholder)
    return _typed(text, spec)


def _typed(text: str, spec: configs.FieldSpec) -> Any:
    text = text.strip()
    if not text:
        return REQUIRED if spec.required else (None if spec.optional else "")
    if spec.kind == "int":
        try:
            return int(text)
        except ValueError:
            return text  # composing will name the key and the problem
    if spec.kind == "float":
        try:
            return float(text)
        except ValueError:
            return text
    return text


# Keys shown first, outside "Advanced": the hyperparameters people change (names only, never values).
MAIN_KEYS = (
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "batch_size",
    "lr",
    "learning_rate",
    "beta",
    "nll_coef",
    "epochs",
    "max_length",
    "max_steps",
    "train_on",
    "samples_per_prompt",
    "num_prompts",
    "players",
    "description",
)


def fields_form(specs: list[configs.FieldSpec], key: str, columns: int = 4, split: bool = True) -> dict[str, Any]:
    """Widgets for several keys; the usual hyperparameters first, the rest under "Advanced". {full key: value}."""
    values: dict[str, Any] = {}
    specs = [s for s in specs if s.kind != "dict"]  # mappings (the pipeline's wiring) stay override-only
    if not specs:
        st.caption("No settings.")
        return values
    main = [s for s in specs if s.name in MAIN_KEYS] if split else specs
    rest = [s for s in specs if s not in main]
    if not main:
        main, rest = rest, []
    _grid(main, key, columns, values)
    if rest:
        with st.expander(f"Advanced ({len(rest)} more)"):
            _grid(rest, key, columns, values)
    return values


def _grid(specs: list[configs.FieldSpec], key: str, columns: int, values: dict[str, Any]) -> None:
    """Inputs in a grid, then lists full width, then check boxes (so rows line up)."""
    inputs = [s for s in specs if s.kind not in ("bool", "list")]
    for group, width in ((inputs, columns), ([s for s in specs if s.kind == "list"], 1)):
        cols = st.columns(width) if group else []
        for i, spec in enumerate(group):
            with cols[i % width]:
                values[spec.key] = field_widget(spec, key)
    flags = [s for s in specs if s.kind == "bool"]
    cols = st.columns(columns) if flags else []
    for i, spec in enumerate(flags):
        with cols[i % columns]:
            values[spec.key] = field_widget(spec, key)


def missing_required(specs: list[configs.FieldSpec], values: dict[str, Any]) -> list[str]:
    """Required keys (`???` in the YAML) the form has no value for yet (null chosen explicitly counts)."""
    return [s.key for s in specs if s.required and values.get(s.key, REQUIRED) == REQUIRED]


def persona_picker(constitutions: Path, key: str, label: str = "persona") -> Optional[str]:
    from charlab.constitution import list_personas

    names = list_personas(constitutions)
    if not names:
        st.warning(f"No constitutions in {constitutions}: create one on the Constitution page.")
        return None
    default = "pirate" if "pirate" in names else names[0]
    return st.selectbox(label, names, index=names.index(default), key=f"{key}persona")


def run_picker(
    runs: list[RunInfo], label: str, key: str, root: Optional[Path] = None, allow_none: bool = False
) -> Optional[RunInfo]:
    """A select box over runs: `persona / stage · time · status`."""
    options: list[Optional[RunInfo]] = ([None] if allow_none else []) + list(runs)
    if not options:
        return None
    return st.selectbox(
        label,
        options,
        key=key,
        format_func=lambda r: "(none)" if r is None else run_label(r, root),
    )


def run_label(run: RunInfo, root: Optional[Path] = None) -> str:
    icon = STATUS_ICONS.get(run.status, "•")
    where = run.relative(root) if root else run.dir.name
    return f"{icon} {run.persona} / {run.stage} · {where}"


def path_choice(label: str, candidates: list[Path], key: str, help: Optional[str] = None) -> Optional[str]:
    """Pick a file or folder from existing run artifacts, or type a path."""
    typed = "(type a path)"
    options = [str(c) for c in candidates] + [typed]
    choice = st.selectbox(label, options, key=f"{key}pick", help=help)
    if choice == typed:
        return st.text_input(f"{label} (path)", key=f"{key}typed").strip() or None
    return choice


def empty_runs_message(root: Path) -> None:
    st.info(
        f"No runs yet in `{root}`. Launch one on the Training or Evaluation page, or from a shell: "
        "`python -m charlab.train stage=show`.",
        icon=":material/inbox:",
    )


def all_runs() -> list[RunInfo]:
    return list_runs(runs_root())


def provider_overrides(
    base: configs.Composed, role: str, key: str, label: Optional[str] = None, horizontal: bool = False
) -> list[str]:
    """Pick a role's provider (every `configs/provider/` option: hf | openai | tinker | vllm), its model and, for
    OpenAI-compatible servers, the base URL; for vllm, where the managed server's Python is."""
    slots = st.columns(3) if horizontal else [st.container(), st.container(), st.container()]
    with slots[0]:
        kind = group_picker(base, f"provider@{role}", label=label or f"{role} provider", key=key)
    overrides = [] if kind == base.choices.get(f"provider@{role}") else [f"provider@{role}={kind}"]
    model = slots[1].text_input(
        f"{role} model", key=f"{key}{role}model", placeholder="the run's model", help="empty: the run's model"
    )
    if model.strip():
        overrides.append(configs.override(f"{role}.model", model.strip()))
    extra = PROVIDER_FIELDS.get(str(kind))  # a kind's own field in the third column, if it has one
    return overrides + (extra(role, key, slots[2]) if extra else [])


def base_url_field(role: str, key: str, slot: Any) -> list[str]:
    """An OpenAI-compatible provider's base URL (an override when given)."""
    url = slot.text_input(
        f"{role} base URL",
        key=f"{key}{role}url",
        placeholder="$OPENAI_BASE_URL or api.openai.com",
        help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 for vLLM",
    )
    return [configs.override(f"{role}.base_url", url.strip())] if url.strip() else []


def vllm_server_note(role: str, slot: Any) -> None:
    """Where charlab starts `vllm serve` from for `role`, and how to set it up when it is not there."""
    composed = compose([f"provider@{role}=vllm"])
    if composed is None:
        return
    python = Path(str(composed.cfg[role].server.python))
    if python.exists():
        slot.caption(f"charlab starts `vllm serve` from `{python}` and serves adapters on it as LoRA modules")
    else:
        slot.warning(f"No vLLM at `{python}`: run `bash scripts/setup_vllm.sh` or set {role}.server.python "
                     "(CHARLAB_VLLM_PYTHON)", icon=":material/warning:")  # fmt: skip


def _vllm_server_field(role: str, key: str, slot: Any) -> list[str]:
    vllm_server_note(role, slot)
    return []


# the third column of `provider_overrides` by provider kind: (role, widget key, slot) -> overrides
PROVIDER_FIELDS: dict[str, Callable[[str, str, Any], list[str]]] = {
    "openai": base_url_field,
    "vllm": _vllm_server_field,
}


def small_markdown(text: str, levels: int = 3) -> None:
    """Markdown with its headings made smaller (a document's `#` title inside a page section)."""
    import re

    st.markdown(re.sub(r"^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", text, flags=re.M))


def show_evaluation(run: RunInfo) -> bool:
    """The run's verdict line and in-persona rates (as the pipeline's report.md opens); False if it has none."""
    from charlab.studio.evaluation import evaluation_of

    view = evaluation_of(run)
    if view is None:
        return False
    with st.container(border=True):
        st.markdown(view.verdict)
        if view.rates:
            st.caption("In-persona rate on held-out prompts (persona classifier)")
            st.dataframe(view.rates, hide_index=True, width="stretch")
    return True
