"""The compiled training and evaluation steps, in process."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_model import VARIANTS

from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.model import build_model
from tokenlearner.training import CHUNK_IMAGES, Steps, make_optimizer


@pytest.mark.parametrize("recipe", [TrainConfig(), TrainConfig(random_shift=2, mixup_alpha=0.8, cutmix_alpha=1.0)],
                         ids=["keras-io", "augmented"])
def test_the_training_step_is_traced_once_for_every_batch_size(recipe):
    # A second trace is seconds more wait before the first step (see docs/performance.md).
    keras.utils.set_random_seed(0)
    config = ModelConfig(depth=1, placement=1)
    model = build_model(config)
    steps = Steps(model, make_optimizer(recipe, 1), config.num_classes, recipe)
    rng = np.random.default_rng(0)
    for batch_size in (4, 3, CHUNK_IMAGES + 4):
        images = rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, config.num_classes, batch_size, dtype=np.int32)
        steps.train_step(images, labels)
    assert steps.train_step.experimental_get_tracing_count() == 1
    assert int(steps.optimizer.iterations) == 3
    assert steps.eval_step(images[:0], labels[:0])[3].shape == (0,)


class GradientsAsWeights(keras.optimizers.Optimizer):
    """Puts every gradient in place of its weight, so that a step's gradients read back exactly."""

    def __init__(self):
        super().__init__(learning_rate=1.0)

    def update_step(self, gradient, variable, learning_rate):
        self.assign(variable, gradient)


def whole_batch(model, images, labels, num_classes):
    """The example's step on the whole batch at once: its probabilities and the gradients
    of its mean loss."""
    with tf.GradientTape() as tape:
        probabilities = model(tf.cast(images, tf.float32), training=True)
        losses = keras.losses.categorical_crossentropy(tf.one_hot(labels, num_classes), probabilities)
        loss = tf.reduce_mean(losses)
    return probabilities, losses, tape.gradient(loss, model.trainable_variables)


def restore(states, values):
    for state, value in zip(states, values, strict=True):
        state.assign(value)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_steps_in_chunks_compute_the_whole_batch(name):
    # Dropout off, so that the whole batch and the chunks see the same network; a batch
    # of 40 is two full chunks and a short one.
    config = VARIANTS[name].replace(dropout=0.0, attention_dropout=0.0)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, config.num_classes, 40, dtype=np.int32)
    assert 2 * CHUNK_IMAGES < len(images) < 3 * CHUNK_IMAGES

    seeds = [state.numpy() for state in model.non_trainable_variables]  # the crop and flip to repeat
    probabilities, losses, gradients = whole_batch(model, images, labels, config.num_classes)
    restore(model.non_trainable_variables, seeds)
    steps = Steps(model, GradientsAsWeights(), config.num_classes)
    loss, top1, top5 = steps.train_step(images, labels)
    assert float(loss) == pytest.approx(float(tf.reduce_sum(losses)), rel=1e-5)
    assert int(top1) == int((probabilities.numpy().argmax(axis=1) == labels).sum())
    assert int(top5) == int(tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, probabilities, 5), tf.int32)))
    # Some gradients are zero in exact arithmetic (TokenFuser's mixer bias, which a
    # normalisation cancels): what they hold is rounding, on the scale of the largest one.
    scale = max(float(np.abs(gradient).max()) for gradient in gradients)
    for weight, gradient in zip(model.trainable_variables, gradients, strict=True):
        np.testing.assert_allclose(weight.numpy(), gradient.numpy(), rtol=1e-4, atol=1e-6 * scale,
                                   err_msg=weight.path)

    # A tensor, not an array: Keras computes the loss of a softmax output from its logits.
    probabilities = model(images.astype("float32"), training=False)
    losses = keras.losses.categorical_crossentropy(tf.one_hot(labels, config.num_classes), probabilities)
    loss, top1, top5, predicted = steps.eval_step(images, labels)
    assert float(loss) == pytest.approx(float(tf.reduce_sum(losses)), rel=1e-5)
    classes = probabilities.numpy().argmax(axis=1)
    np.testing.assert_array_equal(predicted.numpy(), classes)
    assert int(top1) == int((classes == labels).sum())
    assert int(top5) == int(tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, probabilities, 5), tf.int32)))


def test_dropout_seeds_move_on_from_chunk_to_chunk_as_from_call_to_call():
    config = ModelConfig(dropout=0.5, attention_dropout=0.5)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    states = model.non_trainable_variables
    steps = Steps(model, keras.optimizers.SGD(learning_rate=0.0), config.num_classes)
    # Plain grey images, all alike: only the dropout masks tell them apart.
    images = np.full((2 * CHUNK_IMAGES, 32, 32, 3), 128, dtype=np.uint8)
    labels = np.zeros(2 * CHUNK_IMAGES, dtype=np.int32)
    start = [state.numpy() for state in states]
    model(images[:1].astype("float32"), training=True)
    per_call = [state.numpy() - value for state, value in zip(states, start)]
    assert max(moved[1] for moved in per_call) == 2, "the MLP's dropout layer draws twice per call"

    restore(states, start)
    two_chunks, _, _ = steps.train_step(images, labels)
    for state, value, call in zip(states, start, per_call):
        chunks = 1 if state.path.startswith("preprocessing/") else 2  # the crop and flip: once a batch
        assert list(state.numpy() - value) == list(chunks * call), state.path

    # With the second chunk's masks the first's, the batch would lose exactly twice its first chunk.
    restore(states, start)
    one_chunk, _, _ = steps.train_step(images[:CHUNK_IMAGES], labels[:CHUNK_IMAGES])
    assert float(two_chunks) != pytest.approx(2 * float(one_chunk), rel=1e-6)
