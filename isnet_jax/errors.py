"""The one exception type for mistakes a user can fix: a bad path, a bad config value or flag,
missing or wrong weights, a damaged checkpoint.

Its message says what is wrong and how to fix it. The command-line tools (``main``,
``convert``, ``inpaint``, ``evaluate`` through ``main``) print it as one line,
``error: <message>``, and exit with status 2; any other exception is a bug and keeps its
traceback. The subclasses also derive from the built-in type a Python caller would expect.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class UserError(Exception):
    """A mistake the user can fix; the message names the thing and the fix."""


class ConfigError(UserError, ValueError):
    """A config value, flag or argument that cannot work."""


class MissingFileError(UserError, FileNotFoundError):
    """A path the user gave (or the config names) that does not exist or holds nothing usable."""
