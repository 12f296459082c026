"""The one exception type for mistakes a user can fix: a bad path, a bad config value or flag,
missing or wrong weights, a damaged checkpoint.

Its message says what is wrong and how to fix it. The command-line tools print it as one line,
``error: <message>``, and exit with status 2 (``isnet_jax.cli``). The subclasses also derive
from the built-in type a Python caller would expect.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message names the thing and the fix."""


class ConfigError(UserError, ValueError):
    """A config value, flag or argument that cannot work."""


class MissingFileError(UserError, FileNotFoundError):
    """A path the user gave (or the config names) that does not exist or holds nothing usable."""


class OutputExistsError(UserError, FileExistsError):
    """An output the tool would replace; the fix is ``--overwrite`` or another path."""


class MissingExtraError(UserError, ImportError):
    """A package of an optional extra (``pip install 'isnet-jax[EXTRA]'``) that is not installed."""
