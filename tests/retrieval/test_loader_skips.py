"""Loaders, smaller (issue 40, item 7): a CSV's byte-order mark is not data, NUL in a CSV is
refused as in a .txt, and in a folder a file that cannot be read (an empty PDF, a FIFO, an
archive, a .txt.gz, a malformed file) is skipped and reported by name, one line per reason,
without stopping the others, unless strict mode is asked for."""

from __future__ import annotations

import gzip
import io
import logging
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from layered.errors import DocumentLoadError
from layered.retrieval.loaders import FileLoader, load_documents

BOM = b"\xef\xbb\xbf"


def test_a_csv_with_a_utf8_bom_keeps_its_first_column_name_and_ids(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes(BOM + b"id,text,topic\r\nq-1,first answer,care\r\nq-2,second answer,diet\r\n")
    docs = load_documents(p)
    assert [d.id for d in docs] == ["q-1", "q-2"]
    assert docs[0].metadata == {"id": "q-1", "topic": "care"} and not any("\ufeff" in k for k in docs[0].metadata)
    assert [d.id for d in load_documents(p, id_field="id")] == ["q-1", "q-2"]
    # the same mark before JSONL's first line or a text file's first word is not data either
    (tmp_path / "a.jsonl").write_bytes(BOM + b'{"id": "j", "text": "json text"}\n')
    (tmp_path / "a.txt").write_bytes(BOM + b"plain words")
    assert load_documents(tmp_path / "a.jsonl")[0].text == "json text"
    assert load_documents(tmp_path / "a.txt")[0].text == "plain words"


def test_nul_in_a_csv_is_refused_like_nul_in_a_txt(tmp_path):
    csv_file, txt = tmp_path / "nul.csv", tmp_path / "nul.txt"
    csv_file.write_bytes(b"id,text\na,fine\nb,he\x00llo\n")
    txt.write_bytes(b"he\x00llo")
    with pytest.raises(DocumentLoadError, match=r"nul\.csv:3: contains NUL bytes") as info:
        load_documents(csv_file)
    assert "\n" not in str(info.value)
    with pytest.raises(DocumentLoadError, match=r"nul\.txt: contains NUL bytes"):
        load_documents(txt)
    csv_file.write_bytes(b"i\x00d,text\na,fine\n")  # in the header too
    with pytest.raises(DocumentLoadError, match=r"nul\.csv:1: contains NUL bytes"):
        load_documents(csv_file)


def _hostile_folder(root: Path) -> Path:
    root.mkdir()
    (root / "good.txt").write_text("a good document")
    (root / "more.csv").write_bytes(BOM + b"id,text\nc1,a csv row\n")
    (root / "empty.pdf").write_bytes(b"")
    (root / "nul.csv").write_bytes(b"id,text\nn,he\x00llo\n")
    (root / "broken.jsonl").write_text('{"id": "ok", "text": "fine"}\n{not json\n')
    (root / "notes.txt.gz").write_bytes(gzip.compress(b"compressed words"))
    with zipfile.ZipFile(root / "bundle.zip", "w") as z:
        z.writestr("inside.txt", "zipped words")
    with tarfile.open(root / "bundle.tar", "w") as t:
        data = b"tarred words"
        info = tarfile.TarInfo("inside.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    os.mkfifo(root / "pipe.txt")  # opening it would block the run for ever
    return root


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_folder_loads_what_it_can_and_names_every_skipped_file_once_per_reason(tmp_path, caplog):
    root = _hostile_folder(tmp_path / "docs")
    skipped: list[tuple[str, str]] = []
    with caplog.at_level(logging.WARNING, logger="layered.retrieval.loaders"):
        docs = load_documents(root, skipped=skipped)
    assert sorted(d.id for d in docs) == ["c1", "good.txt"]  # broken.jsonl's good first line is not half-indexed
    reasons = dict(skipped)
    assert set(reasons) == {"empty.pdf", "nul.csv", "broken.jsonl", "notes.txt.gz", "bundle.zip", "bundle.tar", "pipe.txt"}
    assert "empty PDF" in reasons["empty.pdf"] and "FIFO" in reasons["pipe.txt"]
    assert reasons["bundle.zip"] == reasons["bundle.tar"] == reasons["notes.txt.gz"] and "unpack" in reasons["bundle.zip"]
    assert "NUL" in reasons["nul.csv"] and "broken.jsonl:2" in reasons["broken.jsonl"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5  # archives together; the FIFO; the empty PDF; one line per file that failed to load
    archives = next(line for line in lines if "unpack" in line)
    assert archives.startswith("skipped 3 files") and all(n in archives for n in ("bundle.tar", "bundle.zip", "notes.txt.gz"))
    assert all("\n" not in line for line in lines)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_strict_mode_stops_at_the_first_bad_file_and_a_named_file_always_raises(tmp_path):
    root = _hostile_folder(tmp_path / "docs")
    with pytest.raises(DocumentLoadError, match=r"broken\.jsonl:2"):  # sorted order: broken.jsonl comes first
        list(FileLoader(strict=True).load(root))
    with pytest.raises(DocumentLoadError, match="not a regular file"):
        load_documents(root / "pipe.txt")  # refused without opening it (which would block)
    assert load_documents(root / "empty.pdf") == []  # an empty PDF holds no pages: nothing to fail on


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_the_index_command_reports_skips_on_stderr_and_strict_fails_in_one_line(tmp_path):
    root = _hostile_folder(tmp_path / "docs")

    def index(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "layered.cli", *options, "index", str(root), "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=600)

    run = index()
    assert run.returncode == 0, run.stderr
    skipped = [line for line in run.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 5 and any("bundle.zip" in line and "notes.txt.gz" in line for line in skipped)
    assert any("pipe.txt" in line for line in skipped) and any("empty.pdf" in line for line in skipped)
    strict = subprocess.run([sys.executable, "-m", "layered.cli", "-q", "index", str(root), "--out", str(tmp_path / "strict"),
                             "--strict"], capture_output=True, text=True, timeout=600)
    assert strict.returncode == 1 and len(strict.stderr.strip().splitlines()) == 1 and "broken.jsonl:2" in strict.stderr
