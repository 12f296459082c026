"""The input-size rule every generator shares, apart from the networks: the command lines check
``--size`` with it before (or without) importing JAX."""

# Every generator halves the resolution four times (its deepest branch is at 1/16): inputs are
# H x W with H and W multiples of this, wherever a generator runs (inpainting pads to it, an
# export accepts only such sizes).
MULTIPLE = 16
