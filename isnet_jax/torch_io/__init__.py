"""PyTorch's files without PyTorch: the ``.pth`` format read and written (``pth``), and PyTorch
state dicts mapped onto NNX modules (``torch_weights``). ``python -m isnet_jax.convert`` drives
both for the release's checkpoints."""
