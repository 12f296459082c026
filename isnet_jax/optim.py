"""The optimisers: Adam for G and D as the release's, a learning-rate schedule, and the guard
that never applies a non-finite update."""

from __future__ import annotations

import ml_collections
import numpy as np
import optax

from isnet_jax import errors

LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(config: ml_collections.ConfigDict, peak: float) -> optax.Schedule:
    """``config.lr_schedule``: "constant" (the release) or "cosine" decay to 0 over
    ``num_train_steps``; either after a linear warm-up of ``config.warmup_steps`` from 0."""
    if config.lr_schedule not in LR_SCHEDULES:
        raise errors.ConfigError(
            f"config.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got "
            f"{config.lr_schedule!r}"
        )
    warmup = config.warmup_steps
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup, max(config.num_train_steps, warmup + 1))
    if not warmup:
        return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])


def make_optimizers(config: ml_collections.ConfigDict):
    """Adam for G (lr, betas 0 / 0.9) and D (``d_lr_ratio`` x lr), as the release.

    The schedule counts Adam's own steps, so a resumed run continues it and a fine-tuning run
    starts it afresh. ``optax.apply_if_finite`` drops an update whose gradients hold a NaN or
    inf (and counts it); it never gives up and applies one, the loop stops the run instead.
    """
    def adam(lr):
        inner = optax.adam(learning_rate_schedule(config, lr), b1=config.beta1, b2=config.beta2)
        return optax.apply_if_finite(inner, max_consecutive_errors=np.iinfo(np.int32).max)

    return adam(config.learning_rate), adam(config.learning_rate * config.d_lr_ratio)
