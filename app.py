"""TokenLearner Explorer: `streamlit run app.py`."""

import streamlit as st

from tokenlearner.limits import Limits

st.set_page_config(page_title="TokenLearner Explorer", page_icon=":material/grid_view:", layout="wide")
try:
    limits = Limits.current()
except ValueError as error:  # the operator's settings: say which, to whoever opens the page
    st.error(f"This instance is misconfigured: {error}")
    st.stop()
if limits.demo:  # a public visitor sees that something failed, never the server's paths and code
    st.set_option("client.showErrorDetails", "none")
page = st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/attention.py", title="Attention", icon=":material/visibility:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("pages/flops.py", title="FLOPs", icon=":material/calculate:"),
    ]
)
page.run()
