"""What the tests share that is not a fixture: test data built for them (``tiny_dataset``), the
docs/cli.md generator as a module (``cli_docs``). The stand-in for the weights' publishers is
the rehearsal's (``isnet_jax.rehearse.weights_server``)."""
