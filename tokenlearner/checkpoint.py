"""Checkpoint directories: `config.json` (the model config under "model", plus whatever
the writer records about where the weights came from) and `model.keras`.

Training runs and the shipped checkpoints use this same layout, so one loader serves
both. Files are written atomically, the model last, so a directory whose `model.keras`
exists is complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tokenlearner.config import ModelConfig
from tokenlearner.files import atomic_path, read_json, write_json

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"


def save_checkpoint(directory: str | os.PathLike, model, config: ModelConfig, **record: Any) -> Path:
    """Write `model` and its config (and any JSON-serialisable `record` entries) to `directory`."""
    directory = Path(directory)
    write_json(directory / CONFIG_FILE, {"model": config.to_dict(), **record})
    with atomic_path(directory / MODEL_FILE) as temporary:
        model.save(temporary)
    return directory


def read_config(directory: str | os.PathLike) -> ModelConfig:
    """The model config of a checkpoint directory, validated."""
    path = Path(directory) / CONFIG_FILE
    record = read_json(path)
    if not isinstance(record, dict) or "model" not in record:
        raise ValueError(f"{path} has no \"model\" entry: it is not a tokenlearner checkpoint config")
    try:
        return ModelConfig.from_dict(record["model"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def load_checkpoint(directory: str | os.PathLike):
    """(model, config) of a checkpoint directory; `ValueError` says what is missing or broken."""
    import keras

    import tokenlearner.layers  # noqa: F401  (registers the layers for deserialisation)

    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    config = read_config(directory)
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise ValueError(f"{directory} has no {MODEL_FILE}: the run has not saved a model yet")
    try:
        model = keras.saving.load_model(model_path)
    except Exception as error:  # Keras raises many types for a damaged archive
        raise ValueError(f"{model_path} could not be loaded ({type(error).__name__}: {error})") from None
    return model, config
