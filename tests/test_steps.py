"""The compiled training and evaluation steps, in process."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_model import VARIANTS

from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.model import build_model
from tokenlearner.steps import CHUNK_IMAGES, Steps
from tokenlearner.training import make_optimizer


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


def batch_of(size, num_classes=10):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, num_classes, size, dtype=np.int32))


def assert_gradients_close(weights, gradients):
    # Some gradients are zero in exact arithmetic (TokenFuser's mixer bias, which a
    # normalisation cancels): what they hold is rounding, on the scale of the largest one.
    scale = max(float(np.abs(gradient).max()) for gradient in gradients)
    for weight, gradient in zip(weights, gradients, strict=True):
        np.testing.assert_allclose(weight.numpy(), np.asarray(gradient), rtol=1e-4, atol=1e-6 * scale,
                                   err_msg=weight.path)


def spread_predictions(model, images):
    """Set the classifier's bias against the features every image shares, so that a fresh
    model's classes differ between images (they would otherwise be one class for all)."""
    features = keras.Model(model.input, model.get_layer("token_pool").output)(images.astype("float32"))
    classifier = model.get_layer("classifier")
    classifier.bias.assign(-np.mean(features, axis=0) @ classifier.kernel.numpy())


def top5_count(labels, probabilities):
    return int(tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, probabilities, 5), tf.int32)))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_steps_in_chunks_compute_the_whole_batch(name):
    # Dropout off, so that the whole batch and the chunks see the same network; a batch
    # of 40 is two full chunks and a short one.
    config = VARIANTS[name].replace(dropout=0.0, attention_dropout=0.0)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    images, labels = batch_of(40, config.num_classes)
    assert 2 * CHUNK_IMAGES < len(images) < 3 * CHUNK_IMAGES
    steps = Steps(model, GradientsAsWeights(), config.num_classes)
    spread_predictions(model, images)

    # A tensor, not an array: Keras computes the loss of a softmax output from its logits.
    probabilities = model(images.astype("float32"), training=False)
    losses = keras.losses.categorical_crossentropy(tf.one_hot(labels, config.num_classes), probabilities)
    loss, top1, top5, predicted = steps.eval_step(images, labels)
    classes = probabilities.numpy().argmax(axis=1)
    assert len(np.unique(classes)) > 1, "predictions all alike would not show the chunks' order"
    np.testing.assert_array_equal(predicted.numpy(), classes)
    assert float(loss) == pytest.approx(float(tf.reduce_sum(losses)), rel=1e-5)
    assert (int(top1), int(top5)) == (int((classes == labels).sum()), top5_count(labels, probabilities))

    seeds = [state.numpy() for state in model.non_trainable_variables]  # the crop and flip to repeat
    probabilities, losses, gradients = whole_batch(model, images, labels, config.num_classes)
    restore(model.non_trainable_variables, seeds)
    loss, top1, top5 = steps.train_step(images, labels)
    assert float(loss) == pytest.approx(float(tf.reduce_sum(losses)), rel=1e-5)
    classes = probabilities.numpy().argmax(axis=1)
    assert (int(top1), int(top5)) == (int((classes == labels).sum()), top5_count(labels, probabilities))
    assert_gradients_close(model.trainable_variables, gradients)


def test_with_dropout_the_chunks_are_the_calls_keras_would_make_one_after_another():
    # Dropout on: the chunked step must draw the masks that calling the model on each chunk
    # in turn draws, and leave the seeds where those calls leave them.
    config = ModelConfig(dropout=0.5, attention_dropout=0.5)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    images, labels = batch_of(40)
    states = model.non_trainable_variables
    start = [state.numpy() for state in states]

    body = keras.Model(model.get_layer("patch_embedding").input, model.output)
    with tf.GradientTape() as tape:
        crops = model.get_layer("preprocessing")(tf.cast(images, tf.float32), training=True)
        chunks = range(0, len(images), CHUNK_IMAGES)
        probabilities = tf.concat([body(crops[at : at + CHUNK_IMAGES], training=True) for at in chunks], axis=0)
        losses = keras.losses.categorical_crossentropy(tf.one_hot(labels, 10), probabilities)
        loss = tf.reduce_mean(losses)
    gradients = tape.gradient(loss, model.trainable_variables)
    after_calls = [state.numpy() for state in states]
    assert any((moved - first)[1] == 2 * len(chunks) for moved, first in zip(after_calls, start)), \
        "the MLP's dropout layer draws twice per call"

    restore(states, start)
    chunked_loss, _, _ = Steps(model, GradientsAsWeights(), config.num_classes).train_step(images, labels)
    for state, expected in zip(states, after_calls):
        np.testing.assert_array_equal(state.numpy(), expected, err_msg=state.path)
    assert float(chunked_loss) == pytest.approx(float(tf.reduce_sum(losses)), rel=1e-5)
    assert_gradients_close(model.trainable_variables, gradients)


def test_a_model_with_state_beyond_dropout_seeds_is_refused():
    # Chunks run statelessly and would drop the updates of such state (a batch norm's statistics).
    from tokenlearner.layers import ImagePreprocessing, PatchEmbedding

    images = keras.Input((32, 32, 3))
    tokens = PatchEmbedding(6, 16, name="patch_embedding")(ImagePreprocessing(52, 48, name="preprocessing")(images))
    pooled = keras.layers.BatchNormalization(name="batch_norm")(keras.layers.GlobalAveragePooling1D()(tokens))
    model = keras.Model(images, keras.layers.Dense(10, activation="softmax")(pooled))
    with pytest.raises(ValueError, match="batch_norm/moving_mean"):
        Steps(model, None, 10)
