"""Keras' Dense, its product one 2-D matmul."""

import keras
from keras import layers, ops


def project(x, kernel):
    """`x @ kernel` over the last axis of `x`, as one 2-D matmul between two reshapes: the
    product Keras' `ops.matmul` computes, without the `tf.tensordot` it builds on TensorFlow
    for an `x` of more than two axes, a dozen shape ops per product while the batch size is
    open, which tracing and Grappler pay for before the first step (docs/performance.md)."""
    inner = tuple(x.shape[1:-1])
    if not inner or None in inner:
        return ops.matmul(x, kernel)
    flat = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), kernel)
    return ops.reshape(flat, (-1, *inner, kernel.shape[-1]))


@keras.saving.register_keras_serializable(package="tokenlearner")
class Dense(layers.Dense):
    """`keras.layers.Dense` (the same weights, names and maths), its product through `project`."""

    def call(self, inputs, training=None):
        x = project(inputs, self.kernel)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x
