"""Small test-data builders shared by unit and integration tests."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from layered.tuning.formatting import IGNORE
from layered.types import Document

if TYPE_CHECKING:
    from layered.retrieval.finetune import Pair


def arithmetic_rows(tokenizer, n: int) -> list[list[list[int]]]:
    """``n`` tiny training rows [input_ids, labels] ("Question i: what is i plus i?" -> " It is 2i."),
    loss on the answer tokens only."""
    rows = []
    for i in range(n):
        prompt = tokenizer.encode(f"Question {i}: what is {i} plus {i}?", add_special_tokens=False)
        answer = tokenizer.encode(f" It is {2 * i}.", add_special_tokens=False) + [tokenizer.eos_token_id]
        rows.append([prompt + answer, [IGNORE] * len(prompt) + answer])
    return rows


def write_beir(folder: Path, docs: list[Document], *, n_docs: int, step: int) -> int:
    """Write a small BEIR folder from ``docs``: each ``step``-th document's question is a query
    whose only relevant document is that one. Returns the number of queries."""
    corpus = [{"_id": d.id, "title": d.metadata["focus"], "text": d.text} for d in docs[:n_docs]]
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in corpus), encoding="utf-8")
    picked = range(0, n_docs, step)
    queries = [{"_id": f"q{i}", "text": docs[i].text.split("\n")[0]} for i in picked]
    (folder / "queries_train.jsonl").write_text("\n".join(json.dumps(q) for q in queries), encoding="utf-8")
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{docs[i].id}\t1\n" for i in picked)
    (folder / "qrels_train.tsv").write_text(qrels, encoding="utf-8")
    return len(queries)


def request(srv, method, path, body=None, headers=None, raw=None):
    """One HTTP exchange with a running PipelineServer ``srv``: ``(status, headers, body bytes)``."""
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, resp.headers, payload  # case-insensitive, as HTTP headers are


def medquad_topics(n_topics: int) -> tuple[list[Document], list["Pair"]]:
    """The packaged MedQuAD sample's first ``n_topics`` topics (sorted): each page as a document
    (its answer, titled by its topic) and each question as a pair with its page, grouped by topic."""
    from layered.pipelines import medical
    from layered.retrieval.finetune import Pair

    rows = [json.loads(line) for line in medical.SAMPLE_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    topics = sorted({r["focus"] for r in rows})[:n_topics]
    rows = [r for r in rows if r["focus"] in topics]
    docs = [Document(id=r["id"], text=r["answer"], metadata={"title": r["focus"]}) for r in rows]
    return docs, [Pair(r["question"], r["id"], r["focus"]) for r in rows]


def raw_exchange(srv, data: bytes, *, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes on one connection to ``srv``; read until the server closes it (True) or goes quiet (False)."""
    with socket.create_connection(srv.server_address[:2], timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                block = s.recv(65536)
            except socket.timeout:
                return out, False
            except ConnectionResetError:
                return out, True
            if not block:
                return out, True
            out += block
        return out, False


def pipe_with_secret(generator, docs: list[Document], secret: Document):  # type: ignore[no-untyped-def]
    """A pipeline over ten public sample pages and one restricted ``secret`` (hashing embedder, k=11: every chunk)."""
    from layered import Pipeline
    from layered.retrieval.chunkers import TokenChunker
    from layered.retrieval.dense import DenseRetriever
    from layered.retrieval.embedders import HashingEmbedder

    retriever = DenseRetriever(embedder=HashingEmbedder(128), chunker=TokenChunker(size=60, overlap=10))
    retriever.add_documents([*docs[:10], secret])
    return Pipeline(generator=generator, retriever=retriever, k=11)
