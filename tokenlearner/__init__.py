"""TokenLearner Explorer: small Vision Transformers with TokenLearner, in Keras 3.

Importing the package is cheap: the config, presets and FLOPs counter need no
TensorFlow. `build_model`, `load_model`, `attention_maps` and `predict_with_maps` load
Keras on first use.
"""

from tokenlearner.config import ModelConfig
from tokenlearner.presets import PRESETS, preset

__all__ = ["ModelConfig", "PRESETS", "attention_maps", "build_model", "load_model", "predict_with_maps", "preset"]

_MODEL_FUNCTIONS = ("attention_maps", "build_model", "load_model", "predict_with_maps")


def __getattr__(name):
    if name in _MODEL_FUNCTIONS:
        from tokenlearner import model

        return getattr(model, name)
    raise AttributeError(f"module 'tokenlearner' has no attribute {name!r}")
