"""Settings from the environment: the project root, the `.env` file, and OmegaConf resolvers.

`.env` (git-ignored; see `.env.example`) is read once at start, before the config is composed, so its
values reach `${oc.env:...}` defaults. Variables already set in the environment win over the file.
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
    """The checkout holding `configs/` (charlab is installed editable); the package's parent otherwise."""
    return PACKAGE_DIR.parent


def configs_dir() -> Path:
    """The Hydra config tree."""
    return project_root() / "configs"


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
    """Config resolvers: `${charlab_root:}`, `${uid:}` (a per-process unique suffix), `${safe:x}` (folder-safe)."""
    if not OmegaConf.has_resolver("charlab_root"):
        OmegaConf.register_new_resolver("charlab_root", lambda: str(project_root()))
    if not OmegaConf.has_resolver("uid"):
        # cached: every use in one composed config (and Hydra's sweep copies) sees the same value
        OmegaConf.register_new_resolver("uid", _unique_id, use_cache=True)
    if not OmegaConf.has_resolver("safe"):
        OmegaConf.register_new_resolver("safe", safe_path_part)


def env_flag(name: str, default: bool = False) -> bool:
    """A boolean environment variable (1/true/yes/on)."""
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}
