import keras
from keras import layers, ops

from tokenlearner import native
from tokenlearner.layers.dense import Dense
from tokenlearner.layers.layer_normalization import LayerNormalization
from tokenlearner.layers.token_learner import join_slices, slice_maps, split_slices, square_grid


@keras.saving.register_keras_serializable(package="tokenlearner")
class TokenFuser(layers.Layer):
    """TokenFuser, as the official TokenLearner code defines it: maps S processed tokens
    back onto the N positions they were learned from.

    The tokens are mixed across the token axis (LayerNorm, a zero-initialised Dense over
    tokens, LayerNorm); a gate, sigmoid(MLP(LayerNorm(original))), gives every position
    a weight per token, and each position receives the gate-weighted sum of the mixed
    tokens. The caller adds the residual. On a clip each temporal slice's tokens go back
    onto that slice's positions, as in the official code.

    Args:
        bottleneck_dim: hidden width of the gate MLP.
        epsilon: LayerNormalization epsilon.
        temporal_slices: 1 for images; for clips, the slices TokenLearner learned from apart.

    Shape: tokens (B, S, C) and original (B, N, C) -> (B, N, C); gate maps (B, S, h, w).
    On a clip of L slices: (B, L * S, C) and (B, L * N, C) -> (B, L * N, C); maps
    (B, L, S, h, w).
    """

    def __init__(self, bottleneck_dim=64, epsilon=1e-6, temporal_slices=1, **kwargs):
        super().__init__(**kwargs)
        self.bottleneck_dim = bottleneck_dim
        self.epsilon = epsilon
        self.temporal_slices = temporal_slices

    def build(self, tokens_shape, original_shape):
        self.num_tokens = tokens_shape[1] // self.temporal_slices
        self.grid_size = square_grid(original_shape[1] // self.temporal_slices)
        self.tokens_norm = LayerNormalization(epsilon=self.epsilon, name="tokens_norm")
        self.tokens_norm.build(tokens_shape)
        self.token_mixer = Dense(self.num_tokens, kernel_initializer="zeros", name="token_mixer")
        self.token_mixer.build((None, tokens_shape[2], self.num_tokens))
        self.mixed_norm = LayerNormalization(epsilon=self.epsilon, name="mixed_norm")
        self.mixed_norm.build(tokens_shape)
        self.original_norm = LayerNormalization(epsilon=self.epsilon, name="original_norm")
        self.original_norm.build(original_shape)
        self.gate_hidden = Dense(self.bottleneck_dim, name="gate_hidden")
        self.gate_hidden.build(original_shape)
        self.gate_output = Dense(self.num_tokens, name="gate_output")
        self.gate_output.build(tuple(original_shape[:-1]) + (self.bottleneck_dim,))

    def call(self, tokens, original, return_maps=False):
        tokens, original = split_slices(tokens, self.temporal_slices), split_slices(original, self.temporal_slices)
        mixed = ops.transpose(self.tokens_norm(tokens), (0, 2, 1))  # (B, C, S)
        mixed = self.mixed_norm(ops.transpose(self.token_mixer(mixed), (0, 2, 1)))  # (B, S, C)
        hidden = native.gelu(self.gate_hidden(self.original_norm(original)))
        gate = ops.sigmoid(self.gate_output(hidden))  # (B, N, S)
        fused = join_slices(ops.matmul(gate, mixed), self.temporal_slices)  # (B, N, C)
        if return_maps:
            gate_maps = ops.reshape(
                ops.transpose(gate, (0, 2, 1)), (-1, self.num_tokens, self.grid_size, self.grid_size)
            )
            return fused, slice_maps(gate_maps, self.temporal_slices)
        return fused

    def get_config(self):
        return {**super().get_config(), "bottleneck_dim": self.bottleneck_dim, "epsilon": self.epsilon,
                "temporal_slices": self.temporal_slices}
