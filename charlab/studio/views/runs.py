"""Runs & checkpoints page: every run directory with its persona, stage, status, metrics and resolved config;
every adapter with the commands that serve it (vLLM, transformers) and export it."""

from __future__ import annotations

import streamlit as st
import yaml

from charlab.studio import configs, live, ui
from charlab.studio.runs import (
    adapter_info,
    find_adapters,
    log_file,
    tail,
    transformers_snippet,
    vllm_command,
)

ui.header("Runs & checkpoints", "Everything `python -m charlab.train` wrote, whether launched here or from a shell.")
root = ui.runs_root()
st.caption(f"Runs folder: `{root}` (set `CHARLAB_OUTPUT_DIR` or `paths.output_root` to use another)")
runs = ui.all_runs()
if not runs:
    ui.empty_runs_message(root)
    st.stop()

f1, f2, f3 = st.columns(3)
personas = f1.multiselect("Persona", sorted({r.persona for r in runs}), key="runs_persona")
stages = f2.multiselect("Stage", sorted({r.stage for r in runs}), key="runs_stage")
statuses = f3.multiselect("Status", sorted({r.status for r in runs}), key="runs_status")
shown = [
    r
    for r in runs
    if (not personas or r.persona in personas)
    and (not stages or r.stage in stages)
    and (not statuses or r.status in statuses)
]
st.dataframe(
    [
        {
            "status": f"{ui.STATUS_ICONS.get(r.status, '•')} {r.status}",
            "persona": r.persona,
            "stage": r.stage,
            "model": r.model,
            "started": r.started_at.replace("T", " ")[:19],
            "metric": None if r.metric is None else f"{r.metric_name} = {r.metric:.4g}",
            "run directory": r.relative(root),
        }
        for r in shown
    ],
    hide_index=True,
    width="stretch",
)
run = ui.run_picker(shown, "Open a run", key="runs_open", root=root)
if run is None:
    st.stop()

overview, metrics, config, log, adapters = st.tabs(["Overview", "Metrics", "Config", "Log", "Adapters"])
with overview:
    live.run_status(run)
    ui.show_evaluation(run)
    if run.summary:
        st.markdown("**Summary**")
        st.json(run.summary, expanded=True)
    if run.artifacts:
        st.markdown("**Artifacts**")
        for name, path in run.artifacts.items():
            st.markdown(f"- {name}: `{path}`")
    if run.meta.get("command"):
        overrides = [str(a) for a in run.meta["command"][1:]]
        st.markdown("**Command that made it**")
        st.code(configs.command_line(overrides), language="bash", wrap_lines=True)
with metrics:
    live.metrics_charts(run.dir, limit=12)
with config:
    st.code(yaml.safe_dump(run.config, sort_keys=False), language="yaml")
with log:
    path = log_file(run.dir)
    st.code(tail(path, 200) if path else "(no log file)", language="text")
with adapters:
    found = find_adapters(run)
    if not found:
        st.caption("This run has no adapter folder.")
    for folder in found:
        info = adapter_info(run, folder)
        st.markdown(f"**{info.name}** · rank {info.rank or '?'} · `{info.path}`")
        st.markdown("Serve with vLLM (OpenAI-compatible API):")
        st.code(vllm_command(info), language="bash", wrap_lines=True)
        st.markdown("Load with transformers + PEFT:")
        st.code(transformers_snippet(info), language="python")
        export = live.export_command(run, info.path)
        if export:
            st.markdown("Export (combine with the other stage's adapter, optionally merge):")
            st.code(export, language="bash", wrap_lines=True)
