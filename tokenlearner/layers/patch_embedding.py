import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="tokenlearner")
class PatchEmbedding(layers.Layer):
    """Non-overlapping patches projected by a strided convolution, plus a learned
    position embedding (one vector per patch, initialised like Keras' `Embedding`).

    A clip comes with its frames stacked along the channels (`ImagePreprocessing`) and is
    cut along time into `temporal_slices` slices of equal frames; a patch spans its
    slice's frames (a ViViT tubelet), so the convolution sees their channels side by side.
    The position embedding covers space and time: one vector per patch of every slice.

    Args:
        patch_size: side of the square patches.
        dim: width of the embedding.
        temporal_slices: 1 for images; for clips, frames / tubelet frames.

    Shape: (B, H, W, C) -> (B, temporal_slices * (H // patch_size) * (W // patch_size), dim),
    slice after slice.
    """

    def __init__(self, patch_size, dim, temporal_slices=1, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.dim = dim
        self.temporal_slices = temporal_slices

    def build(self, input_shape):
        self.grid_height = input_shape[1] // self.patch_size
        self.grid_width = input_shape[2] // self.patch_size
        self.projection = layers.Conv2D(
            self.dim, self.patch_size, strides=self.patch_size, padding="valid", name="projection"
        )
        self.projection.build((*input_shape[:3], input_shape[3] // self.temporal_slices))
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=(self.temporal_slices * self.grid_height * self.grid_width, self.dim),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05),
        )

    def call(self, images):
        if self.temporal_slices > 1:
            height, width, channels = images.shape[1:]
            per_slice = channels // self.temporal_slices
            images = ops.reshape(images, (-1, height, width, self.temporal_slices, per_slice))
            images = ops.reshape(ops.transpose(images, (0, 3, 1, 2, 4)), (-1, height, width, per_slice))
        patches = self.projection(images)  # (B * slices, grid_h, grid_w, dim)
        patches = ops.reshape(patches, (-1, self.temporal_slices * self.grid_height * self.grid_width, self.dim))
        return patches + self.position_embedding

    def compute_output_shape(self, input_shape):
        grid = (input_shape[1] // self.patch_size) * (input_shape[2] // self.patch_size)
        return (input_shape[0], self.temporal_slices * grid, self.dim)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "dim": self.dim,
                "temporal_slices": self.temporal_slices}
