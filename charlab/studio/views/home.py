"""Home page: the recipe in five steps, where things are, and the latest runs."""

from __future__ import annotations

import streamlit as st

from charlab.studio import configs, editor, ui

ui.header(
    "charlab Studio",
    "Give an open-weight LLM a distinct, reliable persona: the Open Character Training recipe, without writing a "
    "config. Every run the Studio starts is the same `python -m charlab.train ...` command a researcher would type.",
)
steps = [
    (":material/history_edu:", "Constitution", "Write or draft the persona: a system prompt and first-person traits."),
    (":material/preview:", "Data preview", "See a teacher with the constitution and a student without it answer."),
    (":material/model_training:", "Training", "Distill pairs, train DPO (r=32), introspect, SFT (r=256), export."),
    (":material/monitoring:", "Evaluation", "Persona classifier, revealed preferences and Elo, with plots."),
    (":material/forum:", "Chat playground", "Base, base + system prompt, and your adapter, side by side."),
]
cols = st.columns(len(steps))
for col, (icon, title, text) in zip(cols, steps):
    with col.container(border=True, height="stretch"):
        st.markdown(f"**{icon} {title}**")
        st.caption(text)

paths = configs.paths(configs.compose([]))
runs = ui.all_runs()
left, right = st.columns(2)
left.metric("Personas", len(editor.persona_names(paths["constitutions"])))
right.metric("Runs", len(runs))
st.caption(f"Constitutions: `{paths['constitutions']}` · runs: `{paths['output_root']}`")
if not runs:
    ui.empty_runs_message(paths["output_root"])
for run in runs[:5]:
    st.markdown(f"- {ui.run_label(run, paths['output_root'])}")
