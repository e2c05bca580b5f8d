"""FlatAdamW against Keras' AdamW: the same weights to the bit, in far fewer graph ops."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tokenlearner.adamw import FlatAdamW
from tokenlearner.config import TrainConfig
from tokenlearner.training import make_optimizer

# Shapes of the kinds the models hold: convolution kernels, biases, dense kernels, a scalar.
SHAPES = [(3, 3, 3, 8), (8,), (16, 24), (24,), (2, 2, 4, 4), ()]
STEPS = 6


def _schedule():
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=4, warmup_target=1e-3, warmup_steps=2)


# name: (keyword arguments of both optimizers, the names of the weights excluded from decay)
SETTINGS = {
    "keras-io": (dict(learning_rate=1e-3, weight_decay=1e-4), []),
    "warm-up-then-cosine": (dict(learning_rate=_schedule(), weight_decay=0.05), []),
    "no-weight-decay": (dict(learning_rate=1e-3, weight_decay=0.0), []),
    "biases-not-decayed": (dict(learning_rate=1e-3, weight_decay=0.05), ["bias"]),
    "clipped-gradients": (dict(learning_rate=1e-2, weight_decay=1e-4, global_clipnorm=1.0), []),
}


def _trained(optimizer_class, settings: dict, excluded: list[str], steps: int = STEPS) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    names = ["bias" if len(shape) == 1 else f"kernel_{index}" for index, shape in enumerate(SHAPES)]
    weights = [keras.Variable(rng.normal(size=shape).astype("float32"), name=name)
               for shape, name in zip(SHAPES, names, strict=True)]
    optimizer = optimizer_class(**settings)
    if excluded:
        optimizer.exclude_from_weight_decay(var_names=excluded)
    optimizer.build(weights)
    gradients = [[tf.constant(rng.normal(scale=3.0, size=shape).astype("float32")) for shape in SHAPES]
                 for _ in range(steps)]

    @tf.function
    def step(step_gradients):
        optimizer.apply_gradients(zip(step_gradients, weights, strict=True))

    for step_gradients in gradients:
        step(step_gradients)
    return [weight.numpy() for weight in weights]


@pytest.mark.parametrize("name", SETTINGS)
def test_flat_adamw_updates_every_weight_exactly_as_keras_adamw(name):
    settings, excluded = SETTINGS[name]
    ours = _trained(FlatAdamW, settings, excluded)
    theirs = _trained(keras.optimizers.AdamW, settings, excluded)
    start = _trained(FlatAdamW, settings, excluded, steps=0)
    for shape, mine, keras_weight, before in zip(SHAPES, ours, theirs, start, strict=True):
        assert not np.array_equal(mine, before), f"the weight of shape {shape} did not move"
        np.testing.assert_array_equal(mine, keras_weight, err_msg=f"the weight of shape {shape}")


def _ops_per_weight(optimizer_class, count: int) -> int:
    weights = [keras.Variable(np.ones((4, 4), "float32")) for _ in range(count)]
    optimizer = optimizer_class(learning_rate=_schedule())
    optimizer.build(weights)

    @tf.function
    def step():
        optimizer.apply_gradients([(tf.ones((4, 4)), weight) for weight in weights])

    return len(step.get_concrete_function().graph.get_operations())


def test_flat_adamw_traces_a_few_ops_per_weight_where_keras_traces_dozens():
    # What tracing and Grappler spend before the first step grows with these ops (each
    # count includes the one op that makes the weight's gradient).
    ours = (_ops_per_weight(FlatAdamW, 24) - _ops_per_weight(FlatAdamW, 8)) / 16
    theirs = (_ops_per_weight(keras.optimizers.AdamW, 24) - _ops_per_weight(keras.optimizers.AdamW, 8)) / 16
    assert ours <= 10 and theirs >= 50


def test_the_training_optimizer_is_flat_adamw_with_the_recipe():
    recipe = TrainConfig(learning_rate=2e-3, weight_decay=0.05, warmup_epochs=1, epochs=3)
    optimizer = make_optimizer(recipe, steps_per_epoch=10)
    assert isinstance(optimizer, FlatAdamW)
    assert optimizer.weight_decay == pytest.approx(0.05)
    assert float(optimizer._learning_rate(10)) == pytest.approx(2e-3, rel=1e-5)  # the warm-up's end


def test_what_flat_adamw_cannot_do_is_refused_by_name():
    with pytest.raises(ValueError, match="amsgrad"):
        FlatAdamW(amsgrad=True)
    mixed = [keras.Variable(np.ones(2, "float32")), keras.Variable(np.ones(2, "float16"))]
    with pytest.raises(ValueError, match="one dtype"):
        FlatAdamW().build(mixed)
    weights = [keras.Variable(np.ones(2, "float32")), keras.Variable(np.ones(3, "float32"))]
    optimizer = FlatAdamW()
    optimizer.build(weights)
    with pytest.raises(ValueError, match="all 2 weights"):
        optimizer.apply([tf.ones(2), None], weights)
