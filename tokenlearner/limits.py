"""What an instance of the explorer allows: everything on a laptop, a bounded share of one
machine in a public demo (`TOKENLEARNER_DEMO`).

The library enforces these where the work starts (`jobs.start_job`, `jobs.stop_job`,
`jobs.start_download`, `images.read_image`, the data folder a job may read); the pages
only hide what a visitor may not use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

DEMO_ENV = "TOKENLEARNER_DEMO"
MAX_RUNS_ENV = "TOKENLEARNER_DEMO_MAX_RUNS"
MAX_RUNS_MB_ENV = "TOKENLEARNER_DEMO_MAX_RUNS_MB"
# Values of TOKENLEARNER_DEMO that leave demo mode off; anything else turns it on, so that
# a typo on a public server errs on the safe side.
FULL_MODE_VALUES = ("", "0", "false")


def demo_mode(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(DEMO_ENV, "").strip().lower() not in FULL_MODE_VALUES


@dataclass(frozen=True)
class Limits:
    demo: bool
    max_epochs: int
    max_train_images: int  # per job; 0: every training image
    max_eval_images: int  # per validation pass and per test pass; 0: all of them
    max_step_macs: int  # MACs of one training step's forward pass (batch x per input); 0: no cap
    max_upload_pixels: int  # pixels an upload may decode to
    keep_runs: int  # runs the runs folder keeps, the newest; 0: all
    keep_runs_bytes: int  # bytes the runs folder may hold; 0: no cap

    @property
    def allow_delete(self) -> bool:
        return not self.demo

    @property
    def allow_download(self) -> bool:
        """Whether visitors may start the CIFAR-10 download (a demo's operator provisions it)."""
        return not self.demo

    @property
    def allow_data_folder_choice(self) -> bool:
        """Whether visitors may point the app at a data folder of their choice."""
        return not self.demo

    @property
    def anyone_may_stop(self) -> bool:
        """Whether any session may stop the running job, or only the one that started it."""
        return not self.demo

    @classmethod
    def current(cls, environ: Mapping[str, str] = os.environ) -> "Limits":
        """The limits `environ` sets; a `ValueError` names a variable with an unusable value."""
        if not demo_mode(environ):
            return cls(demo=False, max_epochs=200, max_train_images=0, max_eval_images=0, max_step_macs=0,
                       max_upload_pixels=16_000_000, keep_runs=0, keep_runs_bytes=0)
        # A step of the largest image model the Train page's controls make (12 blocks, then
        # TokenLearner with 16 tokens: 305 M MACs an image) at its largest batch (512) is 156 G
        # MACs: video models, whose inputs cost several images each, get the same step and so
        # about the same memory (tests/test_demo.py).
        return cls(demo=True, max_epochs=5, max_train_images=2000, max_eval_images=1000, max_step_macs=160_000_000_000,
                   max_upload_pixels=8_000_000, keep_runs=_positive(environ, MAX_RUNS_ENV, 20),
                   keep_runs_bytes=_positive(environ, MAX_RUNS_MB_ENV, 500) * 1_000_000)


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"${name}={text!r}: use a whole number of at least 1 (default {default})")
    return int(text)
