"""timesclip.atomic: every file a search or a trainer writes for others to read (configs,
checkpoints, final.json, the ASHA snapshot, reports, the feature cache) goes through it."""

from __future__ import annotations

import stat

import pytest

from timesclip import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "final.json"
    atomic.write_text(path, "old\n")
    assert path.read_text() == "old\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the other nodes' users

    with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed while writing")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["final.json"]


def test_two_writers_never_share_a_temporary(tmp_path):
    """Two trials (or a retry and its predecessor) writing one name at once."""
    path = tmp_path / "asha_state.json"
    with atomic.replacing(path) as first, atomic.replacing(path) as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.endswith(atomic.TMP_SUFFIX) and first.name.startswith(".")
        first.write_text("a")
        second.write_text("b")
    assert path.read_text() == "a"  # the outer context exits last and wins
    assert [p.name for p in tmp_path.iterdir()] == ["asha_state.json"]
