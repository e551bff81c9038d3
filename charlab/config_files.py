"""Literal values of one shipped config option, read without Hydra: for library entry points that take no composed
config (the seed API's `ClassifierConfig`, the seed CLIs) but must default to what the YAML says, not to a second copy
of the number in code.

    group_values("eval", "default")["classifier_method"]   # -> "embedding" (configs/eval/default.yaml)
"""

from __future__ import annotations

from functools import cache
from typing import Any

from omegaconf import OmegaConf

from charlab.settings import configs_dir


@cache
def group_values(group: str, option: str) -> dict[str, Any]:
    """The keys of `configs/<group>/<option>.yaml` (its `defaults` list left out), interpolations unresolved."""
    node = OmegaConf.load(configs_dir() / group / f"{option}.yaml")
    values = OmegaConf.to_container(node, resolve=False)
    assert isinstance(values, dict)
    values.pop("defaults", None)
    return values


def default_of(group: str, option: str, key: str) -> Any:
    """One literal value of `configs/<group>/<option>.yaml`; an interpolation there is an error (Hydra resolves
    those)."""
    value = group_values(group, option)[key]
    if isinstance(value, str) and "${" in value:
        raise ValueError(f"configs/{group}/{option}.yaml: {key} is an interpolation ({value}), not a literal value")
    return value
