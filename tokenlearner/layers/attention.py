import math

import keras
from keras import layers, ops

from tokenlearner.layers.dropout import Dropout


@keras.saving.register_keras_serializable(package="tokenlearner")
class MultiHeadSelfAttention(layers.Layer):
    """Multi-head self-attention with the maths of `keras.layers.MultiHeadAttention`
    (queries scaled by 1/sqrt(key_dim), softmax, dropout on the attention weights),
    and the same parameter count, but with the query, key and value projections' weights
    held in one Dense, `qkv`, whose kernel is the three kernels side by side.

    Args:
        num_heads: number of heads.
        key_dim: width of each head's queries, keys and values.
        dropout: dropout rate on the attention weights.

    Shape: (B, T, C) -> (B, T, C).
    """

    def __init__(self, num_heads, key_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = dropout

    def build(self, input_shape):
        width = input_shape[-1]
        inner = self.num_heads * self.key_dim
        self.qkv = layers.Dense(3 * inner, name="qkv")
        self.qkv.build(input_shape)
        self.output_projection = layers.Dense(width, name="output_projection")
        self.output_projection.build(tuple(input_shape[:-1]) + (inner,))
        self.attention_dropout = Dropout(self.dropout, name="attention_dropout")

    def call(self, x, training=False):
        tokens = x.shape[1]

        def split_heads(projection):  # (B, T, heads * key_dim) -> (B, heads, T, key_dim)
            return ops.transpose(ops.reshape(projection, (-1, tokens, self.num_heads, self.key_dim)), (0, 2, 1, 3))

        # The fused kernel is split, not its (B, T, 3 * heads * key_dim) output: three matmuls
        # on the kernel's thirds cost less than copying the output's thirds apart and
        # concatenating their gradients (docs/performance.md, "The attention from the fused kernel's thirds").
        query, key, value = (
            split_heads(ops.add(ops.matmul(x, kernel), bias))
            for kernel, bias in zip(ops.split(self.qkv.kernel, 3, axis=-1), ops.split(self.qkv.bias, 3, axis=-1))
        )
        query = query * (1.0 / math.sqrt(self.key_dim))
        scores = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))  # (B, heads, T, T)
        weights = self.attention_dropout(ops.softmax(scores, axis=-1), training=training)
        attended = ops.matmul(weights, value)  # (B, heads, T, key_dim)
        attended = ops.reshape(
            ops.transpose(attended, (0, 2, 1, 3)), (-1, tokens, self.num_heads * self.key_dim)
        )
        return self.output_projection(attended)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "dropout": self.dropout,
        }
