"""One writer per saved folder (issue 40, item 6): `layered index` holds a lock on --out from
reading it to saving it; a second writer fails with one line naming the holder or waits
(--wait), a writer killed with kill -9 leaves no stale lock, and no run's documents are lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layered import cli
from layered.artifacts import folder_lock, lock_path, save_folder_atomically
from layered.errors import FolderBusyError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="kill -9 and flock semantics are POSIX")

HOLD = "import sys; from layered.artifacts import folder_lock\nwith folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n"


def _holder(out: Path) -> subprocess.Popen[str]:
    """Another process holding the lock on ``out`` until its stdin closes (or it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _corpus(path: Path, prefix: str, n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "text": f"{prefix} document number {i} about topic {prefix}"}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def _doc_ids(out: Path) -> set[str]:
    from layered.pipeline import Pipeline

    return {c.doc_id for c in Pipeline.load(out).retriever.store.chunks()}


def test_a_second_writer_fails_in_one_line_naming_the_holder_and_kill_9_leaves_no_stale_lock(tmp_path, capsys):
    out, corpus = tmp_path / "index", _corpus(tmp_path / "a.jsonl", "a")
    holder = _holder(out)
    try:
        assert cli.main(["-q", "index", str(corpus), "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "being written by another process" in err and f"pid {holder.pid}," in err
        assert "--wait" in err and not out.exists()
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid},"):  # the library's own saves honour it too
            save_folder_atomically(out, lambda tmp: (tmp / "x").write_text("x"))
        assert not list(tmp_path.glob(".index.*.partial"))
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    assert lock_path(out).exists()  # the dead holder's file is still there...
    assert cli.main(["-q", "index", str(corpus), "--out", str(out)]) == 0  # ...but it locks nothing
    assert _doc_ids(out) == {"a0", "a1", "a2"}
    assert not lock_path(out).exists()  # released and removed by the run that took it over


def test_two_index_runs_on_one_out_both_keep_their_documents(tmp_path):
    out = tmp_path / "index"
    a, b = _corpus(tmp_path / "a.jsonl", "a"), _corpus(tmp_path / "b.jsonl", "b")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    holder = _holder(out)  # both writers start while the folder is busy, so they must contend for it
    runs = [subprocess.Popen([sys.executable, "-m", "layered.cli", "-q", "index", str(c), "--out", str(out), "--wait", "600"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in (a, b)]
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait()
    results = [r.communicate(timeout=600) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [e for _, e in results]
    assert _doc_ids(out) == {"a0", "a1", "a2", "b0", "b1", "b2"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folder, old copy or lock left


def test_the_lock_is_reentrant_in_its_thread_and_waits_for_another_process(tmp_path):
    out = tmp_path / "index"
    with folder_lock(out), folder_lock(out):  # the CLI holds it; Pipeline.save takes it again
        save_folder_atomically(out, lambda tmp: (tmp / "x").write_text("x"))
    holder = _holder(out)
    assert holder.stdin is not None
    with pytest.raises(FolderBusyError, match="after waiting 0.3s"):
        with folder_lock(out, wait=0.3):
            pass
    holder.stdin.close()  # released: a waiter gets it
    with folder_lock(out, wait=60):
        assert (out / "x").read_text() == "x"
    holder.wait()
