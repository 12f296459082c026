"""How far apart two training states are (the sharded, bfloat16 and resume tests)."""

from __future__ import annotations


def step_distance(a: dict, b: dict, learning_rate: float) -> dict[str, float]:
    """How far apart two training states are after the same steps, in well-conditioned terms.

    ``g_grad`` / ``d_grad`` and ``param_outliers`` are ``rehearse.scenarios.state_distance``'s
    (the worst array's ``||a - b|| / ||a||`` over Adam's first moments; the share of parameter
    elements more than ``learning_rate / 100`` apart, since Adam moves an element with a
    near-zero gradient by up to ``2 * lr`` on a rounding-level change). ``spectral``: the worst
    relative distance of the power-iteration vectors. D's loss is a difference of two means that
    nearly cancel from the release's initialisation, so float32 rounding alone moves D's
    gradients by up to about 1e-2 (docs/reference/isnet.md).
    """
    from isnet_jax.rehearse import scenarios

    result = scenarios.state_distance(a, b, learning_rate)
    result["spectral"] = max(scenarios.relative_distance(a[k], b[k])
                             for k in ("g_spectral", "d_spectral"))
    return result
