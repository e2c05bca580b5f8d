"""What the Train page sends to a job: the preset's recipe with the page's controls applied.
(The job's start, stop and limits: tests/test_demo.py.)"""

import pytest


def test_recipe_controls_keep_the_preset_recipe_valid():
    from tokenlearner.config import TrainConfig
    from tokenlearner.jobs import recipe_beyond_controls, recipe_from_controls

    base = TrainConfig(epochs=120, warmup_epochs=5, label_smoothing=0.1)
    recipe = recipe_from_controls(base, epochs=3, seed=1)
    assert (recipe.epochs, recipe.warmup_epochs, recipe.seed, recipe.label_smoothing) == (3, 2, 1, 0.1)
    assert recipe_beyond_controls(recipe) == {"warmup_epochs": 2, "label_smoothing": 0.1}
    assert recipe_beyond_controls(TrainConfig(epochs=5, seed=2)) == {}
    with pytest.raises(ValueError, match="controls only"):
        recipe_from_controls(base, weight_decay=0.1)
