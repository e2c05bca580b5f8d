import os
import stat

import pytest

from tokenlearner.files import atomic_path, write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask-022", "umask-027", "umask-077", "umask-002"])
def test_a_written_file_gets_the_mode_the_umask_of_the_moment_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_text(tmp_path / "config.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_temporary_files_are_hidden_beside_the_target_with_its_suffix(tmp_path):
    with atomic_path(tmp_path / "maps" / "epoch_003.npz") as temporary:
        assert temporary.parent == tmp_path / "maps" and temporary.exists()
        assert temporary.name.startswith(".epoch_003.") and temporary.suffix == ".npz"
        temporary.write_bytes(b"x")
    assert (tmp_path / "maps" / "epoch_003.npz").read_bytes() == b"x"
