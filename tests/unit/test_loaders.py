import json

import pytest

from layered.errors import DocumentLoadError, SourceNotFoundError
from layered.retrieval.loaders import FileLoader, load_documents


def test_jsonl_question_answer_records(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(
        json.dumps({"id": "a1", "question": "Q?", "answer": "A.", "url": "http://x", "qtype": "info"}) + "\n\n"
        + json.dumps({"question": "Q2?", "answer": "B."}) + "\n",
        encoding="utf-8",
    )
    docs = load_documents(p)
    assert [d.id for d in docs] == ["a1", "qa.jsonl:3"]
    assert docs[0].text == "Q?\n\nA." and docs[0].source == "http://x"
    assert docs[0].metadata == {"id": "a1", "url": "http://x", "qtype": "info"}
    assert docs[1].source == "qa.jsonl:3"


def test_csv_with_explicit_fields(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("key,body,lang\nk1,hello world,en\nk2,bonjour,fr\n", encoding="utf-8")
    docs = list(FileLoader(text_fields=["body"], id_field="key").load(p))
    assert [(d.id, d.text, d.metadata["lang"]) for d in docs] == [("k1", "hello world", "en"), ("k2", "bonjour", "fr")]


def test_folder_of_text_and_markdown_is_sorted_and_stable(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("# Two\ntext", encoding="utf-8")
    (tmp_path / "one.txt").write_text("one", encoding="utf-8")
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    ids = [d.id for d in load_documents(tmp_path)]
    assert ids == ["b/two.md", "one.txt"] == [d.id for d in load_documents(tmp_path)]


def test_missing_path(tmp_path):
    with pytest.raises(SourceNotFoundError, match="no such file"):
        load_documents(tmp_path / "nope.jsonl")


def test_non_utf8_file_is_one_clear_line(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DocumentLoadError) as e:
        load_documents(p)
    assert "not valid utf-8 (byte 3)" in str(e.value) and "\n" not in str(e.value)


def test_malformed_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DocumentLoadError, match=r"bad.jsonl:2: invalid JSON"):
        load_documents(p)


def test_record_without_a_text_field(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"title": "t", "n": 1}\n', encoding="utf-8")
    with pytest.raises(DocumentLoadError, match="pass text_fields"):
        load_documents(p)
    with pytest.raises(DocumentLoadError, match="no field 'body'"):
        load_documents(p, text_fields=["body"])
