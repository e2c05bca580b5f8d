import keras
from keras import layers, ops

from tokenlearner import native
from tokenlearner.layers.dense import Dense, project
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
        self.qkv = Dense(3 * inner, name="qkv")
        self.qkv.build(input_shape)
        self.output_projection = Dense(width, name="output_projection")
        self.output_projection.build(tuple(input_shape[:-1]) + (inner,))
        self.attention_dropout = Dropout(self.dropout, name="attention_dropout")

    def call(self, x, training=False):
        # The fused kernel is split, not its (B, T, 3 * heads * key_dim) output: three matmuls
        # on the kernel's thirds cost less than copying the output's thirds apart and
        # concatenating their gradients (docs/performance.md, "The attention from the fused kernel's thirds").
        query, key, value = (
            ops.add(project(x, kernel), bias)
            for kernel, bias in zip(ops.split(self.qkv.kernel, 3, axis=-1), ops.split(self.qkv.bias, 3, axis=-1))
        )
        seeds = self.attention_dropout.seed_generator if self.dropout > 0 else None  # Keras makes none for rate 0
        attended = native.self_attention(query, key, value, self.num_heads, self.dropout, seeds, training)
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
