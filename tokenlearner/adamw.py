"""Keras' AdamW, computed for every weight at once.

Keras' AdamW builds its update one weight at a time: 58 graph ops per weight, the
learning-rate schedule traced again for each weight's decay; the keras.io model's step
held 3,190 to 3,873 ops. Tracing and first running the optimizer alone took 1.8-2.4 s, a
third of the step's tracing and first call (5.6 s on a 2-core Zen 3). `FlatAdamW` lays
every weight and gradient end to end in one vector and applies Keras' AdamW to it: the
same operations on every element in the same order, so the same weights to the bit
(tests/test_adamw.py), in 10 ops per weight (a read, the reshapes, a slice and an
assignment) and some 20 for the vector; the step holds about 1,000
(docs/performance.md).

Imported only where TensorFlow runs, as it subclasses Keras' optimizer."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


class FlatAdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with its moments held as two vectors over all weights
    (`momentum`, `velocity`) and one update for all of them, on TensorFlow. Weight decay,
    its exclusions and gradient clipping are Keras'; AMSGrad, moving averages of the
    weights and gradient accumulation are not offered. The weights must share a dtype."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad or self.use_ema or self.gradient_accumulation_steps:
            raise ValueError("FlatAdamW does not offer amsgrad, use_ema or gradient_accumulation_steps")

    def build(self, variables):
        if self.built:
            return
        # The base optimizer's iteration count and learning rate, without Adam's per-weight moments.
        super(keras.optimizers.Adam, self).build(variables)
        dtypes = {variable.dtype for variable in variables}
        if len(dtypes) > 1:
            raise ValueError(f"FlatAdamW needs weights of one dtype, got {sorted(dtypes)}")
        decayed = [self.weight_decay is not None and self._use_weight_decay(variable) for variable in variables]
        # Decayed weights first, so that decay applies to one leading stretch of the vector.
        self._order = sorted(range(len(variables)), key=lambda index: not decayed[index])
        self._sizes = [int(np.prod(variables[index].shape)) for index in self._order]
        self._decayed_size = sum(size for size, index in zip(self._sizes, self._order) if decayed[index])
        self._momentum = self.add_variable((sum(self._sizes),), name="momentum")
        self._velocity = self.add_variable((sum(self._sizes),), name="velocity")

    def _backend_apply_gradients(self, grads, trainable_variables):
        """What `AdamW.update_step` and `_apply_weight_decay` do to each weight, written
        once over the vector: the decay, then the moments, then the step."""
        import tensorflow as tf

        grads = self._clip_gradients(list(grads))
        pairs = {self._get_variable_index(variable): (variable, gradient)
                 for variable, gradient in zip(trainable_variables, grads, strict=True)}
        if len(pairs) != len(self._order):
            # Keras leaves out a weight whose gradient is None; one vector cannot.
            raise ValueError(f"FlatAdamW updates all {len(self._order)} weights at once, "
                             f"but {len(pairs)} have gradients")
        variables = [pairs[index][0] for index in self._order]
        dtype = variables[0].dtype
        learning_rate = ops.cast(self.learning_rate, dtype)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = learning_rate * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)

        weights = tf.concat([tf.reshape(variable.value, [-1]) for variable in variables], 0)
        gradient = tf.concat([tf.reshape(pairs[index][1], [-1]) for index in self._order], 0)
        if self._decayed_size:
            decayed = weights[: self._decayed_size]
            decay = ops.cast(self.weight_decay, dtype)
            weights = tf.concat([decayed - decayed * decay * learning_rate, weights[self._decayed_size :]], 0)
        momentum = self._momentum + ops.multiply(ops.subtract(gradient, self._momentum), 1 - self.beta_1)
        velocity = self._velocity + ops.multiply(ops.subtract(ops.square(gradient), self._velocity),
                                                 1 - self.beta_2)
        self._momentum.assign(momentum)
        self._velocity.assign(velocity)
        weights = weights - ops.divide(ops.multiply(momentum, alpha), ops.add(ops.sqrt(velocity), self.epsilon))
        for variable, part in zip(variables, tf.split(weights, self._sizes), strict=True):
            variable.assign(tf.reshape(part, variable.shape))
