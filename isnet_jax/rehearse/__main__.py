"""``python -m isnet_jax.rehearse``: the command line of ``isnet_jax.rehearse.scenarios``."""

import sys

from isnet_jax.rehearse import scenarios

if __name__ == "__main__":
    sys.exit(scenarios.main())
