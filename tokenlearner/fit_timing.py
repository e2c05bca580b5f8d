"""Run a Keras training script unchanged and time every batch of every `fit` it calls.

    python -m tokenlearner.fit_timing SCRIPT [SCRIPT ARGS...]

The last line printed is one JSON object: for each `fit`, in order, the seconds from this
command's start to the end of each of its batches (`batch_ends_s`). `bench --reference`
uses it to time the keras.io reference step by step. The reference's own
"steady_s_per_step" divides its second `fit`'s wall time by the steps, and that `fit`
usually returns only at 5.11, 10.23, 20.47 or 40.95 s after it began (10 ms x (2^k - 1):
a wait, as its dataset iterator is torn down, for a poll whose period starts at 10 ms and
doubles), so with `--steps 6` every step time between 0.85 and 1.7 s prints 1.706
(docs/performance.md).
"""

from __future__ import annotations

import json
import runpy
import sys
import time

STARTED = time.perf_counter()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m tokenlearner.fit_timing SCRIPT [SCRIPT ARGS...]", file=sys.stderr)
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

    def timed_fit(model, *args, callbacks=None, **kwargs):
        fits.append([])
        return untimed_fit(model, *args, callbacks=[*(callbacks or []), BatchClock(fits[-1])], **kwargs)

    keras.Model.fit = timed_fit
    script, *script_args = argv
    sys.argv = [script, *script_args]
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_request:
        if isinstance(exit_request.code, str):
            print(exit_request.code, file=sys.stderr)
        status = exit_request.code if isinstance(exit_request.code, int) else int(exit_request.code is not None)
    print(json.dumps({"fits": [{"batch_ends_s": ends} for ends in fits]}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
