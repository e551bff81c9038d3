"""charlab Studio: a Streamlit UI over the same configs, runs and library calls as the CLI.

    charlab-studio                                                    # http://127.0.0.1:8501
    streamlit run charlab/studio/app.py --server.address 127.0.0.1

Plain modules hold the logic (`configs`: compose + overrides + command; `runs`: run directories; `launcher`:
subprocesses; `editor`: safe constitution files; `services`: samplers for previews and chats); `ui`, `forms`, `live`
and `views/` (the pages) only draw.
"""
