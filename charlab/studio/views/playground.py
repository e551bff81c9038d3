"""Chat playground: one message to the base model, the base model with the persona's system prompt, and a
tuned adapter (no system prompt), side by side. A persona that survives without its prompt has been learned."""

from __future__ import annotations

import streamlit as st

from charlab.studio import configs, services, ui
from charlab.studio.forms import candidates

ROLE = "student"  # the model under training: its provider config decides how the three replies are sampled

ui.header(
    "Chat playground",
    "Ask once, compare three answers: the base model as it is, the base model told to play the persona, and "
    "your trained adapter with no system prompt at all.",
)
state = st.session_state
state.setdefault("chat_history", [])
base = ui.compose([])
if base is not None:
    paths = configs.paths(base)
    c1, c2, c3 = st.columns([1, 1, 2])
    with c1:
        persona = ui.persona_picker(paths["constitutions"], "chat")
    with c2:
        model = ui.group_picker(base, "model", key="chat")
    with c3:
        adapters = [str(p) for p in candidates("adapter", ui.all_runs())]
        adapter = st.selectbox(
            "Tuned adapter",
            [None, *adapters],
            key="chat_adapter",
            format_func=lambda a: "(none: train one first)" if a is None else a,
        )
    provider = ui.provider_overrides(base, ROLE, key="chat", label="provider", horizontal=True)
    overrides = configs.group_overrides(base.choices, {"model": model}) + provider
    if persona and persona != base.choices.get("persona"):
        overrides = configs.persona_overrides(persona) + overrides
    composed = ui.compose(overrides)
    s1, s2 = st.columns(2)
    max_new = int(s1.number_input("Max new tokens", 8, 4096, int(base.cfg[ROLE].max_new_tokens), 8, key="chat_max"))
    temperature = float(s2.slider("Temperature", 0.0, 1.5, float(base.cfg[ROLE].temperature), 0.05, key="chat_t"))
    if composed is not None and persona:
        warning = services.missing_key(composed.cfg, ROLE)
        if warning:
            st.warning(warning, icon=":material/key:")
        with st.form("chat_form", clear_on_submit=False):
            message = st.text_area("Your message", key="chat_message", height=90)
            sent = st.form_submit_button("Send to all three", type="primary", disabled=bool(warning), key="chat_send")
        if sent and message.strip():
            with st.spinner(f"Answering with {services.model_label(composed.cfg, ROLE)}…"):
                with ui.shown_errors("Chat failed: "):
                    replies = services.chat_three_ways(
                        composed.cfg, ROLE, message, adapter, ui.cached_sampler, max_new, temperature
                    )
                    state["chat_history"].insert(0, replies)
        for replies in state["chat_history"][:5]:
            with st.container(border=True):
                st.markdown(f"**You:** {replies.prompt}")
                cols = st.columns(3)
                titles = ("Base model", f"Base + {persona} system prompt", "Tuned adapter, no system prompt")
                texts = (replies.base, replies.base_with_prompt, replies.tuned)
                for col, title, text in zip(cols, titles, texts):
                    col.caption(title)
                    col.write(text if text is not None else "_(no adapter chosen)_")
        if state["chat_history"] and st.button("Clear", key="chat_clear"):
            state["chat_history"] = []
            st.rerun()
