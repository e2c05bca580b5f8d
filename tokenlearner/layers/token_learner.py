"""TokenLearner (Ryoo et al., NeurIPS 2021): S learned spatial maps, each pooling the
input positions into one token.

Both layers take a sequence of positions on a square grid, (B, N, C) with N = h * w,
and return (B, S, C); called with `return_maps=True` they also return the maps that
weighted each position, (B, S, h, w), for display.

On a clip they take every temporal slice's grid one after the other, (B, L * N, C) for
L = `temporal_slices`, and learn S tokens from each slice on its own, as the official
code does for video: (B, L * S, C), maps (B, L, S, h, w).
"""

import math

import keras
from keras import layers, ops

from tokenlearner import native
from tokenlearner.config import POOLINGS, V11_STYLES
from tokenlearner.layers.dense import Dense
from tokenlearner.layers.grouped_dense import GroupedDense
from tokenlearner.layers.layer_normalization import LayerNormalization


def square_grid(positions):
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"TokenLearner needs a square grid of positions, got {positions}")
    return side


def split_slices(x, slices):
    """(B, slices * N, C) -> (B * slices, N, C): each temporal slice a sequence of its own."""
    return x if slices == 1 else ops.reshape(x, (-1, x.shape[1] // slices, x.shape[2]))


def join_slices(x, slices):
    """(B * slices, K, C) -> (B, slices * K, C), the inverse of `split_slices`."""
    return x if slices == 1 else ops.reshape(x, (-1, slices * x.shape[1], x.shape[2]))


def slice_maps(maps, slices):
    """(B * slices, S, h, w) maps -> (B, slices, S, h, w) for a clip; images' stay as they are."""
    return maps if slices == 1 else ops.reshape(maps, (-1, slices, *maps.shape[1:]))


@keras.saving.register_keras_serializable(package="tokenlearner")
class TokenLearner(layers.Layer):
    """TokenLearner v1.0, as in the keras.io example and the official code.

    LayerNorm, three 3x3 convolutions (no bias) to `num_tokens` channels with GELU,
    a fourth with a sigmoid: one map per token. Each map weights the un-normalised
    input, and the weighted positions are averaged (`"mean"`, keras.io) or summed
    (`"sum"`, the official code's default).

    Args:
        num_tokens: S, the number of tokens to learn.
        pooling: `"mean"` or `"sum"`.
        epsilon: LayerNormalization epsilon.
        temporal_slices: 1 for images; for clips, the slices tokens are learned from apart.

    Shape: (B, N, C) -> (B, S, C), maps (B, S, h, w); on clips as the module says.
    """

    def __init__(self, num_tokens, pooling="mean", epsilon=1e-6, temporal_slices=1, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}: choose one of {POOLINGS}")
        self.num_tokens = num_tokens
        self.pooling = pooling
        self.epsilon = epsilon
        self.temporal_slices = temporal_slices

    def build(self, input_shape):
        self.grid_size = square_grid(input_shape[1] // self.temporal_slices)
        self.norm = LayerNormalization(epsilon=self.epsilon, name="norm")
        self.norm.build(input_shape)
        self.convs = []
        channels = input_shape[-1]
        for index in range(4):
            conv = layers.Conv2D(self.num_tokens, 3, padding="same", use_bias=False, name=f"conv_{index}")
            conv.build((None, self.grid_size, self.grid_size, channels))
            self.convs.append(conv)
            channels = self.num_tokens

    def call(self, x, return_maps=False):
        x = split_slices(x, self.temporal_slices)
        positions, channels = x.shape[1], x.shape[2]
        maps = ops.reshape(self.norm(x), (-1, self.grid_size, self.grid_size, channels))
        for conv in self.convs[:-1]:
            maps = native.gelu(conv(maps))
        maps = ops.sigmoid(self.convs[-1](maps))  # (B, h, w, S)
        maps = ops.transpose(ops.reshape(maps, (-1, positions, self.num_tokens)), (0, 2, 1))
        tokens = ops.matmul(maps, x)  # (B, S, C): the maps' weighted sums of positions
        if self.pooling == "mean":
            tokens = tokens / positions
        tokens = join_slices(tokens, self.temporal_slices)
        if return_maps:
            maps = ops.reshape(maps, (-1, self.num_tokens, self.grid_size, self.grid_size))
            return tokens, slice_maps(maps, self.temporal_slices)
        return tokens

    def get_config(self):
        return {
            **super().get_config(),
            "num_tokens": self.num_tokens,
            "pooling": self.pooling,
            "epsilon": self.epsilon,
            "temporal_slices": self.temporal_slices,
        }


@keras.saving.register_keras_serializable(package="tokenlearner")
class TokenLearnerV11(layers.Layer):
    """TokenLearner v1.1: softmax maps over positions, in one of two forms.

    `"grouped_conv"`, as the keras.io authors describe and implement it (after the
    earlier official code): LayerNorm, a grouped 1x1 conv keeping the width, a 1x1 conv
    to `num_tokens`, softmax over positions; the un-normalised input goes through its
    own grouped 1x1 conv before the maps pool it. No biases.

    `"mlp"`, the current official code: LayerNorm, Dense(`bottleneck_dim`) with GELU,
    Dense(`num_tokens`), softmax over positions; the maps pool the input itself.

    Args:
        num_tokens: S, the number of tokens to learn.
        style: `"grouped_conv"` or `"mlp"`.
        groups: groups of the grouped convs (`"grouped_conv"` only).
        bottleneck_dim: hidden width of the selector MLP (`"mlp"` only).
        epsilon: LayerNormalization epsilon.
        temporal_slices: 1 for images; for clips, the slices tokens are learned from apart.

    Shape: (B, N, C) -> (B, S, C), maps (B, S, h, w), each map summing to 1; on clips as
    the module says.
    """

    def __init__(self, num_tokens, style="grouped_conv", groups=4, bottleneck_dim=64,
                 epsilon=1e-6, temporal_slices=1, **kwargs):
        super().__init__(**kwargs)
        if style not in V11_STYLES:
            raise ValueError(f"style={style!r}: choose one of {V11_STYLES}")
        self.num_tokens = num_tokens
        self.style = style
        self.groups = groups
        self.bottleneck_dim = bottleneck_dim
        self.epsilon = epsilon
        self.temporal_slices = temporal_slices

    def build(self, input_shape):
        self.grid_size = square_grid(input_shape[1] // self.temporal_slices)
        channels = input_shape[-1]
        self.norm = LayerNormalization(epsilon=self.epsilon, name="norm")
        self.norm.build(input_shape)
        if self.style == "grouped_conv":
            # 1x1 convolutions are per-position Dense layers: no reshape to the grid needed.
            self.selector_grouped = GroupedDense(channels, self.groups, name="selector_grouped")
            self.selector_grouped.build(input_shape)
            self.selector = Dense(self.num_tokens, use_bias=False, name="selector")
            self.selector.build(input_shape)
            self.feature_grouped = GroupedDense(channels, self.groups, name="feature_grouped")
            self.feature_grouped.build(input_shape)
        else:
            self.selector_hidden = Dense(self.bottleneck_dim, name="selector_hidden")
            self.selector_hidden.build(input_shape)
            self.selector = Dense(self.num_tokens, name="selector")
            self.selector.build(tuple(input_shape[:-1]) + (self.bottleneck_dim,))

    def call(self, x, return_maps=False):
        x = split_slices(x, self.temporal_slices)
        positions = x.shape[1]
        normed = self.norm(x)
        if self.style == "grouped_conv":
            logits = self.selector(self.selector_grouped(normed))
            features = self.feature_grouped(x)
        else:
            logits = self.selector(native.gelu(self.selector_hidden(normed)))
            features = x
        logits = ops.transpose(ops.reshape(logits, (-1, positions, self.num_tokens)), (0, 2, 1))
        maps = ops.softmax(logits, axis=-1)  # (B, S, N), each row sums to 1
        tokens = join_slices(ops.matmul(maps, features), self.temporal_slices)
        if return_maps:
            maps = ops.reshape(maps, (-1, self.num_tokens, self.grid_size, self.grid_size))
            return tokens, slice_maps(maps, self.temporal_slices)
        return tokens

    def get_config(self):
        return {
            **super().get_config(),
            "num_tokens": self.num_tokens,
            "style": self.style,
            "groups": self.groups,
            "bottleneck_dim": self.bottleneck_dim,
            "epsilon": self.epsilon,
            "temporal_slices": self.temporal_slices,
        }
