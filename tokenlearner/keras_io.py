"""Weights of the keras.io example's model, loaded into ours.

The example saves its weights with `model.save_weights(...)` (a `.weights.h5` file).
Keras 3 keys each layer there by its class name and a counter in the order the
layers appear in the model (`dense`, `dense_1`, ...; the TokenLearner's convolutions
sit in the example's inner `Sequential`, `sequential_1`). The example has no v1.1
TokenLearner and no TokenFuser, so only those configurations can be imported.
"""

from __future__ import annotations

import os

import numpy as np

from tokenlearner.config import ModelConfig


def keras_io_weight_map(config: ModelConfig) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """For each variable of our model (by its path), the example's weights that make it,
    with the shape each has in the example's file. Our fused query/key/value kernel and
    bias come from three of the example's weights; every other variable from one."""
    _check_importable(config)
    counters: dict[str, int] = {}

    def key(class_key: str) -> str:
        index = counters.get(class_key, 0)
        counters[class_key] = index + 1
        return f"layers/{class_key}" + (f"_{index}" if index else "")

    dim, heads, key_dim = config.dim, config.heads, config.key_dim
    mapping: dict[str, list[tuple[str, tuple[int, ...]]]] = {}

    def norm(ours: str) -> None:
        theirs = key("layer_normalization")
        mapping[f"{ours}/gamma"] = [(f"{theirs}/vars/0", (dim,))]
        mapping[f"{ours}/beta"] = [(f"{theirs}/vars/1", (dim,))]

    def dense(ours: str, inputs: int, units: int) -> None:
        theirs = key("dense")
        mapping[f"{ours}/kernel"] = [(f"{theirs}/vars/0", (inputs, units))]
        mapping[f"{ours}/bias"] = [(f"{theirs}/vars/1", (units,))]

    def token_learner() -> None:
        norm("token_learner/norm")
        channels = dim
        for index in range(4):
            theirs = "layers/sequential_1/layers/conv2d" + (f"_{index}" if index else "")
            mapping[f"token_learner/conv_{index}/kernel"] = [
                (f"{theirs}/vars/0", (3, 3, channels, config.num_tokens))
            ]
            channels = config.num_tokens

    patch = key("conv2d")
    mapping["patch_embedding/projection/kernel"] = [
        (f"{patch}/vars/0", (config.patch_size, config.patch_size, 3, dim))
    ]
    mapping["patch_embedding/projection/bias"] = [(f"{patch}/vars/1", (dim,))]
    mapping["patch_embedding/position_embedding"] = [
        ("layers/patch_encoder/position_embedding/vars/0", (config.num_patches, dim))
    ]
    for index in range(config.depth):
        block = f"block_{index}"
        if config.tokenlearner == "v1" and index == config.placement:
            token_learner()
        norm(f"{block}/attention_norm")
        mha = key("multi_head_attention")
        parts = ("query", "key", "value")
        mapping[f"{block}/attention/qkv/kernel"] = [
            (f"{mha}/{part}_dense/vars/0", (dim, heads, key_dim)) for part in parts
        ]
        mapping[f"{block}/attention/qkv/bias"] = [(f"{mha}/{part}_dense/vars/1", (heads, key_dim)) for part in parts]
        mapping[f"{block}/attention/output_projection/kernel"] = [
            (f"{mha}/output_dense/vars/0", (heads, key_dim, dim))
        ]
        mapping[f"{block}/attention/output_projection/bias"] = [(f"{mha}/output_dense/vars/1", (dim,))]
        norm(f"{block}/mlp_norm")
        width = dim
        for position, units in enumerate(config.mlp_units):
            dense(f"{block}/mlp_dense_{position}", width, units)
            width = units
    if config.tokenlearner == "v1" and config.placement == config.depth:
        token_learner()
    norm("final_norm")
    dense("classifier", dim, config.num_classes)
    return mapping


def _check_importable(config: ModelConfig) -> None:
    unsupported = []
    if config.tokenlearner == "v11":
        unsupported.append("tokenlearner=v11")
    if config.fuser:
        unsupported.append("fuser")
    if config.pooling != "mean":
        unsupported.append(f"pooling={config.pooling}")
    if unsupported:
        raise ValueError(
            f"the keras.io example has no {', '.join(unsupported)}: its weights import only into "
            "configs with tokenlearner none or v1, mean pooling and no fuser"
        )


def reference_flags(config: ModelConfig) -> list[str]:
    """The flags of the keras.io reference script (`../shared/reference/keras_io_reference.py`)
    that build the model `config` describes. The script varies only the token count, the
    depth and whether there is a TokenLearner, which it puts after block depth // 2 (our
    placement depth // 2 + 1); any other difference raises `ValueError` naming the fields."""
    learned = config.tokenlearner != "none"
    example = ModelConfig(
        tokenlearner="v1" if learned else "none",
        num_tokens=config.num_tokens,
        depth=config.depth,
        placement=config.depth // 2 + 1 if learned else config.placement,
    )
    differences = [
        f"{name}={value!r}" for name, value in config.to_dict().items() if value != example.to_dict()[name]
    ]
    if differences:
        raise ValueError(
            f"the keras.io reference cannot build this model ({', '.join(differences)}): it varies only "
            "--tokens, --depth and --tokenlearner none, with --placement depth//2+1"
        )
    flags = ["--tokens", str(config.num_tokens), "--layers", str(config.depth)]
    return flags if learned else [*flags, "--no-tl"]


def load_keras_io_weights(path: str | os.PathLike, config: ModelConfig):
    """Our model for `config`, with the weights of the keras.io example's model that
    `path` (its `save_weights` file) holds. A file that is not such a weights file, or
    whose shapes do not match `config`, raises `ValueError` saying which weight and
    which flags to change."""
    import h5py

    from tokenlearner.model import build_model

    mapping = keras_io_weight_map(config)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such weights file")
    try:
        weights_file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a Keras .weights.h5 file ({error})") from None
    with weights_file:
        expected = {weight_path for pairs in mapping.values() for weight_path, _ in pairs}
        present = set()
        weights_file.visititems(lambda name, obj: present.add(name) if isinstance(obj, h5py.Dataset) else None)
        missing = sorted(expected - present)
        extra = sorted(present - expected)
        if missing or extra:
            detail = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
            raise ValueError(
                f"{path} does not hold the keras.io model these flags describe ({detail}; "
                f"{len(missing)} missing, {len(extra)} unexpected): pass the flags the example "
                "was run with (--depth, --tokens, --tokenlearner none, ...) and --placement "
                "depth//2+1 for its TokenLearner"
            )
        sources = {}
        for pairs in mapping.values():
            for weight_path, shape in pairs:
                array = np.asarray(weights_file[weight_path])
                if array.shape != shape:
                    raise ValueError(
                        f"{path}: weight {weight_path} has shape {array.shape}, the flags imply {shape}: "
                        "pass the model flags the example was run with (--tokens, --dim, --heads, ...)"
                    )
                sources[weight_path] = array

    model = build_model(config)
    for variable in model.weights:
        # Q, K and V kernels (dim, heads, key_dim) side by side make our (dim, 3 * heads * key_dim);
        # every other weight only needs flattening to our shape.
        arrays = [sources[weight_path] for weight_path, _ in mapping[variable.path]]
        axis = 1 if len(arrays) > 1 and arrays[0].ndim == 3 else 0
        value = np.concatenate([a.reshape(a.shape[0], -1) if axis else a.reshape(-1) for a in arrays], axis=axis)
        variable.assign(value.reshape(variable.shape))
    return model
