"""``atomic.written``: what it writes appears whole at its path, or nothing does."""

from __future__ import annotations

import pytest

from isnet_jax import atomic


def test_a_file_appears_only_when_written_whole(tmp_path):
    target = tmp_path / "weights.npz"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic.written(target) as partial:
        assert partial.parent == tmp_path and partial.name.startswith(".weights.npz.partial-")
        partial.write_bytes(b"half")
        raise KeyboardInterrupt  # Ctrl-C half-way through the write
    assert [p.name for p in tmp_path.iterdir()] == ["weights.npz"]
    assert target.read_bytes() == b"old"
    with atomic.written(target) as partial:
        partial.write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["weights.npz"]
    assert target.read_bytes() == b"new"


def test_a_folder_replaces_the_old_one_only_when_complete(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OSError), atomic.written(target, folder=True) as partial:
        (partial / "model").write_text("half")
        raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["export", "old.txt"]
    with atomic.written(target, folder=True) as partial:
        (partial / "model").write_text("whole")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["export", "model"]


def test_what_appears_has_the_mode_of_a_new_file_not_a_temporary_ones(tmp_path):
    # mkstemp/mkdtemp make 0600/0700 paths: a cache or an export on a shared disk must not be
    # private to whoever wrote it first.
    mask = atomic.umask()
    with atomic.written(tmp_path / "file.bin") as partial:
        partial.write_bytes(b"x")
    with atomic.written(tmp_path / "folder", folder=True) as partial:
        (partial / "inside").write_bytes(b"y")
    assert (tmp_path / "file.bin").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~mask
