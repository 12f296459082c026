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
