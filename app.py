"""busi dashboard: ``streamlit run app.py``.

Routes to the pages listed in ``pages/_ui.py``. Each page draws the shared sidebar (page links
and the data source) itself: the automatic menu is off because Streamlit would otherwise
sometimes show its file-based list of ``pages/`` (helper module included) instead of ours, and
elements drawn here, outside the pages, are not kept across reruns by AppTest.
"""

import streamlit as st

from pages._ui import PAGES

st.set_page_config(page_title="busi: breast-ultrasound classifier", page_icon=":material/biotech:", layout="wide")
st.navigation([st.Page(path, title=title, icon=icon, default=path == PAGES[0][0]) for path, title, icon in PAGES],
              position="hidden").run()
