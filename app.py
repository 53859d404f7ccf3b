"""busi dashboard: ``streamlit run app.py``. Routes to the pages, each of which draws the shared
sidebar itself (elements drawn here, outside the pages, are not kept across reruns by AppTest)."""

import streamlit as st

st.set_page_config(page_title="busi: breast-ultrasound classifier", page_icon=":material/biotech:", layout="wide")

pages = [
    st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("pages/playground.py", title="Preprocessing", icon=":material/tune:"),
    st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/analytics:"),
    st.Page("pages/prediction.py", title="Prediction", icon=":material/stethoscope:"),
]
st.navigation(pages).run()
