import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="tokenlearner")
class PatchEmbedding(layers.Layer):
    """Non-overlapping patches projected by a strided convolution, plus a learned
    position embedding (one vector per patch, initialised like Keras' `Embedding`).

    Args:
        patch_size: side of the square patches.
        dim: width of the embedding.

    Shape: (B, H, W, C) -> (B, (H // patch_size) * (W // patch_size), dim).
    """

    def __init__(self, patch_size, dim, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.dim = dim

    def build(self, input_shape):
        self.grid_height = input_shape[1] // self.patch_size
        self.grid_width = input_shape[2] // self.patch_size
        self.projection = layers.Conv2D(
            self.dim, self.patch_size, strides=self.patch_size, padding="valid", name="projection"
        )
        self.projection.build(input_shape)
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=(self.grid_height * self.grid_width, self.dim),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05),
        )

    def call(self, images):
        patches = self.projection(images)  # (B, grid_h, grid_w, dim)
        patches = ops.reshape(patches, (-1, self.grid_height * self.grid_width, self.dim))
        return patches + self.position_embedding

    def compute_output_shape(self, input_shape):
        grid = (input_shape[1] // self.patch_size) * (input_shape[2] // self.patch_size)
        return (input_shape[0], grid, self.dim)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "dim": self.dim}
