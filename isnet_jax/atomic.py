"""Write beside, then rename: a file or folder appears whole at its path, or not at all.

    with atomic.written(path) as partial:   # a new, empty file beside ``path``
        np.savez(partial, ...)               # write it whole
    # here renamed onto ``path``; on any exception (Ctrl-C included) removed instead

A reader (another process, the next run) never sees half a file, and an interrupted write
leaves nothing that looks finished: a rename within one folder is atomic on POSIX file systems.
Used for everything written to a local path in one piece (exports, converted weights, ``.npz``
weight files); Orbax writes checkpoints its own way.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def written(target: str | os.PathLike, *, folder: bool = False) -> Iterator[pathlib.Path]:
    """A new path beside ``target`` (an empty file, or with ``folder`` an empty folder, named
    ``.NAME.partial-*``) to write; renamed onto ``target`` when the block ends, replacing what
    was there (a folder's old contents only then), or removed if the block raises."""
    target = pathlib.Path(target)
    prefix = f".{target.name}.partial-"
    if folder:
        partial = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        partial = pathlib.Path(name)
    try:
        yield partial
        # mkstemp/mkdtemp make private paths (0600/0700); what appears at ``target`` gets the
        # mode any new file would (a weights cache on a shared disk serves every user and host).
        _as_if_created(partial)
        if folder and target.is_dir():
            shutil.rmtree(target)
        os.replace(partial, target)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise


def umask() -> int:
    """This process's umask, read without changing it (``os.umask`` would set it, racing
    other threads)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


def _as_if_created(path: pathlib.Path) -> None:
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())
