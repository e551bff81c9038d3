"""Constitution page: pick, create, edit, validate, draft with an LLM, compare drafts, save."""

from __future__ import annotations

import json

import streamlit as st

from charlab.drafting import format_constitution
from charlab.errors import CharlabError
from charlab.studio import configs, editor, services, ui

NEW = "+ new persona"
EDITOR = "(the editor)"

ui.header(
    "Constitution",
    "A constitution is the persona: a system prompt and first-person traits, each with questions that reveal it. "
    "Edit one here (JSON), or let an LLM draft one from a sentence.",
)
folder = ui.paths()["constitutions"]
st.caption(f"Folder: `{folder}`")
state = st.session_state
state.setdefault("drafts", [])
if "pending_select" in state:  # just saved under a new name: open that file
    state["persona_choice"] = state.pop("pending_select")
    for key in ("text::new", "new_name"):
        state.pop(key, None)
if "pending_draft" in state:  # a draft chosen for the editor on the previous run (widgets cannot change mid-run)
    name, value = state.pop("pending_draft")
    state.update({"persona_choice": NEW, "new_name": name, "text::new": value})

names = editor.persona_names(folder)
if state.get("persona_choice") not in [NEW, *names]:
    state["persona_choice"] = names[0] if names else NEW
choice = st.selectbox("Persona", [NEW, *names], key="persona_choice")
if choice == NEW:
    target = st.text_input("Name of the new persona", key="new_name", placeholder="lowercase letters, digits, _ and -")
    target = target.strip()
    text_key = "text::new"
    state.setdefault(text_key, editor.template(target if editor.valid_name(target) else "my_persona"))
else:
    target = choice
    text_key = f"text::{choice}"
    if text_key not in state:
        with ui.shown_errors():
            state[text_key] = editor.load_text(folder, choice)
state.setdefault(text_key, "")

edit_tab, draft_tab, compare_tab = st.tabs(
    [":material/edit: Edit", ":material/auto_awesome: Draft with an LLM", ":material/compare: Compare drafts"]
)

with edit_tab:
    left, right = st.columns([3, 2])
    with left:
        text = st.text_area("Constitution (JSON)", key=text_key, height=460)
        if choice == NEW:
            save_as = target
        else:
            save_as = st.text_input("Save as", value=target, key=f"save_as::{choice}", help="file name: [a-z0-9_-]+")
        replace = st.checkbox("Replace the existing file", key=f"replace::{choice}", value=False)
        b1, b2, _ = st.columns([1, 1, 3])
        save = b2.button(":material/save: Save", type="primary", key="save")
        b1.button(":material/check: Validate", key="validate")  # every rerun validates; the button just triggers one
    with right:
        try:
            persona = editor.parse_text(text, save_as.strip() or None)
        except CharlabError as err:
            persona = None
            st.error(f"Not valid yet: {err}", icon=":material/error:")
        if persona is not None:
            st.success(
                f"Valid: {len(persona.traits)} traits, {sum(len(t.questions) for t in persona.traits)} questions"
            )
            with st.expander("The teacher's system prompt (what distillation uses)", expanded=False):
                st.text(persona.render_system_prompt("teacher"))
            with st.expander("Readable view", expanded=True):
                ui.small_markdown(format_constitution(persona))
    if save:
        try:
            path = editor.save_text(text, save_as.strip(), folder, overwrite=replace)
        except CharlabError as err:
            st.error(f"Not saved: {err}", icon=":material/error:")
        else:
            state["flash"] = f"Saved {path}. Runs use it with `{' '.join(configs.persona_overrides(path.stem))}`."
            if path.stem != choice:
                state["pending_select"] = path.stem
                st.rerun()
    if "flash" in state:
        st.success(state.pop("flash"), icon=":material/check_circle:")

with draft_tab:
    base = ui.compose(["stage=draft_constitution"])
    if base is not None:
        role = str(base.cfg.stage.role)
        st.caption(
            f"Drafting uses the `{role}` provider and the settings of `configs/stage/draft_constitution.yaml`; "
            "the draft is validated and sent back to the model with the error until it is valid."
        )
        d1, d2 = st.columns([3, 1])
        description = d1.text_input(
            "Describe the persona in a sentence",
            key="draft_description",
            placeholder="a sarcastic 19th-century pirate captain who teaches Python",
        )
        draft_name = d2.text_input("Name (optional)", key="draft_name", placeholder="chosen by the model")
        provider = ui.provider_overrides(base, role, key="draft", label="provider", horizontal=True)
        overrides = ["stage=draft_constitution", *provider]
        composed = ui.compose(overrides)
        if composed is not None:
            warning = services.missing_key(composed.cfg, role)
            if warning:
                st.warning(warning, icon=":material/key:")
            if st.button(
                ":material/auto_awesome: Draft",
                type="primary",
                key="draft_go",
                disabled=not description.strip() or bool(warning),
            ):
                name = draft_name.strip() or None
                with st.spinner("Drafting…"), ui.shown_errors("Drafting failed: "):
                    draft = services.draft(composed.cfg, role, description, name, ui.cached_sampler)
                    state["drafts"].append(
                        {
                            "label": f"draft {len(state['drafts']) + 1}: {draft.constitution.name}",
                            "json": draft.constitution.to_json(),
                            "tries": len(draft.attempts),
                            "model": draft.model_name,
                        }
                    )
                    st.success(f"Drafted in {len(draft.attempts)} tries. Compare it, or put it in the editor.")
    for i, item in enumerate(state["drafts"]):
        with st.expander(f"{item['label']} · {item['tries']} tries · {item['model']}"):
            st.code(item["json"], language="json")
            if st.button("Use in the editor", key=f"use_draft_{i}"):
                state["pending_draft"] = (json.loads(item["json"])["name"], item["json"])
                st.rerun()

with compare_tab:
    options = {EDITOR: text} | {d["label"]: d["json"] for d in state["drafts"]}
    if len(options) < 2:
        st.info(
            "Draft at least one constitution to compare it with the editor's, side by side.", icon=":material/compare:"
        )
    else:
        columns = st.columns(2)
        for side, column in zip(("A", "B"), columns):
            with column:
                label = st.selectbox(
                    side, list(options), index=0 if side == "A" else len(options) - 1, key=f"cmp{side}"
                )
                try:
                    ui.small_markdown(format_constitution(editor.parse_text(options[label])))
                except CharlabError as err:
                    st.error(str(err))
                if label != EDITOR and st.button(f"Use {side} in the editor", key=f"use{side}"):
                    state["pending_draft"] = (json.loads(options[label])["name"], options[label])
                    st.rerun()
