"""The Studio's pages: Streamlit scripts that `app.py` registers with `st.navigation` (not imported as modules)."""
