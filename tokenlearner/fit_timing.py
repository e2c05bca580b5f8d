"""Run a Keras training script unchanged and time every batch of every `fit` it calls.

    python -m tokenlearner.fit_timing SCRIPT [SCRIPT ARGS...]

The last line printed is one JSON object: for each `fit`, in order, the seconds from this
command's start to the end of each of its batches (`batch_ends_s`). `bench --reference`
uses it to time the keras.io reference step by step, because the reference's own
"steady_s_per_step" (its second `fit`'s wall time over its steps) mostly measures a wait
at the end of that `fit` (docs/performance.md).
"""

from __future__ import annotations

import inspect
import json
import runpy
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


def main(argv: list[str]) -> int:
    if not argv:
        print("error: usage: python -m tokenlearner.fit_timing SCRIPT [SCRIPT ARGS...]", file=sys.stderr)
        return 2
    script, *script_args = argv
    if not Path(script).is_file():
        print(f"error: {script}: no such file", file=sys.stderr)
        return 2
    import keras

    class BatchClock(keras.callbacks.Callback):
        def __init__(self, batch_ends: list[float]):
            super().__init__()
            self.batch_ends = batch_ends

        def on_train_batch_end(self, batch, logs=None):
            self.batch_ends.append(time.perf_counter() - STARTED)

    fits: list[list[float]] = []
    untimed_fit = keras.Model.fit
    signature = inspect.signature(untimed_fit)

    def timed_fit(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        fits.append([])
        call.arguments["callbacks"] = [*(call.arguments.get("callbacks") or []), BatchClock(fits[-1])]
        return untimed_fit(*call.args, **call.kwargs)

    keras.Model.fit = timed_fit
    # As `python SCRIPT` would: its own folder first on the import path, its arguments.
    sys.argv = [script, *script_args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_request:
        if isinstance(exit_request.code, str):
            print(exit_request.code, file=sys.stderr)
        status = exit_request.code if isinstance(exit_request.code, int) else int(exit_request.code is not None)
    finally:
        print(json.dumps({"fits": [{"batch_ends_s": ends} for ends in fits]}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
