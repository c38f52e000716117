"""One JSON Lines reader: the document loader, the tuning data reader and the BEIR query reader
refuse the same bad line with the same one-line error, naming the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layered.errors import DocumentLoadError
from layered.evaluation.retrieval import load_beir
from layered.jsonl import parse_record, records
from layered.retrieval.loaders import FileLoader
from layered.tuning.data import load_examples
from tests.helpers import write_beir

GOOD = json.dumps({"_id": "q0", "text": "What is it?", "question": "What is it?", "answer": "A thing."})
BAD_LINES = {
    "{\"_id\": ": "invalid JSON",
    "[1, 2]": "expected a JSON object per line",
    "[" * 100_000 + "]" * 100_000: r"invalid JSON \(nested too deeply\)",
}


def _readers(tmp_path: Path, docs, bad: str) -> dict[str, tuple[Path, object]]:
    """Each reader with a file whose second non-blank line (line 3: a blank line precedes it) is ``bad``."""
    content = f"{GOOD}\n\n{bad}\n"
    plain = tmp_path / "plain.jsonl"
    plain.write_text(content, encoding="utf-8")
    beir = tmp_path / "beir"
    beir.mkdir()
    write_beir(beir, docs, n_docs=8, step=4)
    (beir / "queries_train.jsonl").write_text(content, encoding="utf-8")
    return {
        "loader": (plain, lambda: list(FileLoader().load(plain))),
        "tuning": (plain, lambda: load_examples(plain)),
        "beir": (beir / "queries_train.jsonl", lambda: load_beir(beir, split="train")),
    }


@pytest.mark.parametrize("bad", list(BAD_LINES), ids=["truncated", "not-an-object", "too-deep"])
def test_every_reader_gives_the_same_error(tmp_path, docs, bad):
    for name, (path, read) in _readers(tmp_path, docs, bad).items():
        with pytest.raises(DocumentLoadError, match=rf"{path.name}:3: {BAD_LINES[bad]}") as e:
            read()
        assert "\n" not in str(e.value), name


def test_records_skip_blank_lines_and_keep_line_numbers():
    assert list(records(["{\"a\": 1}", "  ", "{\"b\": 2}"], "f.jsonl")) == [(1, {"a": 1}), (3, {"b": 2})]
    assert parse_record("{\"a\": [1]}", "f.jsonl:1") == {"a": [1]}
