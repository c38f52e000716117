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


def _pdf(pages: list[str]) -> bytes:
    """A minimal, valid PDF with one line of Helvetica text per page."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = f"BT /F1 14 Tf 20 100 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 144] /Contents {len(objects)} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def test_pdf_one_document_per_page(tmp_path):
    (tmp_path / "manual.pdf").write_bytes(_pdf(["Tent setup guide", "Warranty is two years"]))
    docs = load_documents(tmp_path / "manual.pdf")
    assert [(d.id, d.metadata["page"]) for d in docs] == [("manual.pdf#page=1", 1), ("manual.pdf#page=2", 2)]
    assert "Warranty is two years" in docs[1].text
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    with pytest.raises(DocumentLoadError, match="not a readable PDF"):
        load_documents(tmp_path / "broken.pdf")


def test_html_visible_text_only(tmp_path):
    (tmp_path / "p.html").write_text(
        "<html><head><title>Trail Boots</title><style>p{color:red}</style></head><body>"
        "<script>alert('x')</script><h1>Boots</h1><p>Waterproof &amp; light.</p><noscript>enable js</noscript></body></html>",
        encoding="utf-8",
    )
    (doc,) = load_documents(tmp_path / "p.html")
    assert doc.text == "Boots\nWaterproof & light." and doc.metadata["title"] == "Trail Boots"


def test_markdown_headings_are_metadata(tmp_path):
    (tmp_path / "m.md").write_text("# Guide\nintro\n## Returns ##\nthirty days\n", encoding="utf-8")
    (doc,) = load_documents(tmp_path / "m.md")
    assert doc.metadata["title"] == "Guide" and doc.metadata["headings"] == ["Guide", "Returns"]


def test_include_exclude_globs(tmp_path):
    for rel in ("a/keep.md", "a/drop.md", "b/keep.txt", "notes.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("text\nx" if rel.endswith(".csv") else "text", encoding="utf-8")
    ids = [d.id for d in FileLoader(include=["*.md", "*.txt"], exclude=["*drop*"]).load(tmp_path)]
    assert ids == ["a/keep.md", "b/keep.txt"]


def test_symlinks_cannot_escape_the_root(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret", encoding="utf-8")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "ok.txt").write_text("fine", encoding="utf-8")
    (root / "leak.txt").symlink_to(secret)
    (root / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)
    docs = load_documents(root)
    assert [d.id for d in docs] == ["ok.txt"]
    assert all("top secret" not in d.text for d in docs)
