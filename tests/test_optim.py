"""The learning-rate schedules against their definitions, and a bad schedule name."""

import numpy as np
import pytest
from helpers.tiny import tiny_config

from isnet_jax import errors, optim


def _at(config, steps):
    schedule = optim.learning_rate_schedule(config, 1e-3)
    return np.array([float(schedule(s)) for s in steps])


def test_constant_warmup_and_cosine_schedules():
    config = tiny_config(num_train_steps=100)
    np.testing.assert_allclose(_at(config, [0, 50, 99]), 1e-3)  # the release: constant

    config.warmup_steps = 10
    np.testing.assert_allclose(_at(config, [0, 5, 10, 99]), [0, 5e-4, 1e-3, 1e-3], rtol=1e-6)

    config.lr_schedule = "cosine"
    # After the warm-up: 0.5 * (1 + cos(pi * t)), t the fraction of the remaining 90 steps.
    expected = [1e-3 * 0.5 * (1 + np.cos(np.pi * (s - 10) / 90)) for s in (10, 55, 100)]
    np.testing.assert_allclose(_at(config, [10, 55, 100]), expected, rtol=1e-5, atol=1e-9)
    assert _at(config, [5])[0] == pytest.approx(5e-4)


def test_an_unknown_schedule_names_the_field_and_the_choices():
    with pytest.raises(errors.ConfigError, match=r"config.lr_schedule must be one of constant, "
                                                   r"cosine, got 'linear'"):
        optim.learning_rate_schedule(tiny_config(lr_schedule="linear"), 1e-3)
