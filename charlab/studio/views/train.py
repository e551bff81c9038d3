"""Training page: every setting of a training stage (DPO, SFT, ...) and its LoRA, the exact command, launch,
live progress and stop."""

from __future__ import annotations

import streamlit as st

from charlab.studio import configs, forms, live, ui

ORDER = ("dpo", "sft", "distill", "introspect", "export", "pipeline")

ui.header(
    "Training",
    "Pick a stage and change what you need: every value starts at its default in configs/ (the paper's recipe). "
    "The Studio launches exactly the command shown, the one you could paste in a shell.",
)
stages = [s for s in configs.stage_names() if s not in configs.EVAL_STAGES]
stages.sort(key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s))
overrides = forms.stage_form(stages, key="train", training=True)
st.divider()
if overrides is not None:
    live.launch_button(overrides, key="train")
st.subheader("Launched runs")
live.launches_panel("train", stages=tuple(stages))
