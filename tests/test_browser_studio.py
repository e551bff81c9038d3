"""The Studio in a real Chromium: start `streamlit run` on 127.0.0.1, click through the pages, save a
constitution, launch a tiny run and watch it finish, and keep screenshots of every page in the test's tmp dir."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_studio_logic import make_run

from charlab.constitution import load_constitution
from charlab.settings import project_root

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [
    pytest.mark.timing,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def studio_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Studio server on 127.0.0.1 over tmp constitutions and runs; yields (url, tmp_path)."""
    folder = tmp_path / "constitutions"
    folder.mkdir()
    shutil.copy(project_root() / "constitutions" / "pirate.json", folder)
    runs = tmp_path / "outputs"
    report_run = make_run(runs, "pirate", "elo", metric=0.75, metric_name="tuned_win_rate")
    (report_run / "report.md").write_text("# Elo\n\n| player | rating |\n| --- | --- |\n| tuned | 1040 |\n")
    port = free_port()
    env = {
        **os.environ,
        "CHARACTER_CONSTITUTION_PATH": str(folder),
        "CHARLAB_OUTPUT_DIR": str(runs),
        "WANDB_MODE": "offline",
    }
    command = [
        sys.executable, "-m", "streamlit", "run", str(project_root() / "charlab" / "studio" / "app.py"),
        "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    log = (tmp_path / "streamlit.log").open("wb")
    server = subprocess.Popen(command, cwd=project_root(), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"the Studio did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
        yield url, tmp_path
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def goto(page, name: str) -> None:  # noqa: ANN001 (a Playwright page)
    """Open a page from the sidebar."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name, exact=True).click()


def pick(page, label: str, option: str) -> None:  # noqa: ANN001 (a Playwright page)
    """Choose `option` in the select box labelled `label`."""
    page.get_by_test_id("stSelectbox").filter(has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_studio_in_a_real_browser(studio_url: tuple[str, Path]) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    url, tmp_path = studio_url
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(180_000)  # generous: only a failed step waits it out
        page.goto(url)
        page.get_by_text("Personas").wait_for()
        page.screenshot(path=shots / "home.png")

        # Constitution: edit the pirate, save it under a new name, see the editor's verdict
        goto(page, "Constitution")
        page.get_by_text("Valid: 10 traits").wait_for()
        data = json.loads((tmp_path / "constitutions" / "pirate.json").read_text())
        data["description"] = "Edited in a real browser."
        page.get_by_role("textbox", name="Constitution (JSON)").fill(json.dumps(data, indent=2))
        page.get_by_role("textbox", name="Save as").fill("browser_pirate")
        page.get_by_role("textbox", name="Save as").press("Enter")
        page.locator(".st-key-save button").click()
        page.get_by_text("Saved").wait_for()
        page.screenshot(path=shots / "constitution.png")
        saved = load_constitution(tmp_path / "constitutions" / "browser_pirate.json", name="browser_pirate")
        assert saved.description == "Edited in a real browser."

        # Training: the show stage on the tiny model, launched and followed to the end
        goto(page, "Training")
        page.get_by_text("LoRA (").wait_for()
        page.screenshot(path=shots / "training_dpo.png")
        pick(page, "Stage", "show")
        page.get_by_text("show template").wait_for()
        pick(page, "model", "tiny")
        page.get_by_text("stage=show model=tiny").wait_for()
        page.get_by_text("show template").click()  # off: no tokenizer needed
        page.get_by_text("stage=show model=tiny stage.show_template=false").wait_for()
        page.locator(".st-key-trainlaunch button").click()
        # the launch's own card in its finished state (never a "Stop" label: Streamlit's header has one too)
        page.locator("[class*='st-key-traincard-finished-']").wait_for(timeout=240_000)
        page.screenshot(path=shots / "training_launched.png")

        # Runs: both runs listed; Evaluation: the report
        goto(page, "Runs & checkpoints")
        page.get_by_test_id("stDataFrame").wait_for()
        page.screenshot(path=shots / "runs.png")
        goto(page, "Evaluation")
        page.get_by_text("tuned_win_rate").wait_for()
        page.screenshot(path=shots / "evaluation.png")
        for name, last in (("Data preview", "data_go"), ("Chat playground", "chat_send")):
            goto(page, name)
            page.locator(f".st-key-{last} button").wait_for()
            page.get_by_test_id("stSlider").first.wait_for()
            page.screenshot(path=shots / f"{name.split()[0].lower()}.png")
        assert not page.get_by_test_id("stException").count()
        browser.close()
    runs = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("meta.json")]
    assert sorted((r["stage"], r["status"]) for r in runs) == [("elo", "completed"), ("show", "completed")]
    assert len(list(shots.glob("*.png"))) == 8
