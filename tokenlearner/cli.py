"""`python -m tokenlearner COMMAND`: the project's command line.

Model flags mirror the `ModelConfig` fields (`--depth`, `--tokens`, `--placement`, ...)
and start from `--preset` (default: the keras.io example). Every error a user can cause
ends in one line on stderr and a non-zero exit, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tokenlearner.benchmark import ComparisonError, benchmark, compare_with_reference
from tokenlearner.config import ModelConfig
from tokenlearner.data import DATA_ENV, DataError
from tokenlearner.datasets import DATA_SETS, DEFAULT_CLIPS, DataChoice
from tokenlearner.flags import UsageError, add_model_flags, add_train_flags, model_config, train_config
from tokenlearner.images import ImageError
from tokenlearner.native import BuildError
from tokenlearner.runs import RunDirectory, RunError
from tokenlearner.search import SCHEDULERS


# What each of these says is meant for the user: main prints it as one line, as a UsageError.
USER_ERRORS = (UsageError, DataError, ImageError, RunError, ComparisonError, BuildError)
REFERENCE_PAIRS = 3
# Keras imports pandas and matplotlib.pyplot whenever they are installed (Streamlit brings
# pandas, and pandas pyarrow), for DataFrame inputs and plotting helpers that no command
# gives it or calls: 0.5-1 s of every command's start (docs/performance.md).
KERAS_OPTIONAL_IMPORTS = ("pandas", "matplotlib")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def import_keras_quietly(one_thread_per_op: bool = False) -> None:
    """Import Keras (and TensorFlow) with stderr closed: TensorFlow's C++ runtime prints
    start-up notices there (oneDNN, CUDA) before any log level applies, and they would
    bury the one-line errors this command line promises. Set TF_CPP_MIN_LOG_LEVEL to
    see TensorFlow's own logs again. `one_thread_per_op` is for the commands that train or
    evaluate with `Steps` (see `steps.use_one_thread_per_op`). Keras loads as if
    `KERAS_OPTIONAL_IMPORTS` were not installed; they stay importable afterwards."""
    if "keras" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        # A None in sys.modules makes an import raise ImportError, which Keras takes as "not installed".
        hidden = [name for name in KERAS_OPTIONAL_IMPORTS if name not in sys.modules]
        try:
            os.dup2(devnull, 2)
            sys.modules.update(dict.fromkeys(hidden))
            import keras  # noqa: F401
        finally:
            for name in hidden:
                del sys.modules[name]
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    if one_thread_per_op:
        from tokenlearner.steps import use_one_thread_per_op

        use_one_thread_per_op()


# flops -----------------------------------------------------------------------------------


def run_flops(args: argparse.Namespace) -> None:
    from tokenlearner.flops import count, without_tokenlearner

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
    unit = "clip " if config.is_video else "image"
    print()
    print(f"parameters                  {report.params:,}")
    print(f"MACs per {unit}              {report.macs:,}")
    print(f"FLOPs per {unit}             {report.flops:,}  (2 x MACs)")
    print(f"keras.io-convention GFLOPs  {report.keras_io_gflops:.5f}  "
          f"(sees {100 * visible:.0f}% of the MACs: attention is invisible to it)")
    if config.tokenlearner != "none":
        every_patch = count(without_tokenlearner(config)).macs
        print(f"without TokenLearner        {every_patch:,} MACs, every block over all "
              f"{config.temporal_slices * config.num_patches} patches ({every_patch / report.macs:.2f} times)")


# import-keras-io -------------------------------------------------------------------------


def run_import_keras_io(args: argparse.Namespace) -> None:
    import_keras_quietly()
    import numpy as np

    from tokenlearner.keras_io import load_keras_io_weights

    config = model_config(args)
    run = RunDirectory(args.out).require_new()
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
    run.create({"model": config.to_dict(), "source": {"keras_io_weights": str(Path(args.weights).resolve())}})
    run.save_model(model)
    run.set_status("finished")
    print(f"wrote {run.path} ({model.count_params():,} parameters)")


def _read_probe(path: str):
    import numpy as np

    try:
        probe = np.load(path, allow_pickle=False)
        return {"images": probe["images"], "outputs": probe["outputs"]}
    except (OSError, ValueError, KeyError) as error:
        raise UsageError(f"{path} is not a probe file with 'images' and 'outputs' arrays ({error})") from None


# train, evaluate, download, bench -----------------------------------------------------------


class TerminalReport:
    """Progress lines overwrite each other on a terminal; everything else gets its own line."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.overwrite = stream.isatty()
        self.pending = False

    def __call__(self, message: str, transient: bool) -> None:
        if transient and self.overwrite:
            self.stream.write("\r" + message.ljust(100))
            self.pending = True
        else:
            if self.pending:
                self.stream.write("\n")
                self.pending = False
            self.stream.write(message + "\n")
        self.stream.flush()


def _load_cifar(data_dir: str | None):
    from tokenlearner.data import find_data_dir, load_cifar10

    return load_cifar10(find_data_dir(data_dir))


def _data_choice(args: argparse.Namespace) -> DataChoice:
    """The `DataChoice` of `--data` and `--clips` (CIFAR-10 where `--data` names none)."""
    try:
        return DataChoice(args.data or "cifar10", args.clips)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _clip_counts(text: str) -> tuple[int, int, int]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} is not three comma-separated clip counts (train,val,test)")
    return counts


def _add_data_flags(parser: argparse.ArgumentParser, default_data: str | None = "cifar10") -> None:
    parser.add_argument("--data", choices=DATA_SETS, default=default_data,
                        help="cifar10 images, or clips of moving shapes (docs/video.md), plain or on CIFAR-10 "
                             "images: a model with --frames takes the clips, an image model their first frames"
                             + ("" if default_data else "; default: what the run was trained on"))
    parser.add_argument("--clips", type=_clip_counts, default=DEFAULT_CLIPS, metavar="TRAIN,VAL,TEST",
                        help="clips of moving shapes to draw for each part (default "
                             + ",".join(map(str, DEFAULT_CLIPS)) + ")")
    parser.add_argument("--data-dir",
                        help=f"a cifar-10-batches-py folder (default: ${DATA_ENV}, then the Keras cache)")


def run_train(args: argparse.Namespace) -> None:
    from tokenlearner.datasets import check_data_fits
    from tokenlearner.training import Startup

    startup = Startup()
    config, recipe, choice = model_config(args), train_config(args), _data_choice(args)
    RunDirectory(args.out).require_new()
    choice.check_fits(config)  # before drawing thousands of clips
    data = choice.load(config, recipe.seed, args.data_dir)
    check_data_fits(config, data)  # before TensorFlow's seconds of importing
    startup.lap("reading the data")
    import_keras_quietly(one_thread_per_op=True)
    from tokenlearner.training import train

    startup.lap("importing TensorFlow and Keras")
    summary = train(config, recipe, data, args.out, report=TerminalReport(), startup=startup)
    if summary["stopped"]:
        saved = (f"the weights of epoch {summary['best_epoch']}, the best so far, are in {args.out}"
                 if summary["best_epoch"] else "no epoch was evaluated, so no weights were saved")
        print(f"stopped after {summary['epochs_completed']} complete epoch(s); {saved}")
    else:
        print(f"wrote {args.out}: test top-1 {summary['test_top1']:.4f}, top-5 {summary['test_top5']:.4f}")


def _open_run(path: str, one_thread_per_op: bool = False):
    run = RunDirectory(path)
    run.require_existing()  # before TensorFlow loads
    import_keras_quietly(one_thread_per_op)
    return run.load_model()


def run_evaluate(args: argparse.Namespace) -> None:
    record = RunDirectory(args.run).require_existing().record().get("data", {})
    model, config = _open_run(args.run, one_thread_per_op=True)
    if args.data is None and record.get("kind") == "moving_shapes":
        from tokenlearner.moving_shapes import from_record

        data = from_record(record, parts=("test",))  # the run's own test clips
    else:
        data = _data_choice(args).load(config, record.get("seed", 0), args.data_dir, parts=("test",))
    from tokenlearner.datasets import check_data_fits, test_set
    from tokenlearner.steps import Steps

    check_data_fits(config, data)
    test_images, test_labels = test_set(data)
    result = Steps(model, None, config.num_classes).evaluate(test_images, test_labels)
    result = {"test_top1": result["top1"], "test_top5": result["top5"], "test_loss": result["loss"],
              "test_images": len(test_labels), "class_names": list(data.class_names),
              "test_confusion": result["confusion"]}
    if args.json:
        print(json.dumps(result))
        return
    source = "clips of moving shapes" if config.is_video else f"images of {data.directory}"
    print(f"{args.run} on {len(test_labels)} test {source}:")
    print(f"top-1 {result['test_top1']:.4f}  top-5 {result['test_top5']:.4f}  loss {result['test_loss']:.4f}")


def run_download(args: argparse.Namespace) -> None:
    import_keras_quietly()
    from tokenlearner.data import download

    print(f"CIFAR-10 is in {download(args.cache_dir)}")


def run_bench(args: argparse.Namespace) -> None:
    started = time.time()
    config = model_config(args)
    if args.reference:
        _compare_with_reference(args, config)
        return
    if args.pairs or args.data_dir:
        raise UsageError("--pairs and --data-dir go with --reference (bench alone trains on random images)")
    import_keras_quietly(one_thread_per_op=True)
    result = benchmark(config, args.batch_size, args.steps, started)
    if args.json:
        print(json.dumps(result))
        return
    print(f"training: {result['train_images_per_s']:.1f} images/s ({result['train_s_per_step']:.3f} s per step "
          f"of {args.batch_size}, median of {args.steps})")
    print(f"inference: {result['infer_ms_per_image']:.3f} ms per image (batches of {args.batch_size})")
    print(f"first training step done {result['first_step_s']:.1f} s after the command started")
    print(f"the model ran {result['kernels']}")


def _compare_with_reference(args: argparse.Namespace, config: ModelConfig) -> None:
    script = Path(args.reference)
    if not script.is_file():
        raise UsageError(f"--reference {script}: no such file (the keras.io reference script, "
                         "../shared/reference/keras_io_reference.py)")

    def show(pair: dict) -> None:
        print(f"reference {pair['reference_s_per_step']:.3f} s per step (it prints "
              f"{pair['reference_printed_s_per_step']:.3f}), ours {pair['ours_s_per_step']:.3f}: "
              f"{pair['speedup']:.2f}x; first step {pair['reference_first_step_s']:.1f} s and "
              f"{pair['ours_first_step_s']:.1f} s after start", flush=True)

    pairs = args.pairs or REFERENCE_PAIRS
    result = compare_with_reference(script, args.data_dir, config, batch_size=args.batch_size, steps=args.steps,
                                     pairs=pairs, report=lambda pair: None if args.json else show(pair))
    if args.json:
        print(json.dumps(result))
        return
    print(f"ours is {result['median_speedup']:.2f}x the reference's training throughput "
          f"(median over pairs: {pairs}; batch {args.batch_size})")


def run_predict(args: argparse.Namespace) -> None:
    import numpy as np

    from tokenlearner.images import read_clip, read_image, to_model_input

    config = RunDirectory(args.run).require_existing().model_config()
    if config.is_video:
        picture = read_clip(args.image, config.frames, config.input_size)
    else:
        picture = to_model_input(read_image(args.image), config.input_size)
    model, config = _open_run(args.run)
    from tokenlearner.model import predict_with_maps

    names = RunDirectory(args.run).class_names()
    probabilities, maps = predict_with_maps(model, picture[None])
    ranking = np.argsort(probabilities[0])[::-1][:5]
    top5 = [{"class": names[i], "probability": float(probabilities[0][i])} for i in ranking]
    if args.overlay:
        from tokenlearner.files import atomic_path
        from tokenlearner.overlay import clip_sheet, overlay_grid, stack_rows

        if not maps:
            raise UsageError(f"{args.run} has no TokenLearner, so there are no token maps to overlay")
        if config.is_video:  # a row per temporal slice, over its first frame
            rows = [clip_sheet(picture, layer_maps[0], config.tubelet_frames, config.covered_region(), scale=8)
                    for layer_maps in maps.values()]
        else:
            rows = [overlay_grid(picture, layer_maps[0], config.covered_region()) for layer_maps in maps.values()]
        sheet = stack_rows(rows)
        try:
            with atomic_path(args.overlay) as temporary:
                sheet.save(temporary, format="PNG")
        except OSError as error:
            raise UsageError(f"--overlay {args.overlay} cannot be written ({error.strerror}): choose another path") \
                from None
    if args.json:
        print(json.dumps({"top5": top5, "maps": {name: list(value.shape[1:]) for name, value in maps.items()}}))
        return
    for entry in top5:
        print(f"{entry['class']:<{max(12, *map(len, names))}} {100 * entry['probability']:5.1f}%")
    if args.overlay:
        slices = f", one row per temporal slice ({config.temporal_slices})" if config.is_video else ""
        print(f"wrote {args.overlay}: the image, then each of its {config.num_tokens} token maps{slices}"
              + (f", for each TokenLearner/TokenFuser layer ({', '.join(maps)})" if len(maps) > 1 else ""))


def run_search(args: argparse.Namespace) -> None:
    from tokenlearner.experiment import grid_progress, pending, write_plan
    from tokenlearner.search import plot_front, read_space, search_table, write_search_results

    if args.samples < 1:
        raise UsageError(f"--samples {args.samples}: draw at least 1 config")
    try:
        space = read_space(args.grid)
        runs = space.samples(args.samples)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not args.table_only:
        terminal = TerminalReport()
        say = lambda message: terminal(message, False)  # noqa: E731
        todo = pending(runs, args.out, say)
        write_plan(runs, args.out, args.grid, args.engine, search=space.plan(args.samples))
        from tokenlearner.distributed import RayUnavailable, run_search_on_ray

        try:
            if not run_search_on_ray(todo, space.epochs, space.grace_epochs, space.reduction_factor, args.data_dir,
                                     args.cpus_per_run or 1, args.address, say):
                return
        except RayUnavailable as error:
            raise UsageError(str(error)) from None
    rows = search_table(args.out, grid_progress(args.out))
    csv_path, front_path = write_search_results(rows, args.out)
    print(front_path.read_text(), end="")
    print(f"wrote {csv_path} and {front_path}")
    try:
        print(f"wrote {plot_front(rows, Path(args.out) / 'front.png', f'the front of {Path(args.grid).stem}')}")
    except RuntimeError as error:
        print(f"no front.png: {error}")


def run_experiment(args: argparse.Namespace) -> None:
    from tokenlearner.experiment import (pending, plot_accuracy_vs_macs, read_grid, results, run_grid, write_plan,
                                         write_results)

    if args.engine != "ray" and (args.address or args.cpus_per_run or args.search):
        raise UsageError("--address, --cpus-per-run and --search go with --engine ray")
    if args.cpus_per_run is not None and args.cpus_per_run < 1:
        raise UsageError(f"--cpus-per-run {args.cpus_per_run}: a run needs at least 1 CPU")
    if (args.samples is None) != (args.search is None):
        raise UsageError("--search and --samples go together: --search asha --samples N")
    if args.search:
        return run_search(args)
    try:
        runs = read_grid(args.grid)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not args.table_only:
        terminal = TerminalReport()
        say = lambda message: terminal(message, False)  # noqa: E731
        todo = pending(runs, args.out, say)  # refuses an --out another experiment is training, before the plan
        write_plan(runs, args.out, args.grid, args.engine)
        if args.engine == "ray":
            from tokenlearner.distributed import RayUnavailable, run_grid_on_ray

            try:
                if not run_grid_on_ray(todo, args.data_dir, args.cpus_per_run or 1, args.address, say):
                    return
            except RayUnavailable as error:
                raise UsageError(str(error)) from None
        else:
            if any(run.data.name != "moving-shapes" for run, _, _ in todo):
                from tokenlearner.data import find_data_dir

                find_data_dir(args.data_dir)  # a missing folder is reported before TensorFlow loads
            import_keras_quietly(one_thread_per_op=True)
            import keras

            from tokenlearner.training import train

            loaded = {}  # the last run's data, which the next run shares where its key is the same

            def train_one(run, directory, label):
                keras.backend.clear_session()
                key = run.data.key(run.model, run.seed)
                if key not in loaded:
                    loaded.clear()
                    loaded[key] = run.data.load(run.model, run.seed, args.data_dir)
                terminal_for_run = lambda message, transient: terminal(f"{label}  {message}", transient)  # noqa: E731
                return train(run.model, run.train, loaded[key], directory, report=terminal_for_run)["stopped"]

            if not run_grid(todo, train_one, say):
                return
    rows = results(runs, args.out)
    csv_path, markdown_path = write_results(rows, args.out)
    print(markdown_path.read_text(), end="")
    print(f"wrote {csv_path} and {markdown_path}")
    try:
        figure = plot_accuracy_vs_macs({f"ours, {Path(args.grid).stem}": rows}, Path(args.out) / "results.png",
                                       f"test top-1 against MACs: {Path(args.grid).stem}")
        print(f"wrote {figure}")
    except RuntimeError as error:
        print(f"no results.png: {error}")


def run_ship(args: argparse.Namespace) -> None:
    from tokenlearner.card import check_shippable, ship

    from tokenlearner.moving_shapes import from_record

    record = check_shippable(args.run, Path(args.into) / args.name).record().get("data", {})
    import_keras_quietly(one_thread_per_op=True)
    clips = record.get("kind") == "moving_shapes"  # drawn again: the test clips it was tested on
    destination = ship(args.run, Path(args.into) / args.name,
                       (lambda: from_record(record, parts=("test",))) if clips else (lambda: _load_cifar(args.data_dir)))
    print(f"wrote {destination} ({sum(p.stat().st_size for p in destination.rglob('*')) / 2**20:.1f} MB)")


def run_build_kernels(args: argparse.Namespace) -> None:
    import_keras_quietly()
    from tokenlearner import native

    print(f"built {native.build()}")
    print(f"the model runs {native.describe()}")


def run_provision(args: argparse.Namespace) -> None:
    import_keras_quietly()
    from tokenlearner.hosting import provision

    folder = provision(args.data_dir, fetch=args.download)
    print(f"ready: point TOKENLEARNER_DATA_DIR at {folder} (where it is not found by itself), "
          "set TOKENLEARNER_DEMO=1 and start python -m tokenlearner serve")


def run_serve(args: argparse.Namespace) -> None:
    from tokenlearner.hosting import serve

    serve(args.streamlit_args)


def run_rehearse(args: argparse.Namespace) -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        raise UsageError("the rehearsal drives Chromium with Playwright: pip install -r requirements-dev.txt") from None
    if not Path(args.chromium).exists():
        raise UsageError(f"--chromium {args.chromium}: no such browser (Debian: apt-get install chromium)")
    from tokenlearner.data import find_data_dir
    from tokenlearner.rehearsal import rehearse, summary_lines

    sample = find_data_dir(args.data_dir)
    result = rehearse(sample, args.chromium, args.sessions, args.seconds, args.train_images, args.test_images,
                      args.work, report=lambda message: None if args.json else print(message, flush=True))
    if args.json:
        print(json.dumps(result))
        return
    print("\n".join(summary_lines(result)))


def run_bench_app(args: argparse.Namespace) -> None:
    import_keras_quietly()
    from tokenlearner.app_benchmark import measure, overlay_ms

    runs = [Path(path).resolve() for path in args.runs]
    if len({run.parent for run in runs}) != 1:
        raise UsageError("--runs must name run directories in one folder (the app's runs folder)")
    data = _load_cifar(args.data_dir)
    print(f"token maps of 8 images, model loaded: {overlay_ms(runs, data.test_images[:8]):.0f} ms "
          "(forward pass and drawing every map)")
    result = measure(args.chromium, runs, str(data.directory))
    print(f"streamlit run -> home page usable: {result['home_usable_s']:.1f} s")
    print(f"server memory: {result['server_mb_idle']:.0f} MB at start, "
          f"{result['server_mb_two_models']:.0f} MB with {len(runs[:2])} models loaded")


# entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m tokenlearner", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    flops = commands.add_parser("flops", help="parameters, MACs and keras.io-convention GFLOPs, per layer")
    add_model_flags(flops)
    flops.add_argument("--json", action="store_true", help="print one JSON object")
    flops.set_defaults(handler=run_flops)

    importer = commands.add_parser(
        "import-keras-io", help="turn weights saved by the keras.io example into a checkpoint directory"
    )
    importer.add_argument("weights", help="the example's .weights.h5 file (its model.save_weights)")
    importer.add_argument("--out", required=True, help="checkpoint directory to create")
    importer.add_argument("--probe", help="the reference's --probe file: check our outputs against it")
    importer.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed output difference")
    add_model_flags(importer)
    importer.set_defaults(handler=run_import_keras_io)

    trainer = commands.add_parser("train", help="train a model and write its run directory")
    trainer.add_argument("--out", required=True, help="run directory to create")
    _add_data_flags(trainer)
    add_model_flags(trainer)
    add_train_flags(trainer)
    trainer.set_defaults(handler=run_train)

    evaluator = commands.add_parser("evaluate", help="test top-1/top-5 of a run directory or checkpoint")
    evaluator.add_argument("run", help="run directory or shipped checkpoint")
    _add_data_flags(evaluator, default_data=None)
    evaluator.add_argument("--json", action="store_true", help="print one JSON object, with the confusion matrix")
    evaluator.set_defaults(handler=run_evaluate)

    downloader = commands.add_parser("download", help="download CIFAR-10 into the Keras cache (about 170 MB)")
    downloader.add_argument("--cache-dir", help="instead of $KERAS_HOME or ~/.keras")
    downloader.set_defaults(handler=run_download)

    predictor = commands.add_parser("predict", help="top-5 classes of a PNG/JPEG (or a clip), and optionally its "
                                                    "token maps")
    predictor.add_argument("run", help="run directory or shipped checkpoint")
    predictor.add_argument("--image", required=True,
                           help="a PNG or JPEG file (centre-cropped, resized to the model's input); for a video model "
                                "an animated GIF or a folder of PNG/JPEG frames, of which the model's frames are "
                                "taken evenly spaced")
    predictor.add_argument("--overlay", help="write the image with every learned token's map overlaid, as PNG")
    predictor.add_argument("--json", action="store_true", help="print one JSON object")
    predictor.set_defaults(handler=run_predict)

    experiment = commands.add_parser("experiment", help="run a grid of configs x seeds (resumable) and tabulate it")
    experiment.add_argument("grid", help="a grid JSON file, or the name of a built-in grid (keras_io_tables)")
    experiment.add_argument("--out", required=True, help="folder for the runs and the results table")
    experiment.add_argument("--data-dir", help="a cifar-10-batches-py folder")
    experiment.add_argument("--table-only", action="store_true",
                            help="train nothing: tabulate the runs finished so far")
    experiment.add_argument("--engine", choices=("process", "ray"), default="process",
                            help="process: one run after another here (the default, needs nothing more); "
                                 "ray: every run a Ray task (pip install -r requirements-ray.txt; docs/distributed.md)")
    experiment.add_argument("--address", help="with --engine ray: an existing Ray cluster (host:port); "
                                              "default: a Ray started for this command on this machine")
    experiment.add_argument("--cpus-per-run", type=int,
                            help="with --engine ray: CPUs each run gets and sizes its threads to (default 1)")
    experiment.add_argument("--search", choices=SCHEDULERS,
                            help="with --engine ray: GRID is a search space (keras_io_search): draw --samples configs "
                                 "from it and let Tune's ASHA end poor runs early; writes the Pareto front of "
                                 "validation top-1 against MACs")
    experiment.add_argument("--samples", type=int, help="with --search: how many configs to draw")
    experiment.set_defaults(handler=run_experiment)

    shipper = commands.add_parser("ship", help="copy a finished run into checkpoints/ with a model card")
    shipper.add_argument("run", help="a finished run directory")
    shipper.add_argument("--name", required=True, help="the checkpoint's folder name")
    shipper.add_argument("--into", default="checkpoints", help="where checkpoints live (default: checkpoints)")
    shipper.add_argument("--data-dir", help="a cifar-10-batches-py folder, for the picture of the maps")
    shipper.set_defaults(handler=run_ship)

    kernels = commands.add_parser("build-kernels", help="compile the native kernels into the cache now (a public "
                                  "demo never compiles them inside a request)")
    kernels.set_defaults(handler=run_build_kernels)

    provisioner = commands.add_parser("provision", help="set up a public instance: build the kernels, check or "
                                      "download CIFAR-10, check the checkpoints load")
    source = provisioner.add_mutually_exclusive_group()
    source.add_argument("--download", action="store_true", help="download CIFAR-10 into the Keras cache (170 MB)")
    source.add_argument("--data-dir", help="a cifar-10-batches-py folder already in place")
    provisioner.set_defaults(handler=run_provision)

    server = commands.add_parser("serve", help="streamlit run app.py as a public host runs it: in a demo, TensorFlow "
                                 "and the first model are loaded while the server starts")
    server.set_defaults(handler=run_serve)  # its other flags go to streamlit run (--server.port 8080 ...)

    bench_app = commands.add_parser("bench-app", help="app start-up time, overlay time and memory (needs Chromium)")
    bench_app.add_argument("--runs", nargs=2, required=True, help="two run directories in one folder")
    bench_app.add_argument("--data-dir", help="a cifar-10-batches-py folder")
    bench_app.add_argument("--chromium", default="/usr/bin/chromium")
    bench_app.set_defaults(handler=run_bench_app)

    rehearsal = commands.add_parser("rehearse", help="the public demo under several visitors at once, as a host "
                                    "runs it (needs Chromium and the development requirements)")
    rehearsal.add_argument("--sessions", type=_positive_int, default=8, help="visitors at once (default 8)")
    rehearsal.add_argument("--seconds", type=_positive_int, default=60, help="how long they visit (default 60)")
    rehearsal.add_argument("--data-dir", help="the CIFAR-10 sample the full-size folder is made from")
    rehearsal.add_argument("--train-images", type=_positive_int, default=50_000,
                           help="training images of the folder the demo serves (default: the full set's 50,000)")
    rehearsal.add_argument("--test-images", type=_positive_int, default=10_000, help="its test images (10,000)")
    rehearsal.add_argument("--work", help="where the folder, the uploads and the runs go (default: a temp folder)")
    rehearsal.add_argument("--chromium", default="/usr/bin/chromium")
    rehearsal.add_argument("--json", action="store_true", help="print one JSON object")
    rehearsal.set_defaults(handler=run_rehearse)

    bench = commands.add_parser("bench", help="training images/s and inference ms/image, after warm-up")
    bench.add_argument("--batch-size", type=_positive_int, default=256)
    bench.add_argument("--steps", type=_positive_int, default=6, help="timed training steps")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--reference", metavar="SCRIPT",
                       help="also time the keras.io reference script (keras_io_reference.py), alternating "
                            "with ours in new processes, and print the speed-up per pair")
    bench.add_argument("--pairs", type=_positive_int,
                       help=f"reference/ours pairs with --reference (default {REFERENCE_PAIRS})")
    bench.add_argument("--data-dir", help="a cifar-10-batches-py folder for the reference (with --reference)")
    add_model_flags(bench)
    bench.set_defaults(handler=run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, others = parser.parse_known_args(argv)
    if args.command == "serve":
        args.streamlit_args = others
    elif others:
        parser.error(f"unrecognized arguments: {' '.join(others)}")
    try:
        args.handler(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
