"""Streamlit controls shared by the app's pages. Only the pages import this module."""

from __future__ import annotations

import streamlit as st

from tokenlearner.config import ModelConfig
from tokenlearner.presets import PRESETS

TOKENLEARNER_LABELS = {"none": "none", "v1": "v1.0", "v11": "v1.1"}
MAX_APP_DEPTH = 12
MAX_APP_TOKENS = 16


def preset_picker(key: str, default: str = "keras-io-4-tokens") -> ModelConfig:
    """A preset selector; choosing one resets the `model_controls` of the same `key` to it."""

    def forget_controls() -> None:
        for name in [name for name in st.session_state if name.startswith(f"{key}_") and name != f"{key}_preset"]:
            del st.session_state[name]

    name = st.selectbox("start from", list(PRESETS), index=list(PRESETS).index(default), key=f"{key}_preset",
                        on_change=forget_controls)
    return PRESETS[name]


def model_controls(key: str, base: ModelConfig) -> ModelConfig:
    """Widgets for the explorer's knobs (depth, TokenLearner, tokens, placement, TokenFuser,
    pooling); `key` keeps several sets apart on one page. The ranges only allow valid
    configs: placement is clamped whenever depth or TokenFuser changes."""
    depth = st.slider("depth (blocks)", 1, MAX_APP_DEPTH, base.depth, key=f"{key}_depth")
    version = st.selectbox("TokenLearner", list(TOKENLEARNER_LABELS), format_func=TOKENLEARNER_LABELS.get,
                           index=list(TOKENLEARNER_LABELS).index(base.tokenlearner), key=f"{key}_tokenlearner")
    if version == "none":
        return base.replace(depth=depth, tokenlearner="none", fuser=False, pooling="mean",
                            placement=min(base.placement, depth))
    tokens = st.slider("tokens", 1, MAX_APP_TOKENS, min(base.num_tokens, MAX_APP_TOKENS), key=f"{key}_tokens")
    fuser = st.checkbox("TokenFuser", base.fuser, key=f"{key}_fuser")
    last = depth - 1 if fuser else depth
    placement_key = f"{key}_placement"
    if last == 0:
        st.caption("placement 0: with TokenFuser and one block, TokenLearner comes before it")
        placement = 0
    else:
        if placement_key in st.session_state:
            st.session_state[placement_key] = min(st.session_state[placement_key], last)
        placement = st.slider("placement (blocks before TokenLearner)", 0, last, min(base.placement, last),
                              key=placement_key)
    pooling = "mean"
    if version == "v1":
        pooling = st.radio("pooling", ["mean", "sum"], index=["mean", "sum"].index(base.pooling),
                           horizontal=True, key=f"{key}_pooling")
    return base.replace(depth=depth, tokenlearner=version, num_tokens=tokens, fuser=fuser,
                        placement=placement, pooling=pooling)
