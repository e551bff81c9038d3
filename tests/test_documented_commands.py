"""Every `python -m charlab.train ...` command the README and `scripts/*.sh` show composes.

The commands are read out of the files (README code blocks and inline code; shell scripts with their line
continuations), placeholders such as `<run>` or `<dpo run>/adapter` become dummy paths, shell variables take the
values below, a sweep (`-m ... lora.rank=8,32`) its first value, and each command is composed with Hydra's compose
API and fully resolved, as `python -m charlab.train ... --cfg job --resolve` would. A documented command that no
longer composes (an unquoted `=` inside a list, a key not in the schema, a renamed group option) fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from charlab.runner import resolve_config
from charlab.settings import project_root
from charlab.train import check_command_line
from tests.conftest import compose_config

ROOT = project_root()
ENTRY = re.compile(r"-m charlab\.train\b")
PLACEHOLDER = re.compile(r"<([^<>\n]+)>")
VARIABLE = re.compile(r"\$\{?(\w+)\}?")
# shell variables a script sets by command substitution or from the environment (the plain `NAME=value`
# assignments of a script are read from the script itself, the last one winning: its --cpu values)
SHELL_VALUES = {"PROVIDER": "hf", "GPUS": "2", "RUN": "/tmp/doc/run", "PY": "python"}
SHELL_STOP = {"&&", "||", "|", ";", ">", "2>&1", "&"}


def _logical_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def readme_snippets(text: str) -> list[str]:
    """Lines of fenced code blocks, and inline code spans, that run the entry point."""
    found, fenced = [], False
    for line in _logical_lines(text):  # a command continued with a backslash is one line
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            found.append(line)
        else:
            found += re.findall(r"`([^`]+)`", line)
    return [snippet for snippet in found if ENTRY.search(snippet)]


def script_snippets(text: str) -> list[str]:
    lines = [line for line in _logical_lines(text) if not line.lstrip().startswith("#")]
    return [line for line in lines if ENTRY.search(line)]


def shell_assignments(text: str) -> dict[str, str]:
    """`NAME=value` assignments of a script (lines made only of them), the last one of each name winning."""
    values: dict[str, str] = {}
    for line in _logical_lines(text):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        pairs = [t.split("=", 1) for t in tokens]
        if tokens and all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=[^$`]*", t) for t in tokens):
            values.update({k: v for k, v in pairs})
    return values


def to_overrides(snippet: str, variables: dict[str, str] | None = None) -> tuple[list[str], bool]:
    """The Hydra overrides of one command line (flags, shell operators and comments dropped), and whether it is
    complete (a `...` says more arguments follow)."""
    tail = ENTRY.split(snippet, maxsplit=1)[1]
    tail = PLACEHOLDER.sub(lambda m: "/tmp/doc/" + re.sub(r"\W+", "_", m.group(1)).strip("_"), tail)
    known = {**SHELL_VALUES, **(variables or {})}

    def value(match: re.Match) -> str:  # an expanded value is not re-parsed by the shell: its quotes are literal
        name = match.group(1)
        assert name in known, f"shell variable ${name} in `{snippet}`: add a value to SHELL_VALUES"
        return known[name].replace("\\", "\\\\").replace('"', '\\"')

    tokens = shlex.split(VARIABLE.sub(value, tail), comments=True)
    overrides: list[str] = []
    skip = False
    for token in tokens:
        if token in SHELL_STOP or token == "...":
            return overrides, token != "..."

        if skip:
            skip = False
        elif token in ("--cfg", "-c", "--package", "-p", "--info", "-i"):
            skip = True
        elif not token.startswith("-"):
            overrides.append(token)
    return overrides, True


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """A multirun's overrides with each sweep replaced by its first value (what its first job composes)."""
    parser = OverridesParser.create()
    single = []
    for text, override in zip(overrides, parser.parse_overrides(overrides)):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            text = f"{override.get_key_element()}={first}"
        single.append(text)
    return single


def documented_commands() -> list[tuple[str, list[str], bool]]:
    """(where, overrides, complete) of every command in README.md and scripts/*.sh."""
    readme = readme_snippets((ROOT / "README.md").read_text())
    commands = [(f"README.md: {s.strip()}", *to_overrides(s)) for s in readme]
    for script in sorted((ROOT / "scripts").glob("*.sh")):
        text = script.read_text()
        variables = shell_assignments(text)
        commands += [(f"{script.name}: {s.strip()[:80]}", *to_overrides(s, variables)) for s in script_snippets(text)]
    return commands


COMMANDS = documented_commands()


@pytest.mark.unit
def test_the_commands_are_found_in_the_readme_and_the_scripts() -> None:
    sources = {name.split(":", 1)[0] for name, *_ in COMMANDS}
    assert {"README.md", "gpu_check.sh"} <= sources and len(COMMANDS) >= 15, [name for name, *_ in COMMANDS]
    line = "python -m charlab.train stage=dpo 'pipeline.steps=[a,b]' stage.pairs=<pairs.jsonl> # note"
    assert to_overrides(line) == (["stage=dpo", "pipeline.steps=[a,b]", "stage.pairs=/tmp/doc/pairs_jsonl"], True)
    quoted = to_overrides('python -m charlab.train "x={a:[$KEEP]}" ...', {"KEEP": '"s=1","t=2"'})
    assert quoted == (['x={a:["s=1","t=2"]}'], False)


@pytest.mark.integration
@pytest.mark.parametrize("where,overrides,complete", COMMANDS, ids=[name[:60] for name, *_ in COMMANDS])
def test_a_documented_command_composes_and_resolves(where: str, overrides: list[str], complete: bool,
                                                    tmp_path: Path) -> None:  # fmt: skip
    """Composed and resolved as the command's first job would be (a command shown with `...` may leave required
    values to the reader). Injected bug this catches: gpu_check.sh's `pipeline.step_overrides={dpo:[...]}` while
    the key was not in the config ("Key 'dpo' is not in struct")."""
    check_command_line(overrides)
    cfg = compose_config(first_of_sweeps(overrides), tmp_path / "outputs" / "run")
    if complete:
        assert resolve_config(cfg)["stage"]["name"], where
    else:
        assert OmegaConf.to_container(cfg.stage, resolve=True, throw_on_missing=False)["name"], where
