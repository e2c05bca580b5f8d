"""The compiled training and evaluation steps, in process."""

import keras
import numpy as np
import pytest

from tokenlearner.config import ModelConfig, TrainConfig
from tokenlearner.model import build_model
from tokenlearner.training import Steps, make_optimizer


@pytest.mark.parametrize("recipe", [TrainConfig(), TrainConfig(random_shift=2, mixup_alpha=0.8, cutmix_alpha=1.0)],
                         ids=["keras-io", "augmented"])
def test_the_training_step_is_traced_once_for_every_batch_size(recipe):
    # A second trace is seconds more wait before the first step (see docs/performance.md).
    keras.utils.set_random_seed(0)
    config = ModelConfig(depth=1, placement=1)
    model = build_model(config)
    steps = Steps(model, make_optimizer(recipe, 1), config.num_classes, recipe)
    rng = np.random.default_rng(0)
    for batch_size in (4, 3):
        images = rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, config.num_classes, batch_size, dtype=np.int32)
        steps.train_step(images, labels)
    assert steps.train_step.experimental_get_tracing_count() == 1
    assert int(steps.optimizer.iterations) == 2
