"""What the tests share that is not a fixture (``tests/conftest.py`` holds the fixtures):
``paths`` (the checkout, the reference data), ``tiny`` (the tiny config and flags every training
test uses), ``states`` (how far apart two training states are), ``processes`` (a command stopped
as a terminal or a cluster stops it), test data built for them (``tiny_dataset``), the
docs/cli.md generator as a module (``cli_docs``). The stand-in for the weights' publishers is
the rehearsal's (``isnet_jax.rehearse.weights_server``)."""
