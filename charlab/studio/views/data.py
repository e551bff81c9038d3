"""Data preview page: a few prompts answered by the teacher (with the constitution) and the student (without),
side by side, and a browser for the `pairs.jsonl` / `introspection.jsonl` files of earlier runs."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from charlab.data.jsonl import read_jsonl
from charlab.errors import CharlabError
from charlab.studio import configs, services, ui
from charlab.studio.runs import data_files

ui.header(
    "Data preview",
    "Distillation pairs a teacher that has the constitution in its system prompt with a student that does not. "
    "See both answer a few prompts before you generate hundreds.",
)
state = st.session_state
preview_tab, browse_tab = st.tabs([":material/science: Preview replies", ":material/folder_open: Browse data files"])

with preview_tab:
    base = ui.compose([])
    if base is not None:
        paths = configs.paths(base)
        c1, c2 = st.columns(2)
        with c1:
            persona = ui.persona_picker(paths["constitutions"], "data")
        with c2:
            model = ui.group_picker(base, "model", key="data")
        overrides = configs.group_overrides(base.choices, {"model": model})
        overrides += ui.provider_overrides(base, "teacher", key="data", horizontal=True)
        overrides += ui.provider_overrides(base, "student", key="data", horizontal=True)
        if persona and persona != base.choices.get("persona"):
            overrides = configs.persona_overrides(persona) + overrides
        composed = ui.compose(overrides)
        s1, s2, s3 = st.columns(3)
        n = s1.slider("Prompts", 2, 10, 4, key="data_n")
        seed = int(s2.number_input("Seed", value=int(base.cfg.seed), step=1, key="data_seed"))
        max_new = int(
            s3.number_input("Max new tokens", 8, 4096, int(base.cfg.teacher.max_new_tokens), step=8, key="data_max")
        )
        if composed is not None and persona:
            cfg = composed.cfg
            if st.button(":material/casino: Draw prompts", key="data_draw"):
                with ui.shown_errors("Could not draw prompts: "):
                    from charlab.stages._common import load_persona

                    state["data_prompts"] = "\n".join(services.sample_prompts(cfg, load_persona(cfg), n, seed))
            prompts_text = st.text_area("Prompts, one per line (edit freely)", key="data_prompts", height=160)
            prompts = [p.strip() for p in prompts_text.splitlines() if p.strip()]
            warnings = [w for w in (services.missing_key(cfg, "teacher"), services.missing_key(cfg, "student")) if w]
            for warning in warnings:
                st.warning(warning, icon=":material/key:")
            go = st.button(
                ":material/play_arrow: Generate replies",
                type="primary",
                key="data_go",
                disabled=not prompts or bool(warnings),
            )
            if go:
                with st.spinner(f"Teacher ({services.model_label(cfg, 'teacher')}) and student answering…"):
                    with ui.shown_errors("Generation failed: "):
                        state["data_pairs"] = services.teacher_vs_student(
                            cfg, prompts[:10], ui.cached_sampler, max_new_tokens=max_new
                        )
            for pair in state.get("data_pairs", []):
                with st.container(border=True):
                    st.markdown(f"**User:** {pair.prompt}")
                    left, right = st.columns(2)
                    left.caption("Teacher, with the constitution (chosen)")
                    left.write(pair.teacher or "_(empty)_")
                    right.caption("Student, as itself (rejected)")
                    right.write(pair.student or "_(empty)_")

with browse_tab:
    found = data_files(ui.all_runs())
    if not found:
        ui.empty_runs_message(ui.runs_root())
    path_text = ui.path_choice("Data file", found, key="browse", help="pairs.jsonl or introspection.jsonl")
    if path_text:
        try:
            rows = read_jsonl(Path(path_text))
        except CharlabError as err:
            st.error(str(err), icon=":material/error:")
            rows = []
        if rows:
            per_page = 5
            pages = (len(rows) + per_page - 1) // per_page
            page = int(st.number_input(f"Page (of {pages}; {len(rows)} rows)", 1, pages, 1, key="browse_page"))
            for row in rows[(page - 1) * per_page : page * per_page]:
                with st.container(border=True):
                    st.markdown(f"**User:** {row.get('prompt', '')}")
                    if "chosen" in row:
                        left, right = st.columns(2)
                        left.caption(f"chosen · {row.get('teacher_model', '')}")
                        left.write(row.get("chosen", ""))
                        right.caption(f"rejected · {row.get('student_model', '')}")
                        right.write(row.get("rejected", ""))
                    elif row.get("messages"):
                        for message in row["messages"]:
                            with st.chat_message(message.get("role", "user")):
                                st.write(message.get("content", ""))
                    else:
                        st.write(row.get("reflection") or row.get("answer") or row)
