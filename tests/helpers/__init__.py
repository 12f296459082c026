"""What the tests share that is not a fixture: test data built for them (``tiny_dataset``), and
a stand-in for the publishers of the known weight files (``weights_server``)."""
