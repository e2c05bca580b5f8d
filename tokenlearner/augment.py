"""Batch augmentations of our recipe, applied inside the training step before the model's
own (the keras.io resize, one random crop per batch and a random flip). All are off by
default, so the default step is the example's.

- random shift: each image moves by its own random offset of up to `random_shift` pixels
  (reflect padding). The example's crop takes one offset per batch, and only 4 pixels
  of freedom after the resize, which on a few thousand images is little augmentation.
- mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019): each batch is blended with
  itself in reverse order, images and one-hot targets alike, with a Beta(alpha, alpha)
  weight. With both alphas set, each batch takes one of the two at random, as timm and
  DeiT do.

A clip's frames take the same shift and the same CutMix box, so that motion survives.

Randomness comes from a `tf.random.Generator` seeded from the training seed, so a run
repeats on the same machine.
"""

from __future__ import annotations

from tokenlearner.config import TrainConfig


class BatchAugmentation:
    def __init__(self, config: TrainConfig):
        import tensorflow as tf

        self.shift = config.random_shift
        self.mixup_alpha = config.mixup_alpha
        self.cutmix_alpha = config.cutmix_alpha
        # Created eagerly (a tf.function may not create variables on later traces).
        self.generator = tf.random.Generator.from_seed(config.seed + 1)

    @staticmethod
    def wanted(config: TrainConfig) -> bool:
        return bool(config.random_shift or config.mixup_alpha or config.cutmix_alpha)

    def __call__(self, images, targets):
        """images: (B, H, W, C) float pixels, or clips (B, T, H, W, C); targets: (B, K)
        one-hot. Returns both, augmented."""
        import tensorflow as tf

        if len(images.shape) == 5:  # frames side by side along the channels, augmented as one image
            frames, height, width, channels = images.shape[1:]
            stacked = tf.reshape(tf.transpose(images, (0, 2, 3, 1, 4)), (-1, height, width, frames * channels))
            stacked, targets = self(stacked, targets)
            clips = tf.reshape(stacked, (-1, height, width, frames, channels))
            return tf.transpose(clips, (0, 3, 1, 2, 4)), targets
        if self.shift:
            images = self._random_shift(images)
        if self.mixup_alpha and self.cutmix_alpha:
            return tf.cond(self.generator.uniform(()) < 0.5,
                           lambda: self._cutmix(images, targets), lambda: self._mixup(images, targets))
        if self.cutmix_alpha:
            return self._cutmix(images, targets)
        if self.mixup_alpha:
            return self._mixup(images, targets)
        return images, targets

    def _random_shift(self, images):
        import tensorflow as tf

        s = self.shift
        height, width = images.shape[1], images.shape[2]
        padded = tf.pad(images, [[0, 0], [s, s], [s, s], [0, 0]], mode="REFLECT")
        offsets = self.generator.uniform((tf.shape(images)[0], 2), 0, 2 * s + 1, dtype=tf.int32)
        rows = offsets[:, :1] + tf.range(height)
        columns = offsets[:, 1:] + tf.range(width)
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        return tf.gather(images, columns, axis=2, batch_dims=1)

    def _beta(self, alpha):
        import tensorflow as tf

        seeds = self.generator.make_seeds(2)
        first = tf.random.stateless_gamma((), seed=seeds[:, 0], alpha=alpha)
        second = tf.random.stateless_gamma((), seed=seeds[:, 1], alpha=alpha)
        return first / (first + second)

    def _mixup(self, images, targets):
        weight = self._beta(self.mixup_alpha)
        return (weight * images + (1 - weight) * images[::-1],
                weight * targets + (1 - weight) * targets[::-1])

    def _cutmix(self, images, targets):
        import tensorflow as tf

        height, width = images.shape[1], images.shape[2]
        ratio = tf.sqrt(1.0 - self._beta(self.cutmix_alpha))
        cut_height = tf.cast(ratio * height, tf.int32)
        cut_width = tf.cast(ratio * width, tf.int32)
        centre = self.generator.uniform((2,), 0, 1) * (height, width)
        top = tf.clip_by_value(tf.cast(centre[0], tf.int32) - cut_height // 2, 0, height)
        bottom = tf.clip_by_value(tf.cast(centre[0], tf.int32) + cut_height // 2, 0, height)
        left = tf.clip_by_value(tf.cast(centre[1], tf.int32) - cut_width // 2, 0, width)
        right = tf.clip_by_value(tf.cast(centre[1], tf.int32) + cut_width // 2, 0, width)
        inside_rows = (tf.range(height) >= top) & (tf.range(height) < bottom)
        inside_columns = (tf.range(width) >= left) & (tf.range(width) < right)
        box = tf.cast(inside_rows[:, None] & inside_columns[None, :], images.dtype)[None, :, :, None]
        # The targets' weight is the share of pixels actually kept, after clipping.
        weight = 1.0 - tf.reduce_mean(box)
        return (images * (1 - box) + images[::-1] * box,
                weight * targets + (1 - weight) * targets[::-1])
