"""Run widgets: status of a run, metric charts, the launch button and the live panel of launched runs.

The panel refreshes itself every 2 s while a launched run is alive (a Streamlit fragment), reading the run's
`metrics.jsonl` and the console log of the launch, and offers to stop it (Ctrl-C, then harder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import streamlit as st

from charlab.errors import CharlabError
from charlab.studio import configs, launcher
from charlab.studio.runs import RunInfo, log_file, numeric_series, read_metrics, tail
from charlab.studio.ui import STATUS_ICONS, runs_root, shown_errors


def metrics_charts(directory: Path, limit: int = 6) -> None:
    """Line charts of the numeric metrics in `metrics.jsonl` (one per metric, by step)."""
    import pandas as pd

    series = numeric_series(read_metrics(directory))
    if not series:
        st.caption("No metrics logged yet.")
        return
    names = sorted(series, key=lambda n: (not n.startswith(("loss", "train/loss", "eval")), n))[:limit]
    cols = st.columns(min(3, len(names)))
    for i, name in enumerate(names):
        points = series[name]
        frame = pd.DataFrame(points, columns=["step", name]).set_index("step")
        with cols[i % len(cols)]:
            st.caption(f"{name} · last {points[-1][1]:.4g}")
            if len(points) > 1:
                st.line_chart(frame, height=180)


def run_status(run: RunInfo) -> None:
    """Status line, the error of a failed run and the tail of its log."""
    icon = STATUS_ICONS.get(run.status, "•")
    st.markdown(f"**{icon} {run.status}** · {run.persona} / {run.stage} · `{run.dir}`")
    if run.status == "failed":
        st.error(f"The run failed: {run.error or 'see the log below'}", icon=":material/cancel:")
        log = log_file(run.dir)
        if log is not None:
            st.code(tail(log, 25) or "(empty log)", language="text")


def launch_button(overrides: list[str], key: str, label: str = "Launch", disabled: bool = False) -> None:
    """The exact command, and a button that starts it as a subprocess."""
    st.markdown("**Command** (the Studio runs exactly this, from the project root):")
    st.code(configs.command_line(overrides), language="bash", wrap_lines=True)
    if st.button(label, type="primary", key=f"{key}launch", disabled=disabled):
        with shown_errors("Could not start the run: "):
            started = launcher.launch(overrides, runs_root())
            st.session_state[f"{key}last_launch"] = started.id
            st.success(f"Started (process {started.pid}). Progress appears below.")


def launches_panel(key: str, stages: Optional[tuple[str, ...]] = None, limit: int = 5) -> None:
    """Recent launches with live progress (refreshed every 2 s while one runs) and a stop button."""

    def recent() -> list[launcher.Launch]:
        launches = launcher.list_launches(runs_root())
        if stages:
            launches = [item for item in launches if any(f"stage={s}" in item.overrides for s in stages)]
        return launches[:limit]

    def live() -> None:
        shown = recent()
        for item in shown:
            _launch_card(item, runs_root(), key)
        if not shown:
            st.caption("Nothing launched from here yet.")

    running = any(launcher.poll(item) is None for item in recent())
    st.fragment(live, run_every=2.0 if running else None)()


def _launch_card(item: launcher.Launch, root: Path, key: str) -> None:
    code = launcher.poll(item)
    run = launcher.run_of(item, root)
    status = "running" if code is None else ("stopped" if item.stopped else ("finished" if code == 0 else "failed"))
    icon = {
        "running": ":material/pending:",
        "finished": ":material/check_circle:",
        "stopped": ":material/stop_circle:",
        "failed": ":material/cancel:",
    }[status]
    # the key (CSS class st-key-<key>card-<status>-<id>) lets a browser test wait for one card's state
    with st.container(border=True, key=f"{key}card-{status}-{item.id}"):
        top = st.columns([6, 1])
        top[0].markdown(f"{icon} **{status}** · `{item.command}`")
        if code is None and top[1].button("Stop", key=f"{key}stop{item.id}", icon=":material/stop:"):
            launcher.stop(item)
            st.rerun()
        if run is not None:
            st.caption(f"run directory: {run.dir}")
            metrics_charts(run.dir)
        if code not in (None, 0) and not item.stopped:
            st.error("The run failed. The end of its output:", icon=":material/cancel:")
        if code != 0 or run is None:
            # the console (progress bars, the one-line error of a failed run) as the CLI user would see it
            st.code(tail(Path(item.log), 15 if code else 6) or "(no output yet)", language="text")


def export_command(run: RunInfo, adapter: Path) -> Optional[str]:
    """`stage=export` with this adapter in the export stage's matching input (dpo_adapter for a DPO run, ...)."""
    if "export" not in configs.stage_names():
        return None
    try:
        composed = configs.compose(["stage=export"])
    except CharlabError:
        return None
    keys = [s.key for s in configs.field_specs(composed, "stage") if "adapter" in s.name]
    key = next((k for k in keys if run.stage in k.rsplit(".", 1)[-1]), keys[0] if keys else None)
    if key is None:
        return None
    overrides = ["stage=export", *configs.persona_overrides(run.persona), configs.override(key, str(adapter))]
    others = [k for k in keys if k != key]
    command = configs.command_line(overrides)
    return command + "".join(f" \\\n    {k}=/path/to/other/adapter" for k in others)
