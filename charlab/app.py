"""The composition root: `setup()` wires a charlab process once, and nothing else does it.

It reads `.env` (so its values reach `${oc.env:...}` defaults), registers the OmegaConf resolvers, loads the stage
registry (each stage module registers itself) and stores every ConfigStore schema. The CLI (`charlab.train`), the
Studio, the Python API (`charlab.api`) and the tests call it; importing a charlab module never does any of this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from charlab.config_store import register_schemas
from charlab.settings import load_env_file, register_resolvers
from charlab.stages import load_stages

_done = False


def setup(env_file: Optional[Path] = None) -> None:
    """Wire this process (idempotent: later calls do nothing). `env_file`: default `<project root>/.env`."""
    global _done
    if _done:
        return
    load_env_file(env_file)
    register_resolvers()
    register_schemas(load_stages())
    _done = True
