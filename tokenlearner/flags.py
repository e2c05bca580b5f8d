"""Command-line flags for the config dataclasses: one flag per field, named after it
(`num_tokens` is `--tokens`), parsed back into the same configs. The command line builds
its parsers from these, and whoever starts `train` in another process (the app's jobs,
the benchmark) turns configs into flags with `config_flags`."""

from __future__ import annotations

import argparse
import dataclasses

from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.presets import DEFAULT_PRESET, PRESETS, preset


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one line."""


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (defaults: the keras.io example)")
    group.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                       help="configuration to start from; the flags below override it")
    _add_fields(group, ModelConfig)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    _add_fields(parser.add_argument_group("training (defaults: the keras.io recipe)"), TrainConfig)


def flag_name(config_class, name: str) -> str:
    """The command-line flag of a config field: `--` and its name with dashes, unless the
    field names its own (`num_tokens` is `--tokens`)."""
    field = next(f for f in dataclasses.fields(config_class) if f.name == name)
    return field.metadata.get("flag") or "--" + name.replace("_", "-")


def config_flags(*configs) -> list[str]:
    """Command-line flags that set every field of these configs to its value."""
    flags = []
    for config in configs:
        for name, value in config.to_dict().items():
            flag = flag_name(type(config), name)
            if isinstance(value, bool):
                flags.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, list):
                flags += [flag, ",".join(map(str, value))]
            else:
                flags += [flag, str(value)]
    return flags


def _add_fields(group, config_class) -> None:
    for field in dataclasses.fields(config_class):
        flag = flag_name(config_class, field.name)
        help_text = f"{field.metadata['help']} (default {_show(field.default)})"
        if field.type == "bool":
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str, "tuple[int, ...]": _int_list}[field.type]
            group.add_argument(flag, dest=field.name, type=kind, default=None, metavar=field.name.upper(),
                               help=help_text)


def _overrides(args: argparse.Namespace, config_class) -> dict:
    return {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(config_class)
        if getattr(args, field.name) is not None
    }


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The config the flags describe; a `UsageError` with the config's message if invalid."""
    try:
        return preset(args.preset).replace(**_overrides(args, ModelConfig))
    except ValueError as error:
        raise UsageError(str(error)) from None


def train_config(args: argparse.Namespace) -> TrainConfig:
    try:
        return TrainConfig(**_overrides(args, TrainConfig))
    except ValueError as error:
        raise UsageError(str(error)) from None


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
