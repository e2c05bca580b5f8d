import keras
from keras import layers

from tokenlearner import native


@keras.saving.register_keras_serializable(package="tokenlearner")
class Dropout(layers.Dropout):
    """`keras.layers.Dropout` (same arguments, seed state and masks), whose masks come from
    the fused kernel of `tokenlearner.native` where it is loaded."""

    def call(self, inputs, training=False):
        if training and 0 < self.rate < 1 and self.noise_shape is None:
            return native.dropout(inputs, self.rate, self.seed_generator)
        return super().call(inputs, training=training)
