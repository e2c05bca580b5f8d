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
    for batch_size in (4, 3):
        images = rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, config.num_classes, batch_size, dtype=np.int32)
        steps.train_step(images, labels)
    assert steps.train_step.experimental_get_tracing_count() == 1
    assert int(steps.optimizer.iterations) == 2


def whole_batch(model, images, labels, num_classes):
    """The example's step on the whole batch at once: the summed loss and the gradients
    of its mean."""
    with tf.GradientTape() as tape:
        probabilities = model(tf.cast(images, tf.float32), training=True)
        losses = keras.losses.categorical_crossentropy(tf.one_hot(labels, num_classes), probabilities)
        loss = tf.reduce_mean(losses)
    return float(tf.reduce_sum(losses)), tape.gradient(loss, model.trainable_variables)


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
    assert len(images) > 2 * CHUNK_IMAGES

    seeds = [state.numpy() for state in model.non_trainable_variables]  # the crop and flip to repeat
    loss, gradients = whole_batch(model, images, labels, config.num_classes)
    for state, value in zip(model.non_trainable_variables, seeds):
        state.assign(value)
    before = [weight.numpy() for weight in model.trainable_variables]
    steps = Steps(model, keras.optimizers.SGD(learning_rate=1.0), config.num_classes)
    chunked_loss, _, _ = steps.train_step(images, labels)
    assert float(chunked_loss) == pytest.approx(loss, rel=1e-5)
    # Some gradients are zero in exact arithmetic (TokenFuser's mixer bias, which a
    # normalisation cancels): what they hold is rounding, on the scale of the largest one.
    scale = max(float(np.abs(gradient).max()) for gradient in gradients)
    for weight, start, gradient in zip(model.trainable_variables, before, gradients, strict=True):
        np.testing.assert_allclose(start - weight.numpy(), gradient.numpy(), rtol=1e-4, atol=1e-6 * scale,
                                   err_msg=weight.path)

    # A tensor, not an array: Keras computes the loss of a softmax output from its logits.
    probabilities = model(images.astype("float32"), training=False)
    losses = keras.losses.categorical_crossentropy(tf.one_hot(labels, config.num_classes), probabilities)
    loss, top1, _, predicted = steps.eval_step(images, labels)
    assert float(loss) == pytest.approx(float(tf.reduce_sum(losses)), rel=1e-5)
    classes = probabilities.numpy().argmax(axis=1)
    np.testing.assert_array_equal(predicted.numpy(), classes)
    assert int(top1) == int((classes == labels).sum())


def test_every_chunk_draws_its_own_dropout_masks():
    # Identical plain grey images: with masks shared between chunks, a batch of two chunks
    # would lose exactly twice what its first chunk alone loses.
    config = ModelConfig(dropout=0.5, attention_dropout=0.5)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    steps = Steps(model, keras.optimizers.SGD(learning_rate=0.0), config.num_classes)
    images = np.full((2 * CHUNK_IMAGES, 32, 32, 3), 128, dtype=np.uint8)
    labels = np.zeros(2 * CHUNK_IMAGES, dtype=np.int32)
    seeds = [state.numpy() for state in model.non_trainable_variables]
    two_chunks, _, _ = steps.train_step(images, labels)
    for state, value in zip(model.non_trainable_variables, seeds):
        state.assign(value)
    one_chunk, _, _ = steps.train_step(images[:CHUNK_IMAGES], labels[:CHUNK_IMAGES])
    assert float(two_chunks) != pytest.approx(2 * float(one_chunk), rel=1e-6)
    dropout_seeds = [(state, value) for state, value in zip(model.non_trainable_variables, seeds)
                     if not state.path.startswith("preprocessing/")]
    assert dropout_seeds
    for state, value in dropout_seeds:  # one chunk: every dropout seed counter moves on by one
        assert list(state.numpy() - value) == [0, 1], state.path
