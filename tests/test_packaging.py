"""`pip install` of charlab, not a checkout: the wheel carries the config tree and the bundled constitutions, and its
CLI runs a stage from an empty directory (what `pip install git+<url>` gives a user).

The wheel is built from a copy of this working tree (`pip wheel --no-deps --no-build-isolation`) and installed into a
fresh venv; the venv borrows this environment's dependencies (torch, Hydra, ...) through a `.pth` line instead of
downloading them, and never this checkout's charlab (no `PYTHONPATH`; the editable install's finder is not loaded).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from charlab.settings import PACKAGE_DIR

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = PACKAGE_DIR.parent


def copy_tree(dest: Path) -> Path:
    """The working tree's tracked and not-ignored files (links kept as links) copied to `dest`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source, target = ROOT / name, dest / name
        if not source.is_symlink() and not source.is_file():  # deleted in the working tree
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = copy_tree(tmp / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
         str(src)],
        check=True, capture_output=True, env=clean_env(),
    )  # fmt: skip
    (found,) = (tmp / "dist").glob("charlab-*.whl")
    return found


def test_the_wheel_carries_configs_and_constitutions(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"charlab/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)[:5]
    assert "charlab/configs/train.yaml" in names
    assert {"charlab/constitutions/pirate.json", "charlab/assets/traits.txt", "charlab/__main__.py"} <= names


def test_the_installed_cli_runs_a_stage_from_an_empty_directory(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, env=clean_env(),
    ).stdout.strip()  # fmt: skip
    Path(site, "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, env=clean_env(),
    )  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env()
    env.pop("CHARLAB_OUTPUT_DIR", None)  # no output dir from the environment: outputs/ under the cwd
    where = subprocess.run(
        [str(python), "-c", "import charlab, charlab.settings as s; print(charlab.__file__); print(s.configs_dir())"],
        cwd=work, capture_output=True, text=True, check=True, env=env,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(env_dir) for p in where), where
    commands = (
        [str(python), "-m", "charlab.train"],
        [str(python), "-m", "charlab"],
        [str(env_dir / "bin" / "charlab-train")],
    )
    for command in commands:
        result = subprocess.run(
            [*command, "stage=show", "logger=none", "model=tiny", "persona=sarcasm"],
            cwd=work, capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "show finished" in result.stdout
        (run_dir,) = (work / "outputs" / "sarcasm" / "show").iterdir()
        assert (run_dir / "meta.json").is_file() and (run_dir / "rendered_prompt.txt").is_file()
        shutil.rmtree(work / "outputs")
