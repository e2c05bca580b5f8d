"""The step engine: one model's compiled training and evaluation steps.

A batch goes through the model's preprocessing whole (one random crop per batch, as in
the keras.io example), then through the rest of the model in chunks of `CHUNK_IMAGES`,
as many at once as there are cores, each op on one thread (`use_one_thread_per_op`); the
training step sums the chunks' gradients. The maths is the whole batch's, summed in
another order: nothing in the model mixes images, and the dropout seeds pass from chunk
to chunk as they would from call to call, so every chunk draws its own masks. This
measured faster on the CPU than oneDNN splitting every op over the cores
(docs/performance.md). Where TensorFlow sees a GPU the batch goes through whole, in one
chunk, since a GPU needs large ops to be busy.
"""

from __future__ import annotations

import os

import numpy as np

from tokenlearner import native
from tokenlearner.augment import BatchAugmentation
from tokenlearner.config import TrainConfig

EVAL_BATCH = 500
# Images per chunk of a step: the fastest of 8 to 32 on 2 cores (docs/performance.md).
CHUNK_IMAGES = 16


def use_one_thread_per_op() -> None:
    """Run each TensorFlow op on one thread, for processes that train or evaluate with
    `Steps`: its chunks then keep every core busy, one chunk each.
    In a process where TensorFlow already runs (a test, a program that set it up itself)
    its threads cannot change any more, and stay as they are."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(_cores())
    except RuntimeError:
        pass


# The cores this process may use, where something else hands them out: the Ray engine
# (tokenlearner/distributed.py) sets it to a run's CPU share, since a Ray task still sees
# every core of its machine in its affinity, and more threads than cores slow everyone.
CORES_VARIABLE = "TOKENLEARNER_CPUS"


def _cores() -> int:
    share = os.environ.get(CORES_VARIABLE, "")
    if share.isdigit() and int(share) > 0:
        return int(share)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Steps:
    """`train_step(images, labels)` and `eval_step(images, labels)` of one model, compiled
    once each for any batch size (`optimizer` may be None when only `evaluate` is used).
    `recipe` brings label smoothing and the batch augmentations.

    train_step returns the batch's summed loss and its top-1 and top-5 counts, and updates
    the weights and the dropout seeds; eval_step returns the same sums and the predicted
    classes, and changes nothing."""

    def __init__(self, model, optimizer, num_classes: int, recipe: TrainConfig | None = None):
        import keras
        import tensorflow as tf

        self.model, self.optimizer, self.num_classes = model, optimizer, num_classes
        self.recipe = recipe or TrainConfig()
        if optimizer is not None:
            # Slots made inside the first trace make tf.function trace the whole step a
            # second time, seconds more before the first step (docs/performance.md).
            optimizer.build(model.trainable_variables)
        self.preprocessing = model.get_layer("preprocessing")
        self.body = keras.Model(model.get_layer("patch_embedding").input, model.output)
        self.weights, self.seed_states = self.body.trainable_variables, self.body.non_trainable_variables
        unexpected = [state.path for state in self.seed_states if not state.path.endswith("seed_generator_state")]
        if unexpected:
            # Chunks run statelessly: any other state would not be updated.
            raise ValueError(f"the model has non-trainable state other than dropout seeds: {unexpected}")
        self.augment = BatchAugmentation(self.recipe) if BatchAugmentation.wanted(self.recipe) else None
        self.loss_function = keras.losses.CategoricalCrossentropy(label_smoothing=self.recipe.label_smoothing,
                                                                  reduction=None)
        self.concurrent_chunks = _cores()
        self.chunk_images = None if native.visible_gpus() else CHUNK_IMAGES  # None: the whole batch
        # One signature with an open batch size: the last, smaller batch does not retrace.
        # No AutoGraph: nothing here branches or loops on a tensor in Python (the chunks'
        # loop is a tf.while_loop), and converting the code took 0.4-0.6 s of the tracing.
        signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.uint8), tf.TensorSpec((None,), tf.int32)]
        self.train_step = tf.function(self._train_step, input_signature=signature, autograph=False)
        self.eval_step = tf.function(self._eval_step, input_signature=signature, autograph=False)

    def _outcomes(self, labels, probabilities, targets):
        """Per-image losses, and the batch's top-1 and top-5 counts (against the unmixed labels)."""
        import tensorflow as tf

        losses = self.loss_function(targets, probabilities)
        top1 = tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int32), labels)
        top5 = tf.math.in_top_k(labels, probabilities, k=min(5, self.num_classes))
        return losses, tf.reduce_sum(tf.cast(top1, tf.int32)), tf.reduce_sum(tf.cast(top5, tf.int32))

    def _over_chunks(self, images, chunk_step, carried):
        """Fold `chunk_step(index, chunk, carried) -> carried` over the chunks of `images`
        (`chunk` a slice), up to one chunk per core at once; what is carried at the end."""
        import tensorflow as tf

        size = self.chunk_images or tf.maximum(tf.shape(images)[0], 1)
        chunks = (tf.shape(images)[0] + size - 1) // size

        def step(index, carried):
            chunk = slice(index * size, (index + 1) * size)
            return index + 1, chunk_step(index, chunk, carried)

        _, carried = tf.while_loop(lambda index, _: index < chunks, step, (tf.constant(0), carried),
                                   parallel_iterations=self.concurrent_chunks)
        return carried

    def _train_step(self, images, labels):
        import tensorflow as tf

        images, targets = tf.cast(images, tf.float32), tf.one_hot(labels, self.num_classes)
        if self.augment is not None:
            images, targets = self.augment(images, targets)
        images = self.preprocessing(images, training=True)
        batch = tf.cast(tf.shape(labels)[0], tf.float32)
        values = [tf.convert_to_tensor(weight.value) for weight in self.weights]

        def chunk_step(index, chunk, carried):
            seeds, totals = carried
            with tf.GradientTape() as tape:
                tape.watch(values)
                probabilities, seeds = self.body.stateless_call(values, seeds, images[chunk], training=True)
                losses, top1, top5 = self._outcomes(labels[chunk], probabilities, targets[chunk])
                loss = tf.reduce_sum(losses) / batch  # this chunk's share of the batch mean
            gradients = tape.gradient(loss, values, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return seeds, _added(totals, [*gradients, tf.reduce_sum(losses), top1, top5])

        seeds = [tf.convert_to_tensor(state.value) for state in self.seed_states]
        seeds, totals = self._over_chunks(images, chunk_step,
                                          (seeds, [tf.zeros_like(value) for value in values] + _zero_counts()))
        for state, seed in zip(self.seed_states, seeds, strict=True):
            state.assign(seed)
        self.optimizer.apply_gradients(zip(totals[: len(values)], self.weights, strict=True))
        return tuple(totals[len(values) :])

    def _eval_step(self, images, labels):
        import tensorflow as tf

        images = self.preprocessing(tf.cast(images, tf.float32), training=False)
        targets = tf.one_hot(labels, self.num_classes)
        values = [tf.convert_to_tensor(weight.value) for weight in self.weights]
        seeds = [tf.convert_to_tensor(state.value) for state in self.seed_states]  # no dropout: left as they are

        def chunk_step(index, chunk, carried):
            predicted, totals = carried
            probabilities, _ = self.body.stateless_call(values, seeds, images[chunk], training=False)
            losses, top1, top5 = self._outcomes(labels[chunk], probabilities, targets[chunk])
            predicted = predicted.write(index, tf.argmax(probabilities, axis=-1, output_type=tf.int32))
            return predicted, _added(totals, [tf.reduce_sum(losses), top1, top5])

        predicted = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False,
                                   element_shape=tf.TensorShape([None]))
        predicted, totals = self._over_chunks(images, chunk_step, (predicted, _zero_counts()))
        return (*totals, predicted.concat())

    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> dict:
        """Loss, top-1 and top-5 accuracy and the confusion matrix (rows: true class)."""
        totals = np.zeros(3)
        confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        for start in range(0, len(images), EVAL_BATCH):
            batch_labels = labels[start : start + EVAL_BATCH]
            loss, top1, top5, predicted = self.eval_step(images[start : start + EVAL_BATCH], batch_labels)
            totals += (float(loss), int(top1), int(top5))
            np.add.at(confusion, (batch_labels, predicted.numpy()), 1)
        loss, top1, top5 = (float(value) for value in totals / len(images))
        return {"loss": loss, "top1": top1, "top5": top5, "confusion": confusion.tolist()}


def _added(totals: list, parts: list) -> list:
    return [total + part for total, part in zip(totals, parts, strict=True)]


def _zero_counts() -> list:
    """Summed loss, top-1 and top-5 counts, before the first chunk."""
    import tensorflow as tf

    return [tf.constant(0.0), tf.constant(0), tf.constant(0)]
