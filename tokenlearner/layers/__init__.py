"""Keras 3 layers of the mini ViT, each registered for `.keras` saving."""

from tokenlearner.layers.attention import MultiHeadSelfAttention
from tokenlearner.layers.dense import Dense
from tokenlearner.layers.dropout import Dropout
from tokenlearner.layers.grouped_dense import GroupedDense
from tokenlearner.layers.layer_normalization import LayerNormalization
from tokenlearner.layers.patch_embedding import PatchEmbedding
from tokenlearner.layers.preprocessing import ImagePreprocessing
from tokenlearner.layers.token_fuser import TokenFuser
from tokenlearner.layers.token_learner import TokenLearner, TokenLearnerV11
from tokenlearner.layers.transformer_block import TransformerBlock

__all__ = [
    "Dense",
    "Dropout",
    "GroupedDense",
    "ImagePreprocessing",
    "LayerNormalization",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "TokenFuser",
    "TokenLearner",
    "TokenLearnerV11",
    "TransformerBlock",
]
