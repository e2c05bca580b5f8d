import keras
from keras import layers

from tokenlearner import native
from tokenlearner.layers.attention import MultiHeadSelfAttention
from tokenlearner.layers.dense import Dense
from tokenlearner.layers.dropout import Dropout
from tokenlearner.layers.layer_normalization import LayerNormalization


@keras.saving.register_keras_serializable(package="tokenlearner")
class TransformerBlock(layers.Layer):
    """The keras.io example's pre-norm block:
    x + MHA(LN(x)), then x + MLP(LN(x)), where the MLP is Dense -> GELU -> Dropout for
    every width in `mlp_units` (GELU after the last Dense too, as in the example).

    Args:
        num_heads: attention heads.
        key_dim: width of each head.
        mlp_units: widths of the MLP's Dense layers; the last must equal the input width.
        dropout: dropout after each MLP Dense.
        attention_dropout: dropout on the attention weights.
        epsilon: LayerNormalization epsilon.

    Shape: (B, T, C) -> (B, T, C).
    """

    def __init__(self, num_heads, key_dim, mlp_units, dropout=0.1, attention_dropout=0.1,
                 epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.mlp_units = tuple(mlp_units)
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.epsilon = epsilon

    def build(self, input_shape):
        if self.mlp_units[-1] != input_shape[-1]:
            raise ValueError(
                f"mlp_units={list(self.mlp_units)} must end with the input width {input_shape[-1]}"
            )
        self.attention_norm = LayerNormalization(epsilon=self.epsilon, name="attention_norm")
        self.attention_norm.build(input_shape)
        self.attention = MultiHeadSelfAttention(
            self.num_heads, self.key_dim, dropout=self.attention_dropout, name="attention"
        )
        self.attention.build(input_shape)
        self.mlp_norm = LayerNormalization(epsilon=self.epsilon, name="mlp_norm")
        self.mlp_norm.build(input_shape)
        self.mlp_dense = []
        width = input_shape[-1]
        for index, units in enumerate(self.mlp_units):
            dense = Dense(units, name=f"mlp_dense_{index}")
            dense.build(tuple(input_shape[:-1]) + (width,))
            self.mlp_dense.append(dense)
            width = units
        self.mlp_dropout = Dropout(self.dropout, name="mlp_dropout")

    def call(self, x, training=False):
        x = x + self.attention(self.attention_norm(x), training=training)
        hidden = self.mlp_norm(x)
        for dense in self.mlp_dense:
            hidden = self.mlp_dropout(native.gelu(dense(hidden)), training=training)
        return x + hidden

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "mlp_units": list(self.mlp_units),
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "epsilon": self.epsilon,
        }
