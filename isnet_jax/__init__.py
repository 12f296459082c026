"""ISNet image inpainting in JAX / Flax NNX."""


def __getattr__(name):  # lazy: keeps `import isnet_jax` light
    if name == "Inpainter":
        from isnet_jax.inpainter import Inpainter

        return Inpainter
    raise AttributeError(f"module 'isnet_jax' has no attribute {name!r}")
