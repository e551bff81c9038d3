"""Shared fixtures: the offline cache, the tiny model, composed configs and stage runs.

Configs are composed with Hydra's compose API (never by calling the `@hydra.main` function, which parses
`sys.argv`), `HydraConfig` is set by hand, and every run writes under pytest's tmp dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TINKER_TELEMETRY", "0")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from charlab.app import setup  # noqa: E402
from charlab.models import default_cache_dir  # noqa: E402
from charlab.schemas import ModelConfig  # noqa: E402
from charlab.settings import configs_dir, project_root  # noqa: E402

SERVICES = setup()  # .env, resolvers, stages, schemas and the process's services (vLLM pool), as the CLI's main()
ROOT = project_root()


TIERS = ("unit", "integration")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test without a tier mark counts as `integration`, so `pytest -m unit` stays the quick part."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The shared offline-model cache (`$CHARLAB_CACHE` or ~/.cache/charlab): built models are reused."""
    path = default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_model(cache_dir: Path) -> ModelConfig:
    """The tiny random Llama (built on first use) as a `ModelConfig`."""
    from charlab.models import resolve_model_path

    model = ModelConfig(name="tiny", name_or_path=str(cache_dir / "models" / "tiny"), builder="tiny")
    resolve_model_path(model, cache_dir)
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: ModelConfig, cache_dir: Path) -> Any:
    from charlab.models import load_tokenizer

    return load_tokenizer(tiny_model, cache_dir)


@pytest.fixture(scope="session")
def tiny_chat(tiny_tokenizer: Any) -> Any:
    """The chat format module over the tiny tokenizer."""
    from charlab.chat_format import ChatFormat

    return ChatFormat(tiny_tokenizer)


def random_adapter(
    model: ModelConfig,
    cache: Path,
    folder: Path,
    rank: int = 4,
    alpha: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj"),
    seed: int = 0,
    b_scale: float = 1.0,
    **extra: Any,
) -> Path:
    """A LoRA adapter with random, non-zero A and B (a stand-in for a trained one: unlike PEFT's default init,
    where B = 0, it changes what the model says), saved as a PEFT folder. `extra`: more `LoraConfig` fields."""
    import torch
    from peft import LoraConfig, get_peft_model

    from charlab.models import load_causal_lm

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, **extra)
    peft_model = get_peft_model(load_causal_lm(model, cache, device="cpu", dtype="float32"), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(b_scale)
    peft_model.save_pretrained(str(folder))
    return folder


def compose_config(overrides: list[str], output_dir: Path, cache: Optional[Path] = None) -> DictConfig:
    """The config `python -m charlab.train <overrides>` would get, with its run directory at `output_dir`."""
    base = [f"paths.output_root={output_dir.parent}"]
    if not any(o.startswith("logger=") for o in overrides):
        base.append("logger=none")
    if cache is not None:
        base.append(f"paths.cache_dir={cache}")
    with initialize_config_dir(config_dir=str(configs_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=base + list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def compose_cfg(tmp_path: Path, cache_dir: Path) -> Callable[..., DictConfig]:
    """`compose_cfg(["stage=show", ...])` -> a composed config whose run directory is under tmp_path."""

    def _compose(overrides: list[str], name: str = "run") -> DictConfig:
        return compose_config(overrides, tmp_path / "outputs" / name, cache_dir)

    return _compose


@pytest.fixture
def run_stage(compose_cfg: Callable[..., DictConfig]) -> Callable[..., tuple[Optional[float], Path]]:
    """`run_stage(["stage=show", ...])` -> (metric, run directory), run in-process like the CLI would."""
    from charlab.runner import execute

    def _run(overrides: list[str], name: str = "run") -> tuple[Optional[float], Path]:
        cfg = compose_cfg(overrides, name=name)
        out = Path(cfg.hydra.runtime.output_dir)
        return execute(cfg, SERVICES, out), out

    return _run


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for `python -m charlab.train` subprocesses: offline W&B, outputs under tmp_path."""
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        HF_HUB_OFFLINE="1",
        CHARLAB_OUTPUT_DIR=str(tmp_path / "outputs"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(args: list[str], tmp_path: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m charlab.train <args>` in a subprocess; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "charlab.train", *args],
        cwd=ROOT,
        env=cli_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until(condition: Callable[[], bool], deadline_s: float = 600, what: str = "the condition") -> None:
    """Poll `condition` until it holds; the deadline is generous on purpose (it only ends a test that failed)."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {deadline_s} s"
        time.sleep(0.1)


def line_count(path: Path) -> int:
    """Whole lines in a file (0 when it does not exist yet)."""
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def kill_when_held(
    args: list[str], tmp_path: Path, hold: str, ready: Callable[[], bool], deadline_s: float = 900, **env: str
) -> None:
    """Run `python -m charlab.train <args>` holding at the failpoint `hold` (`charlab/failpoints.py`), wait until
    `ready()` sees the finished artifact the hold follows, then SIGKILL its process group: the run is killed in
    exactly that state, never after it finished and never by a race with a poll. The deadline only catches a run
    that never gets there (its log ends the failure message)."""
    log_path = tmp_path / f"killed-{len(list(tmp_path.glob('killed-*.log')))}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "charlab.train", *args], cwd=ROOT, env=cli_env(tmp_path, CHARLAB_HOLD=hold, **env),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + deadline_s
            while not ready():
                tail = log_path.read_text()[-3000:]
                assert proc.poll() is None, f"the run ended before its hold ({hold}): {tail}"
                assert time.monotonic() < deadline, f"no hold ({hold}) in {deadline_s} s: {tail}"
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`cli(["stage=show", ...])` -> CompletedProcess of the real entry point."""

    def _cli(args: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        return run_cli(args, tmp_path, timeout=timeout, **env)

    return _cli


def to_container(cfg: DictConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=True)
