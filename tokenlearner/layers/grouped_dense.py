import math

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="tokenlearner")
class GroupedDense(layers.Layer):
    """A grouped 1x1 convolution without bias, on a sequence: the channels are split
    into `groups` equal parts and each part has its own (C/groups x units/groups) kernel.

    It computes what `Conv2D(units, 1, groups=groups, use_bias=False)` computes, with
    the same initial weight distribution (Glorot-uniform over a fan-in of C/groups and
    a fan-out of units), as one batched matmul, which runs on every backend and device
    and which the TensorFlow profiler can count.

    Args:
        units: output width, divisible by `groups`.
        groups: number of groups; must divide the input width too.

    Shape: (B, N, C) -> (B, N, units).
    """

    def __init__(self, units, groups, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.groups = groups

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups or self.units % self.groups:
            raise ValueError(
                f"groups={self.groups} must divide the input width {channels} and units={self.units}"
            )
        limit = math.sqrt(6.0 / (channels // self.groups + self.units))
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.groups, channels // self.groups, self.units // self.groups),
            initializer=keras.initializers.RandomUniform(-limit, limit),
        )

    def call(self, x):
        positions, channels = x.shape[1], x.shape[2]
        grouped = ops.reshape(x, (-1, self.groups, channels // self.groups))
        grouped = ops.matmul(ops.transpose(grouped, (1, 0, 2)), self.kernel)  # (groups, B*N, units/groups)
        return ops.reshape(ops.transpose(grouped, (1, 0, 2)), (-1, positions, self.units))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "groups": self.groups}
