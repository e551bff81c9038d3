"""The one entry point: compose the config, make the run directory, dispatch `stage=` through the registry.

    python -m charlab.train experiment=demo
    python -m charlab.train stage=show persona=sarcasm model=smollm2-135m
    python -m charlab.train -m stage=show persona=pirate,humor lora=dpo,sft
    charlab-train stage=show --cfg job

It returns the stage's headline metric, so Hydra sweepers (Optuna) can optimise it, and always closes the
tracker, also when the stage fails (`charlab.runner.execute`). A `CharlabError` (bad input) prints one line and
exits with status 2. Only the command line lives here; `charlab/__main__.py` is the one module importing it.
"""

from __future__ import annotations

import shutil
import sys
from typing import NoReturn, Optional

import hydra
from omegaconf import DictConfig

from charlab import distributed, launch
from charlab.app import setup
from charlab.errors import CharlabError
from charlab.runner import execute
from charlab.settings import configs_dir


def check_command_line(args: list[str]) -> None:
    """Persona names on the command line, checked before Hydra turns them into a run directory.

    A name that is not allowed (`../x`, 5,000 characters) then fails with one line and nothing written, instead of
    a folder made from it or an `OSError` from the file system.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from charlab.constitution import validate_persona_name

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # Hydra reports its own parse errors
            continue
        if override.key_or_group != "persona.name" or override.is_delete():
            continue
        values = list(override.sweep_iterator()) if override.is_discrete_sweep() else [override.value()]
        for value in map(str, values):
            if "${" not in value:  # an interpolation is checked once resolved (charlab.stages._common)
                validate_persona_name(value)


def fail(err: CharlabError) -> NoReturn:
    """The one-line error every bad input gets, and exit status 2."""
    print(f"charlab: error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


@hydra.main(version_base="1.3", config_path=str(configs_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> Optional[float]:
    """Hydra entry point: run the composed config's stage."""
    services = setup()  # a no-op after main(); a joblib/submitit worker unpickles this task without running main()
    try:
        metric = execute(cfg, services)
    except CharlabError as err:
        fail(err)
    distributed.shutdown()
    return metric


def main() -> Optional[float]:
    """`python -m charlab.train` and the `charlab-train` console script (also each torchrun rank)."""
    setup()  # .env, resolvers, stages and schemas: before Hydra composes the config
    try:
        check_command_line(sys.argv[1:])
    except CharlabError as err:
        fail(err)
    private = launch.worker_overrides()  # ranks > 0 write nothing into the run directory
    sys.argv.extend(private)
    try:
        return hydra_main()
    finally:
        for override in private[:1]:
            shutil.rmtree(override.split("=", 1)[1], ignore_errors=True)


if __name__ == "__main__":
    main()
