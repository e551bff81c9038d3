"""charlab Studio: the no-code UI over the same configs and run directories as the CLI.

    charlab-studio                                   # binds 127.0.0.1:8501
    streamlit run charlab/studio/app.py --server.address 127.0.0.1

Every page reads `configs/` through Hydra's compose API and the run directories under `paths.output_root`
(`CHARLAB_OUTPUT_DIR` overrides it); every run it launches is `python -m charlab.train <overrides>`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import streamlit as st

from charlab.app import setup
from charlab.studio import ui

setup()  # .env, resolvers, stages and schemas (pages run without this script in tests: configs.compose calls it too)
HERE = Path(__file__).resolve().parent
PAGES = [
    ("views/home.py", "Home", ":material/home:"),
    ("views/constitution.py", "Constitution", ":material/history_edu:"),
    ("views/data.py", "Data preview", ":material/preview:"),
    ("views/train.py", "Training", ":material/model_training:"),
    ("views/evaluate.py", "Evaluation", ":material/monitoring:"),
    ("views/runs.py", "Runs & checkpoints", ":material/folder_open:"),
    ("views/playground.py", "Chat playground", ":material/forum:"),
]

st.set_page_config(page_title="charlab Studio", page_icon=":material/theater_comedy:", layout="wide")
with st.sidebar:
    st.markdown("### :material/theater_comedy: charlab Studio")
    st.caption("Character training for open-weight LLMs, without writing a config.")
pages = [
    st.Page(str(HERE / path), title=title, icon=icon, url_path=Path(path).stem, default=i == 0)
    for i, (path, title, icon) in enumerate(PAGES)
]
navigation = st.navigation(pages)
try:
    navigation.run()
except Exception as err:  # a bug or an unforeseen input: one line for the user, the traceback for the log
    if os.environ.get("CHARLAB_STUDIO_DEBUG"):
        raise
    logging.getLogger("charlab.studio").exception("page %s failed", navigation.title)
    st.error(f"This page hit a problem: {ui.error_text(err)}", icon=":material/error:")
