"""The config side of the Studio: compose the same Hydra config the CLI does, describe its keys as form fields,
and turn what the user changed into override strings and the exact `python -m charlab.train ...` command.

Nothing here knows a default value: options come from the files in `configs/`, values from composing them
(Hydra's compose API, the YAML defaults), help texts and choices from the comments in the YAML files. A new
stage or option appears in the Studio as soon as its YAML exists.
"""

from __future__ import annotations

import functools
import re
import shlex
import sys
import threading
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from charlab.errors import ConfigError
from charlab.settings import configs_dir, project_root

# Hydra keeps one global instance; Streamlit serves every session from threads of one process.
_COMPOSE_LOCK = threading.Lock()
_INTERNAL_GROUPS = ("hydra", "paths", "schemas")
_SAFE_STRING = re.compile(r"^[A-Za-z_/~][\w./:@+~-]*$")
_KEYWORDS = {"true", "false", "null", "none", "nan", "inf", "-inf", "+inf"}
_KEY_LINE = re.compile(r"^(?P<key>[A-Za-z_][\w-]*):(?P<value>[^#]*?)(?:\s+#\s*(?P<comment>.*))?$")
# one alternative of "a | b (note) | c: text": a word ended by the end, a space, "(", or ":;," and a space
_CHOICE = re.compile(r"^\s*([\w.-]+)(?=$|\s|\(|[:;,](?:\s|$))")


@dataclass
class Composed:
    """A composed config and which option each config group got (`persona: pirate`, `provider@judge: hf`)."""

    cfg: DictConfig
    choices: dict[str, Optional[str]]
    overrides: list[str] = field(default_factory=list)

    def node(self, key: str) -> Any:
        return OmegaConf.select(self.cfg, key)


@dataclass
class FieldSpec:
    """One config key as a form field: its composed default, type, help text and allowed choices."""

    key: str  # full dotted key, e.g. "stage.lr"
    value: Any  # the composed default (resolved where it can be)
    kind: str  # bool | int | float | str | list | dict
    optional: bool = False  # null allowed (an empty text box means null)
    required: bool = False  # `???` in the YAML: the user must give it
    help: str = ""
    choices: list[str] = field(default_factory=list)
    interpolation: Optional[str] = None  # e.g. "${data.max_length}": the default follows another key

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    @property
    def label(self) -> str:
        """The key inside its node, readable: `stage.filters.too_long` -> `filters › too long`."""
        return self.key.split(".", 1)[-1].replace(".", " › ").replace("_", " ")


def _import_charlab() -> None:
    """Wire the process (`.env`, resolvers, stages, schemas) before composing: `charlab.app.setup()`."""
    from charlab.app import setup

    setup()


def group_dir(group: str) -> str:
    """`provider@teacher` -> `provider` (the folder of a group placed at another package)."""
    return group.split("@", 1)[0]


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in `configs/<group>/`."""
    folder = configs_dir() / group_dir(group)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


EVAL_STAGES = ("classifier", "coherence", "revealed", "elo")  # the Evaluation page's stages; the rest: Training


def stage_names() -> list[str]:
    """Every stage that has a YAML (`configs/stage/<name>.yaml`)."""
    return group_options("stage")


def _config_signature() -> tuple[int, int]:
    """Changes when any YAML under `configs/` is added, removed or edited."""
    files = list(configs_dir().rglob("*.yaml"))
    return len(files), max((f.stat().st_mtime_ns for f in files), default=0)


def compose(overrides: Optional[list[str]] = None) -> Composed:
    """The config `python -m charlab.train <overrides>` would run with; a bad override is a one-line error.

    Results are cached per override list until a YAML file changes; `${oc.env:...}` values still resolve when
    read, so the cache never hides a changed environment.
    """
    return _compose_cached(tuple(overrides or ()), _config_signature())


@functools.lru_cache(maxsize=64)
def _compose_cached(overrides_key: tuple[str, ...], signature: tuple[int, int]) -> Composed:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _import_charlab()
    overrides = list(overrides_key)
    with _COMPOSE_LOCK:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(configs_dir()), version_base="1.3"):
                cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
        except Exception as err:  # Hydra raises several unrelated types; the UI needs one line
            raise ConfigError(f"config does not compose: {_first_line(err)}") from None
    choices = {
        k: v
        for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
        if not k.startswith(("hydra/", "schemas@")) and k not in _INTERNAL_GROUPS
    }
    return Composed(cfg, choices, overrides)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " ".join(text.splitlines()[:2])[:400]


def config_groups(composed: Composed) -> list[str]:
    """The user-facing config groups of the composed config (persona, model, lora, provider@teacher, ...)."""
    return list(composed.choices)


def yaml_of(group: str, option: Optional[str]) -> Optional[Path]:
    """The YAML file of one option of a group."""
    if option is None:
        return None
    path = configs_dir() / group_dir(group) / f"{option}.yaml"
    return path if path.is_file() else None


def yaml_comments(path: Optional[Path]) -> dict[str, str]:
    """Trailing comments of a YAML file's keys by dotted path (`batch_size`, `filters.empty`)."""
    if path is None:
        return {}
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings the current line is inside
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.lstrip(" ")
        match = _KEY_LINE.match(stripped)
        if not match or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [match.group("key")])
        if match.group("comment"):
            comments[dotted] = match.group("comment").strip()
        if not match.group("value").strip():  # a mapping opens: its keys come indented below
            stack.append((indent, match.group("key")))
    return comments


def header_comment(path: Optional[Path]) -> str:
    """The leading comment block of a YAML file (what it is and the command that runs it)."""
    if path is None:
        return ""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(line for line in lines if not line.startswith("@package"))


def _choices_from(comment: str) -> list[str]:
    """`a | b (note) | c: more words` at the start of a comment -> [a, b, c]; anything else -> []."""
    parts = comment.split("|")
    if len(parts) < 2:
        return []
    words = []
    for i, part in enumerate(parts):
        match = _CHOICE.match(part)
        if not match:
            return []  # e.g. "cuda:N": a placeholder, so the comment does not list a closed set
        rest = part[match.end() :].strip()
        if i < len(parts) - 1 and rest and not (rest.startswith("(") and rest.endswith(")")):
            return []
        words.append(match.group(1))
    return list(dict.fromkeys(words))


def _schema_hints(node: DictConfig) -> dict[str, Any]:
    schema = OmegaConf.get_type(node)
    if schema is None or not is_dataclass(schema):
        return {}
    try:
        return typing.get_type_hints(schema)
    except Exception:  # a hint that cannot be evaluated: fall back to the values' types
        return {f.name: f.type for f in fields(schema)}


def _kind_of(hint: Any, value: Any) -> tuple[str, bool]:
    """(kind, optional) from a schema type hint, else from the value."""
    optional = False
    if hint is not None:
        args = typing.get_args(hint)
        if typing.get_origin(hint) is typing.Union and type(None) in args:
            optional = True
            hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint) or hint
        for kind, types in (("bool", (bool,)), ("int", (int,)), ("float", (float,)), ("str", (str,))):
            if origin in types:
                return kind, optional
        if origin in (list, tuple):
            return "list", optional
        if origin is dict:
            return "dict", optional
    if isinstance(value, bool):
        return "bool", optional
    if isinstance(value, int):
        return "int", optional
    if isinstance(value, float):
        return "float", optional
    if isinstance(value, (list, ListConfig)):
        return "list", optional
    if isinstance(value, (dict, DictConfig)):
        return "dict", optional
    return "str", optional or value is None


def field_specs(composed: Composed, node_key: str, skip: tuple[str, ...] = ("name",)) -> list[FieldSpec]:
    """Form fields for every key of one config node (`stage`, `lora`, `teacher`, ...), defaults from YAML.

    Nested mappings (e.g. `stage.filters`) become dotted fields (`stage.filters.empty`).
    """
    node = composed.node(node_key)
    if not isinstance(node, DictConfig):
        return []
    group = next((g for g in composed.choices if g == node_key or g.endswith(f"@{node_key}")), node_key)
    comments = yaml_comments(yaml_of(group, composed.choices.get(group)))
    return _node_fields(node, node_key, "", comments, skip)


def _node_fields(
    node: DictConfig, node_key: str, prefix: str, comments: dict[str, str], skip: tuple[str, ...]
) -> list[FieldSpec]:
    hints = _schema_hints(node)
    specs = []
    for key in node.keys():
        key = str(key)
        if key in skip and not prefix:
            continue
        required = OmegaConf.is_missing(node, key)
        raw = None if required else OmegaConf.to_container(node, resolve=False).get(key)
        interpolation = raw if isinstance(raw, str) and "${" in raw else None
        value: Any = None
        if not required:
            try:
                value = node[key]
            except Exception:  # e.g. `${hydra:...}`, which only resolves inside a run
                value = raw
        # a nested mapping of plain keys becomes dotted fields; keys with dots (the pipeline's wiring) cannot
        if isinstance(value, DictConfig) and len(value) and not any("." in str(k) for k in value.keys()):
            specs += _node_fields(value, f"{node_key}.{key}", f"{prefix}{key}.", comments, skip)
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        kind, optional = _kind_of(hints.get(key), value)
        comment = comments.get(prefix + key, "")
        choices = _choices_from(comment) if kind in ("str", "list") else []
        if choices and kind == "str" and value not in choices and not required:
            choices = []  # the comment names placeholders (cuda:N), not a closed set
        specs.append(FieldSpec(f"{node_key}.{key}", value, kind, optional, required, comment, choices, interpolation))
    return specs


# ---------------------------------------------------------------------------------------------- overrides


def format_value(value: Any) -> str:
    """A Python value as a Hydra override value (strings quoted when the grammar needs it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _SAFE_STRING.match(text) and text.lower() not in _KEYWORDS and not _looks_numeric(text):
        return text
    # Hydra's quoted strings: escape the quote and the backslashes right before it (or at the end); `${` would
    # start an interpolation inside quotes too
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped).replace("${", "\\${")
    return f"'{escaped}'"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def override(key: str, value: Any) -> str:
    """`key=value` in Hydra's override grammar."""
    return f"{key}={format_value(value)}"


def same_value(a: Any, b: Any) -> bool:
    """Whether a form value equals a composed default (1 == 1.0, lists by items)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def changed_overrides(specs: list[FieldSpec], values: dict[str, Any]) -> list[str]:
    """Overrides for the fields whose form value differs from the composed default (required ones always)."""
    out = []
    for spec in specs:
        if spec.key not in values:
            continue
        value = values[spec.key]
        if spec.required or not same_value(value, spec.value):
            out.append(override(spec.key, value))
    return out


def group_overrides(defaults: dict[str, Optional[str]], selected: dict[str, Optional[str]]) -> list[str]:
    """`group=option` for every group whose option differs from the default composition."""
    return [f"{group}={option}" for group, option in selected.items() if defaults.get(group) != option]


def persona_overrides(name: str) -> list[str]:
    """A persona by name: its own YAML if it has one, else `persona=custom persona.name=<name>`."""
    if name in group_options("persona") and name != "custom":
        return [f"persona={name}"]
    return ["persona=custom", f"persona.name={format_value(name)}"]


def train_argv(overrides: list[str]) -> list[str]:
    """The argv of the run: the same entry point the CLI uses."""
    return [sys.executable, "-m", "charlab.train", *overrides]


def shell_quote(arg: str) -> str:
    """`arg` for a POSIX shell, readably: `"stage.x='a b'"` rather than shlex's `'stage.x='"'"'a b'"'"''`."""
    quoted = shlex.quote(arg)
    if quoted != arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return quoted


def command_line(overrides: list[str]) -> str:
    """The command to paste in a shell (from the project root) that runs exactly these overrides."""
    return " ".join(shell_quote(a) for a in ["python", "-m", "charlab.train", *overrides])


def working_dir() -> Path:
    """Where runs are launched from: the project root, as the README's commands assume."""
    return project_root()


def paths(composed: Optional[Composed] = None) -> dict[str, Path]:
    """The resolved `paths` of the config: `output_root` (runs), `constitutions`, `cache_dir`."""
    composed = composed or compose()
    node = composed.cfg.paths
    return {key: Path(str(node[key])).expanduser() for key in ("output_root", "constitutions", "cache_dir")}
