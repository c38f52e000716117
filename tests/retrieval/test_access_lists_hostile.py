"""Malformed access lists never publish a document (issue 39, item 1).

A typo in a permission (``["user:alice", 7]``, ``{"user": "alice"}``, ``[["user:alice"]]``,
``null``, ``""``...) used to be dropped by the loader, which made the document public. Now it is
one line naming the file and line, on every path that sets access: JSONL, CSV, Markdown front
matter, ``Document(metadata=...)``, ``add_documents`` and the stores (FAISS, Milvus Lite).
A document *without* an access field stays public, as documented; ``[]`` is valid (no user
may see it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layered import cli
from layered.errors import DocumentLoadError, InputError
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.filters import User, with_access
from layered.retrieval.loaders import load_documents
from layered.retrieval.stores.faiss_store import FaissStore
from layered.types import Chunk, Document

MEMO = "restricted HR memo: the code word is heliotrope"
MALFORMED = [["user:alice", 7], {"user": "alice"}, [["user:alice"]], None, "", "user:alice", 7, True, [""],
             ["user:"], ["usr:alice"], ["user:alice "], ["alice"], [None], ["*", {"x": 1}], ["user:a\u2028b"]]


def _retriever() -> DenseRetriever:
    return DenseRetriever(embedder=HashingEmbedder(64), chunker=TokenChunker(size=40, overlap=4))


def _seen_by(retriever: DenseRetriever, user: User) -> list[str]:
    return sorted(h.chunk.doc_id for h in retriever.retrieve("code word memo", k=10, filters=with_access(None, user)))


@pytest.mark.parametrize("access", MALFORMED, ids=repr)
def test_a_malformed_access_list_in_jsonl_is_one_line_naming_file_and_line(tmp_path, access):
    corpus = tmp_path / "hr.jsonl"
    corpus.write_text(json.dumps({"id": "ok", "text": "public note", "access": ["*"]}) + "\n"
                      + json.dumps({"id": "memo", "text": MEMO, "access": access}) + "\n")
    with pytest.raises(DocumentLoadError) as info:
        load_documents(corpus)
    message = str(info.value)
    assert "\n" not in message and f"{corpus}:2:" in message and "access" in message


@pytest.mark.parametrize("access", [["user:alice", 7], {"user": "alice"}, [["user:alice"]], None], ids=repr)
def test_the_index_command_refuses_the_file_and_serves_the_memo_to_no_one(tmp_path, capsys, access):
    corpus = tmp_path / "hr.jsonl"
    corpus.write_text(json.dumps({"id": "memo", "text": MEMO, "access": access}) + "\n")
    out = tmp_path / "index"
    assert cli.main(["-q", "index", str(corpus), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hr.jsonl:1:" in err and "access" in err
    assert not out.exists()


def test_a_missing_access_field_is_public_and_a_valid_one_restricts(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "pub", "text": "memo code word public"}) + "\n"
                      + json.dumps({"id": "memo", "text": MEMO, "access": ["user:alice", "group:hr"]}) + "\n")
    dense = _retriever()
    dense.add_documents(load_documents(corpus))
    assert _seen_by(dense, User("bob")) == ["pub"]
    assert _seen_by(dense, User("alice")) == ["memo", "pub"]
    assert _seen_by(dense, User("carol", ("hr",))) == ["memo", "pub"]


def test_csv_access_cells(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text('id,text,access\nm1,memo code word,user:alice; group:hr\nm2,memo code word two,"[""user:alice""]"\n'
                    "p,memo code word public,*\n")
    dense = _retriever()
    dense.add_documents(load_documents(good))
    assert _seen_by(dense, User("bob")) == ["p"]
    assert _seen_by(dense, User("alice")) == ["m1", "m2", "p"]
    for cell in ("", "7", '"[""user:alice"", 7]"', '"{""user"": ""alice""}"', '"[[""user:alice""]]"', "null", "[not json"):
        bad = tmp_path / "bad.csv"
        bad.write_text(f"id,text,access\nm,{MEMO},{cell}\n")
        with pytest.raises(DocumentLoadError) as info:
            load_documents(bad)
        assert "\n" not in str(info.value) and f"{bad}:2:" in str(info.value), cell


def test_markdown_front_matter_sets_access_and_a_malformed_one_is_refused(tmp_path):
    (tmp_path / "memo.md").write_text("---\ntitle: HR memo\naccess: [user:alice, 'group:hr']\n---\n# Memo\n\n" + MEMO + "\n")
    (tmp_path / "list.md").write_text("---\naccess:\n  - user:alice\n---\nmemo code word list\n")
    (tmp_path / "pub.md").write_text("# Public\n\nmemo code word public\n")
    docs = {d.id: d for d in load_documents(tmp_path)}
    assert docs["memo.md"].metadata["access"] == ["user:alice", "group:hr"] and docs["memo.md"].metadata["title"] == "HR memo"
    assert docs["memo.md"].text.startswith("# Memo") and "access" not in docs["memo.md"].text
    assert docs["list.md"].metadata["access"] == ["user:alice"]
    dense = _retriever()
    dense.add_documents(docs.values())
    assert _seen_by(dense, User("bob")) == ["pub.md"]
    for front in ("access:", "access: null", "access: user:alice", "access: [user:alice, 7x]",
                  "access: {user: alice}", "title: x\n  access: [user:alice]", "access: [user:alice"):
        bad = tmp_path / "bad" / "memo.md"
        bad.parent.mkdir(exist_ok=True)
        bad.write_text(f"---\n{front}\n---\n{MEMO}\n")
        with pytest.raises(DocumentLoadError) as info:
            load_documents(bad)
        assert "\n" not in str(info.value) and f"{bad}:" in str(info.value) and "access" in str(info.value), front


@pytest.mark.parametrize("access", MALFORMED, ids=repr)
def test_documents_refuse_a_malformed_access_list(access):
    with pytest.raises(InputError, match="access"):
        Document(id="memo", text=MEMO, metadata={"access": access})


def test_add_documents_checks_metadata_changed_after_construction():
    meta = {"access": ["user:alice"]}
    doc = Document(id="memo", text=MEMO, metadata=meta)
    meta["access"] = None  # a mutable mapping edited later
    dense = _retriever()
    with pytest.raises(InputError, match="null"):
        dense.add_documents([doc])
    assert len(dense) == 0


def _stores(tmp_path: Path):
    from layered.connectors.milvus import MilvusStore

    yield FaissStore(8)
    milvus = MilvusStore(8, uri=str(tmp_path / "m.db"), collection="acl")
    yield milvus
    milvus.close()


@pytest.mark.parametrize("access", [["user:alice", 7], {"user": "alice"}, [["user:alice"]], None, ""], ids=repr)
def test_stores_refuse_chunks_with_a_malformed_access_list(tmp_path, access):
    import numpy as np

    for store in _stores(tmp_path):
        chunk = Chunk(id="memo#0", doc_id="memo", text=MEMO, metadata={"access": access})
        with pytest.raises(InputError, match="access"):
            store.add([chunk], np.ones((1, 8), dtype=np.float32))
        assert len(store) == 0, type(store).__name__


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
    | st.sampled_from(["*", "user:alice", "user:bob", "group:hr", "user:", "group: hr", "bob"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(access=json_values)
def test_any_json_access_value_is_a_valid_list_or_one_line_error_never_public(tmp_path, access):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "memo", "text": MEMO, "access": access}) + "\n")
    try:
        docs = load_documents(corpus)
    except DocumentLoadError as e:
        assert "\n" not in str(e) and f"{corpus}:1:" in str(e)
        return
    from layered.types import checked_access

    assert checked_access(access) == access  # only a valid list loads, unchanged
    (doc,) = docs
    assert doc.metadata["access"] == access
    dense = _retriever()
    dense.add_documents(docs)
    visible_to_bob = "*" in access or "user:bob" in access
    assert (_seen_by(dense, User("bob")) == ["memo"]) == visible_to_bob
