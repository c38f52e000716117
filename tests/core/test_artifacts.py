import json
import os

import pytest

from layered.artifacts import MANIFEST, atomic_write_bytes, save_folder_atomically, verify_manifest
from layered.errors import ArtifactError, IntegrityError


def _write(files):
    def write(folder):
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
    return write


def test_manifest_lists_every_file_and_verifies(tmp_path):
    out = save_folder_atomically(tmp_path / "a", _write({"x.json": b"{}", "sub/y.bin": b"\x00\x01"}))
    manifest = verify_manifest(out)
    assert sorted(manifest["files"]) == ["sub/y.bin", "x.json"]


@pytest.mark.parametrize("attack", ["bitflip", "truncate", "delete", "extra"])
def test_tampering_is_refused(tmp_path, attack):
    out = save_folder_atomically(tmp_path / "a", _write({"data.bin": bytes(range(256)) * 4}))
    target = out / "data.bin"
    if attack == "bitflip":
        raw = bytearray(target.read_bytes())
        raw[100] ^= 1
        target.write_bytes(bytes(raw))
    elif attack == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    elif attack == "delete":
        target.unlink()
    else:
        (out / "evil.pkl").write_bytes(b"cos\nsystem\n")
    with pytest.raises(IntegrityError):
        verify_manifest(out)


def test_missing_manifest_means_incomplete(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(ArtifactError, match="incomplete"):
        verify_manifest(tmp_path / "half")


def test_failed_write_leaves_the_old_folder_untouched(tmp_path):
    out = save_folder_atomically(tmp_path / "a", _write({"v.txt": b"old"}))

    def boom(folder):
        (folder / "v.txt").write_bytes(b"new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        save_folder_atomically(out, boom)
    verify_manifest(out)
    assert (out / "v.txt").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temp folders left behind


def test_interrupted_swap_recovers_the_old_folder(tmp_path):
    out = save_folder_atomically(tmp_path / "a", _write({"v.txt": b"old"}))
    os.replace(out, tmp_path / ".a.1234.old")  # as if killed between the two renames
    verify_manifest(out)
    assert (out / "v.txt").read_bytes() == b"old"


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "f.json"
    atomic_write_bytes(p, b'{"a": 1}')
    atomic_write_bytes(p, b'{"a": 2}')
    assert json.loads(p.read_text()) == {"a": 2}
    assert [q.name for q in tmp_path.iterdir()] == ["f.json"]


def test_manifest_is_json_not_pickle(tmp_path):
    out = save_folder_atomically(tmp_path / "a", _write({"x": b"1"}))
    assert json.loads((out / MANIFEST).read_text())["files"]["x"]


def test_a_folder_this_library_did_not_save_is_never_replaced(tmp_path):
    mine = tmp_path / "Documents"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "thesis.txt").write_bytes(b"years of work")
    with pytest.raises(ArtifactError, match="did not save"):
        save_folder_atomically(mine, _write({"v.txt": b"new"}))
    assert (mine / "notes" / "thesis.txt").read_bytes() == b"years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Documents"]  # no temp folder left either
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "new"):  # an empty or missing folder is fine
        verify_manifest(save_folder_atomically(target, _write({"v.txt": b"new"})))
    saved = save_folder_atomically(tmp_path / "empty", _write({"v.txt": b"newer"}))  # and so is a saved one
    assert (saved / "v.txt").read_bytes() == b"newer"
