import keras
from keras import layers, ops

from tokenlearner.config import INFERENCE_CROPS


@keras.saving.register_keras_serializable(package="tokenlearner")
class ImagePreprocessing(layers.Layer):
    """The keras.io example's preprocessing, inside the model.

    Rescales pixels to [0, 1] and resizes to `resize_size`; in training takes a random
    `crop_size` crop (one offset per batch, as Keras' `RandomCrop` does) and a random
    horizontal flip. At inference it takes a fixed window: `top_left` is what the
    example computes (its `RandomCrop` passes the resized image through and the VALID
    patch convolution only reaches the top-left `crop_size` window), `center` is the
    middle window.

    A clip's frames are stacked along the channels first, so that every frame of a clip
    takes the same crop and the same flip: motion survives augmentation.

    Args:
        resize_size: side of the resized image.
        crop_size: side of the crop the patch embedding sees.
        inference_crop: `"top_left"` or `"center"`.
        frames: 1 for images; T for clips.

    Shape: (B, H, W, 3) pixels in [0, 255] -> (B, crop_size, crop_size, 3); a clip
    (B, T, H, W, 3) -> (B, crop_size, crop_size, T * 3), frame after frame.
    """

    def __init__(self, resize_size, crop_size, inference_crop="top_left", frames=1, **kwargs):
        super().__init__(**kwargs)
        if inference_crop not in INFERENCE_CROPS:
            raise ValueError(f"inference_crop={inference_crop!r}: choose one of {INFERENCE_CROPS}")
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.inference_crop = inference_crop
        self.frames = frames

    def build(self, input_shape):
        self.rescaling = layers.Rescaling(1.0 / 255.0, name="rescaling")
        self.resizing = layers.Resizing(self.resize_size, self.resize_size, name="resizing")
        self.random_crop = layers.RandomCrop(self.crop_size, self.crop_size, name="random_crop")
        self.random_flip = layers.RandomFlip("horizontal", name="random_flip")

    def call(self, images, training=False):
        if self.frames > 1:
            height, width, channels = images.shape[2:]
            images = ops.reshape(ops.transpose(images, (0, 2, 3, 1, 4)), (-1, height, width, self.frames * channels))
        images = self.resizing(self.rescaling(images))
        if training:
            return self.random_flip(self.random_crop(images, training=True), training=True)
        start = 0 if self.inference_crop == "top_left" else (self.resize_size - self.crop_size) // 2
        return images[:, start : start + self.crop_size, start : start + self.crop_size, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.crop_size, self.crop_size, self.frames * input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "inference_crop": self.inference_crop,
            "frames": self.frames,
        }
