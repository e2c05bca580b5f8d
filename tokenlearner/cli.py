"""`python -m tokenlearner COMMAND`: the project's command line.

Model flags mirror the `ModelConfig` fields (`--depth`, `--tokens`, `--placement`, ...)
and start from `--preset` (default: the keras.io example). Every error a user can cause
ends in one line on stderr and a non-zero exit, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from tokenlearner.config import ModelConfig
from tokenlearner.presets import PRESETS, preset


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (defaults: the keras.io example)")
    group.add_argument("--preset", default="keras-io-4-tokens", choices=list(PRESETS),
                       help="configuration to start from; the flags below override it")
    for field in dataclasses.fields(ModelConfig):
        flag = field.metadata["flag"] or "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata['help']} (default {_show(field.default)})"
        if field.type == "bool":
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str, "tuple[int, ...]": _int_list}[field.type]
            group.add_argument(flag, dest=field.name, type=kind, default=None, metavar=field.name.upper(),
                               help=help_text)


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The config the flags describe; a `UsageError` with the config's message if invalid."""
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(ModelConfig)
        if getattr(args, field.name) is not None
    }
    try:
        return preset(args.preset).replace(**overrides)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def import_keras_quietly() -> None:
    """Import Keras (and TensorFlow) with stderr closed: TensorFlow's C++ runtime prints
    start-up notices there (oneDNN, CUDA) before any log level applies, and they would
    bury the one-line errors this command line promises. Set TF_CPP_MIN_LOG_LEVEL to
    see TensorFlow's own logs again."""
    if "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# flops -----------------------------------------------------------------------------------


def run_flops(args: argparse.Namespace) -> None:
    from tokenlearner.flops import count

    config = model_config(args)
    report = count(config)
    if args.json:
        print(json.dumps({"config": config.to_dict(), **report.to_dict()}, indent=2))
        return
    name_width = max(len(layer.name) for layer in report.layers)
    print(f"{'layer':<{name_width}}  {'category':<21}  {'MACs':>12}  {'share':>6}  {'keras.io float ops':>18}")
    for layer in report.layers:
        share = 100 * layer.macs / report.macs
        print(f"{layer.name:<{name_width}}  {layer.category:<21}  {layer.macs:>12,}  {share:>5.1f}%  "
              f"{layer.keras_io_flops:>18,}")
    visible = report.keras_io_gflops * 1e9 / report.macs
    print()
    print(f"parameters                  {report.params:,}")
    print(f"MACs per image              {report.macs:,}")
    print(f"FLOPs per image             {report.flops:,}  (2 x MACs)")
    print(f"keras.io-convention GFLOPs  {report.keras_io_gflops:.5f}  "
          f"(sees {100 * visible:.0f}% of the MACs: attention is invisible to it)")


# import-keras-io -------------------------------------------------------------------------


def run_import_keras_io(args: argparse.Namespace) -> None:
    import_keras_quietly()
    import numpy as np

    from tokenlearner.checkpoint import save_checkpoint
    from tokenlearner.keras_io import load_keras_io_weights

    config = model_config(args)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} already exists and is not an empty directory: choose a new one")
    probe = _read_probe(args.probe) if args.probe else None
    try:
        model = load_keras_io_weights(args.weights, config)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if probe is not None:
        ours = np.asarray(model(probe["images"].astype("float32"), training=False))
        difference = float(np.abs(ours - probe["outputs"]).max())
        print(f"largest difference from the example's outputs on {len(ours)} probe images: {difference:.2e}")
        if difference > args.tolerance:
            raise UsageError(f"outputs differ by {difference:.2e} > {args.tolerance:g}: the flags do not "
                             "describe the model that wrote these weights; nothing was written")
    save_checkpoint(out, model, config, source={"keras_io_weights": str(Path(args.weights).resolve())})
    print(f"wrote {out} ({model.count_params():,} parameters)")


def _read_probe(path: str):
    import numpy as np

    try:
        probe = np.load(path, allow_pickle=False)
        return {"images": probe["images"], "outputs": probe["outputs"]}
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(f"{path} is not a probe file with 'images' and 'outputs' arrays ({error})") from None


# entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m tokenlearner", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    flops = commands.add_parser("flops", help="parameters, MACs and keras.io-convention GFLOPs, per layer")
    add_model_flags(flops)
    flops.add_argument("--json", action="store_true", help="print one JSON object")
    flops.set_defaults(run=run_flops)

    importer = commands.add_parser(
        "import-keras-io", help="turn weights saved by the keras.io example into a checkpoint directory"
    )
    importer.add_argument("weights", help="the example's .weights.h5 file (its model.save_weights)")
    importer.add_argument("--out", required=True, help="checkpoint directory to create")
    importer.add_argument("--probe", help="the reference's --probe file: check our outputs against it")
    importer.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed output difference")
    add_model_flags(importer)
    importer.set_defaults(run=run_import_keras_io)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
