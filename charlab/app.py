"""The composition root: `setup()` wires a charlab process once, and nothing else does it.

It reads `.env` (so its values reach `${oc.env:...}` defaults), registers the OmegaConf resolvers, loads the stage
registry (each stage module registers itself), stores every ConfigStore schema and makes the process's shared
`Services` (the vLLM server pool), which it returns: callers hand it down (`runner.execute(cfg, services)`). The
CLI (`charlab.train`), the Studio, the Python API (`charlab.api`) and the tests call it; importing a charlab module
never does any of this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from charlab.config_store import register_schemas
from charlab.services import Services
from charlab.settings import load_env_file, register_resolvers
from charlab.stages import load_stages

_services: Optional[Services] = None  # the process's services: made by the first setup(), returned by every one


def setup(env_file: Optional[Path] = None) -> Services:
    """Wire this process and return its `Services` (idempotent: later calls return the same ones and do nothing
    else). `env_file`: default `<project root>/.env`."""
    global _services
    if _services is not None:
        return _services
    load_env_file(env_file)
    register_resolvers()
    register_schemas(load_stages())
    _services = Services()
    return _services
