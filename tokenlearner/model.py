"""Build the mini ViT of a `ModelConfig`, and read its learned-token maps back."""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import keras
import numpy as np
from keras import layers

from tokenlearner.config import ModelConfig
from tokenlearner.layers import (
    Dropout,
    ImagePreprocessing,
    LayerNormalization,
    PatchEmbedding,
    TokenFuser,
    TokenLearner,
    TokenLearnerV11,
    TransformerBlock,
)

LAYER_NORM_EPSILON = 1e-6
MAP_LAYERS = (TokenLearner, TokenLearnerV11, TokenFuser)


def load_model(path: str | os.PathLike) -> keras.Model:
    """A model this project saved: a checkpoint or run directory (its best weights) or a
    `.keras` file. A `RunError` says what is missing or damaged."""
    from tokenlearner.runs import RunDirectory, RunError

    path = Path(path)
    if path.is_dir():
        return RunDirectory(path).load_model()[0]
    if not path.is_file():
        raise RunError(f"{path}: no such file or folder")
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # Keras raises many types for a damaged archive
        raise RunError(f"{path} could not be loaded ({type(error).__name__}: {error})") from None


def build_model(config: ModelConfig, name: str = "tokenlearner_vit") -> keras.Model:
    """The classifier a config describes: uint8-range images (B, input_size, input_size, 3),
    or clips (B, frames, input_size, input_size, 3), in; class probabilities
    (B, num_classes) out.

    Layer names: `preprocessing`, `patch_embedding`, `block_{i}`; `token_learner` where one
    TokenLearner sits between blocks `placement - 1` and `placement`; with TokenFuser,
    `token_learner_{i}` and `token_fuser_{i}` around every block i >= placement; then
    `final_norm`, `token_pool`, `classifier`.
    """
    inputs = keras.Input(config.input_shape, name="clips" if config.is_video else "images")
    x = ImagePreprocessing(
        config.resize_size, config.image_size, config.inference_crop, config.frames, name="preprocessing"
    )(inputs)
    x = PatchEmbedding(config.patch_size, config.dim, config.temporal_slices, name="patch_embedding")(x)
    x = Dropout(config.dropout, name="embedding_dropout")(x)
    patches = x  # what a TokenFuser maps its block's tokens back onto
    for stage in config.stages():
        if stage.kind == "token_learner":
            patches = x
            x, _ = _token_learner(config, stage.name)(x, return_maps=True)
        elif stage.kind == "block":
            x = TransformerBlock(config.heads, config.key_dim, config.mlp_units, dropout=config.dropout,
                                 attention_dropout=config.attention_dropout, epsilon=LAYER_NORM_EPSILON,
                                 name=stage.name)(x)
        else:
            fuser = TokenFuser(config.bottleneck_dim, LAYER_NORM_EPSILON, config.temporal_slices, name=stage.name)
            fused, _ = fuser(x, patches, return_maps=True)
            index = stage.name.rsplit("_", 1)[1]
            x = layers.Add(name=f"fuser_residual_{index}")([fused, patches])
    x = LayerNormalization(epsilon=LAYER_NORM_EPSILON, name="final_norm")(x)
    x = layers.GlobalAveragePooling1D(name="token_pool")(x)
    outputs = layers.Dense(config.num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


def _token_learner(config: ModelConfig, name: str) -> keras.layers.Layer:
    if config.tokenlearner == "v1":
        return TokenLearner(config.num_tokens, config.pooling, LAYER_NORM_EPSILON, config.temporal_slices, name=name)
    return TokenLearnerV11(
        config.num_tokens,
        style=config.v11_style,
        groups=config.v11_groups,
        bottleneck_dim=config.bottleneck_dim,
        epsilon=LAYER_NORM_EPSILON,
        temporal_slices=config.temporal_slices,
        name=name,
    )


_MAP_MODELS: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = weakref.WeakKeyDictionary()


def _maps_model(model: keras.Model) -> keras.Model:
    """A model over the same graph and weights whose outputs are the class probabilities
    followed by the maps of every TokenLearner and TokenFuser, in depth order."""
    if model not in _MAP_MODELS:
        sources = [layer for layer in model.layers if isinstance(layer, MAP_LAYERS)]
        outputs = {"probabilities": model.output}
        for layer in sources:
            outputs[layer.name] = layer.output[1]
        _MAP_MODELS[model] = keras.Model(model.input, outputs, name=f"{model.name}_maps")
    return _MAP_MODELS[model]


def predict_with_maps(
    model: keras.Model, images: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class probabilities (B, num_classes) and, for every TokenLearner (and TokenFuser
    gate) in `model`, its maps on the patch grid, (B, S, h, w), keyed by layer name; for
    a video model (B, L, S, h, w), one set of maps per temporal slice (a frame, or a
    tubelet of frames).

    `images` are (B, H, W, 3) pixels in [0, 255], or clips (B, T, H, W, 3), as the model
    takes them; the maps cover the window `ModelConfig.covered_region()` describes.
    """
    images = np.asarray(images, dtype="float32")
    expected = tuple(model.input_shape[1:])
    if images.shape[1:] != expected:
        what = "clips (B, T, H, W, 3)" if len(expected) == 4 else "RGB images (B, H, W, 3)"
        raise ValueError(f"expected a batch of {what} of shape (B, {', '.join(map(str, expected))}), "
                         f"got shape {images.shape}")
    if len(images) == 0:
        raise ValueError("no images given")
    maps_model = _maps_model(model)
    chunks = [
        {name: np.asarray(value) for name, value in maps_model(images[i : i + batch_size], training=False).items()}
        for i in range(0, len(images), batch_size)
    ]
    merged = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
    probabilities = merged.pop("probabilities")
    if len(expected) == 4:  # a clip cut into one slice (a tubelet of all its frames) still has a slice axis
        merged = {name: maps if maps.ndim == 5 else maps[:, None] for name, maps in merged.items()}
    return probabilities, merged


def attention_maps(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The learned-token maps of every TokenLearner (and TokenFuser gate) in `model`,
    (B, S, h, w) each, or (B, L, S, h, w) for a video model of L temporal slices, keyed
    by layer name in depth order; empty without TokenLearner."""
    return predict_with_maps(model, images, batch_size)[1]
