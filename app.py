"""TokenLearner Explorer: `streamlit run app.py`."""

import streamlit as st

from tokenlearner.hosting import provision_in_background
from tokenlearner.limits import Limits
from tokenlearner.ui import run_page

st.set_page_config(page_title="TokenLearner Explorer", page_icon=":material/grid_view:", layout="wide")
try:
    limits = Limits.current()
except ValueError as error:  # the operator's settings: say which, to whoever opens the page
    st.error(f"This instance is misconfigured: {error}")
    st.stop()
if limits.demo:  # a public visitor sees that something failed, never the server's paths and code
    st.set_option("client.showErrorDetails", "none")
    if provision_in_background():  # a host without a build step: the first server start fetches the data
        st.info("This demo is still being set up (CIFAR-10 is downloading): uploads work already.")
page = st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/attention.py", title="Attention", icon=":material/visibility:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("pages/flops.py", title="FLOPs", icon=":material/calculate:"),
        st.Page("pages/video.py", title="Video", icon=":material/movie:"),
    ]
)
run_page(page)
