"""Settings from the environment: the project root, the `.env` file, and OmegaConf resolvers.

`.env` (git-ignored; see `.env.example`) is read once at start (`charlab.app.setup()`), before the config is
composed, so its values reach `${oc.env:...}` defaults. Variables already set in the environment win over the
file. Nothing here runs at import.

The config tree and the bundled constitutions ship inside the package (`charlab/configs`, `charlab/constitutions`:
in a checkout, links to the top-level `configs/` and `constitutions/`), so an installed wheel has them too.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """Where runs, `.env` and `.venv-vllm` live: the checkout charlab is imported from (an editable install, or a
    worktree on `PYTHONPATH`); for an installed wheel, the directory it is run from."""
    checkout = PACKAGE_DIR.parent
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()


def configs_dir() -> Path:
    """The Hydra config tree (inside the package)."""
    return PACKAGE_DIR / "configs"


def assets_dir() -> Path:
    """Text assets shipped with the package (prompt pools, trait lists, ...)."""
    return PACKAGE_DIR / "assets"


def load_env_file(path: Optional[Path] = None) -> Optional[Path]:
    """Load `path` (default: `<project root>/.env`) into the environment without overriding set variables."""
    path = path or project_root() / ".env"
    if not path.is_file():
        return None
    from dotenv import load_dotenv

    load_dotenv(path, override=False)
    return path


def _unique_id() -> str:
    return secrets.token_hex(3)


def safe_path_part(value: object) -> str:
    """`value` made safe as one folder name (anything outside `[A-Za-z0-9_.-]` becomes `_`, no `..`)."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "_", str(value)).strip(".") or "_"
    return text.replace("..", "_")


def register_resolvers() -> None:
    """Config resolvers: `${charlab_root:}` (`project_root()`), `${charlab_package:}` (the package folder), `${uid:}`
    (a per-process unique suffix), `${safe:x}` (folder-safe)."""
    if not OmegaConf.has_resolver("charlab_root"):
        OmegaConf.register_new_resolver("charlab_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("charlab_package"):
        OmegaConf.register_new_resolver("charlab_package", lambda: str(PACKAGE_DIR))
    if not OmegaConf.has_resolver("uid"):
        # cached: every use in one composed config (and Hydra's sweep copies) sees the same value
        OmegaConf.register_new_resolver("uid", _unique_id, use_cache=True)
    if not OmegaConf.has_resolver("safe"):
        OmegaConf.register_new_resolver("safe", safe_path_part)


def env_flag(name: str, default: bool = False) -> bool:
    """A boolean environment variable (1/true/yes/on)."""
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}
