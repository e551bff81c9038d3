"""Evaluation page: launch the classifier, coherence, revealed-preference and Elo stages, and read their reports."""

from __future__ import annotations

import streamlit as st

from charlab.studio import configs, forms, live, ui
from charlab.studio.runs import plots_of, report_of, split_report

ui.header(
    "Evaluation",
    "Three ways to measure a persona: a classifier that recognises its voice, the traits it reveals when it "
    "chooses, and head-to-head Elo against the base model; and one way to check it still answers: loops and "
    "relevance (coherence). Each number comes with its 95% CI.",
)
results_tab, launch_tab = st.tabs([":material/insights: Results", ":material/rocket_launch: Launch an evaluation"])

with launch_tab:
    stages = [s for s in configs.stage_names() if s in configs.EVAL_STAGES]
    overrides = forms.stage_form(stages, key="eval", training=False)
    if overrides is not None:
        live.launch_button(overrides, key="eval")
    st.subheader("Launched evaluations")
    live.launches_panel("eval", stages=configs.EVAL_STAGES)

with results_tab:
    root = ui.runs_root()
    runs = [r for r in ui.all_runs() if r.stage in configs.EVAL_STAGES or report_of(r.dir) is not None]
    if not runs:
        st.info(f"No evaluation results yet in `{root}`. Launch one in the next tab.", icon=":material/inbox:")
    else:
        run = ui.run_picker(runs, "Evaluation run", key="eval_run", root=root)
        if run is not None:
            live.run_status(run)
            ui.show_evaluation(run)
            headline = {run.metric_name: run.metric} if run.metric is not None else {}
            numbers = {**headline, **{k: v for k, v in run.summary.items() if isinstance(v, (int, float))}}
            if numbers:
                cols = st.columns(min(4, len(numbers)))
                for i, (name, value) in enumerate(list(numbers.items())[:8]):
                    cols[i % len(cols)].metric(name, f"{value:.4g}" if isinstance(value, float) else value)
            report = report_of(run.dir)
            plots = plots_of(run.dir)
            if report is not None:
                text, _ = split_report(report.read_text(encoding="utf-8"))
                with st.container(border=True):
                    st.markdown(text)
            for i in range(0, len(plots), 2):
                cols = st.columns(2)
                for col, plot in zip(cols, plots[i : i + 2]):
                    col.image(str(plot), caption=plot.name, width="stretch")
            for table in sorted(run.dir.glob("*.csv"))[:6]:
                with ui.shown_errors(f"{table.name}: "):
                    import pandas as pd

                    st.caption(table.name)
                    st.dataframe(pd.read_csv(table), hide_index=True)
            if report is None and not plots:
                st.caption("This run wrote no report.md or plots.")
