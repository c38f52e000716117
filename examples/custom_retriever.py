"""Your own retriever in a layered Pipeline: SQLite full-text search, no subclassing.

    .venv/bin/python examples/custom_retriever.py            # evaluate it, then answer a question
    .venv/bin/layered eval retrieval BEIR_DIR --custom examples/custom_retriever.py:SQLiteFTSRetriever

A retriever is any object with ``retrieve(query, *, k, filters) -> list[Hit]``. This one keeps
documents in an in-memory SQLite FTS5 table and ranks with SQLite's built-in BM25. Query words
are passed as a bound parameter, each quoted as an FTS5 string, so no user text is ever
spliced into SQL or into the FTS query syntax.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from layered.retrieval.filters import matches
from layered.types import Chunk, Document, Hit

SAMPLE = Path(__file__).resolve().parent / "data" / "medquad_sample.jsonl"


class SQLiteFTSRetriever:
    """BM25 over an SQLite FTS5 index of whole documents."""

    def __init__(self, docs: Sequence[Document]) -> None:
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.execute("CREATE VIRTUAL TABLE docs USING fts5(doc_id UNINDEXED, text, tokenize='porter')")
        self.db.executemany("INSERT INTO docs(doc_id, text) VALUES (?, ?)", [(d.id, d.text) for d in docs])
        self.docs = {d.id: d for d in docs}

    def retrieve(self, query: str, *, k: int, filters: Mapping[str, Any] | None = None) -> list[Hit]:
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        fts_query = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        rows = self.db.execute(
            "SELECT doc_id, bm25(docs) FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT ?", (fts_query, k * 4),
        ).fetchall()
        hits: list[Hit] = []
        for doc_id, score in rows:  # SQLite's bm25() is lower-is-better: negate it
            doc = self.docs[doc_id]
            if matches(doc.metadata, filters):
                chunk = Chunk(id=doc.id, doc_id=doc.id, text=doc.text, source=doc.source, end=len(doc.text), metadata=doc.metadata)
                hits.append(Hit(chunk=chunk, score=-float(score), rank=len(hits) + 1))
            if len(hits) == k:
                break
        return hits


def write_beir(folder: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """A BEIR folder from MedQuAD pairs: each question's relevant document is its own answer page."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"_id": r["id"], "title": r["focus"], "text": r["answer"]}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"_id": "q-" + r["id"], "text": r["question"]}) + "\n")
    with open(folder / "qrels.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n" + "".join(f"q-{r['id']}\t{r['id']}\t1\n" for r in rows))
    return folder


def main(answer: bool = True) -> None:
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:300]]
    beir = write_beir(Path(tempfile.mkdtemp(prefix="medquad-beir-")), rows)
    # The same evaluation the CLI runs for BM25/dense/hybrid, here for the custom class:
    subprocess.run([sys.executable, "-m", "layered.cli", "-q", "eval", "retrieval", str(beir),
                    "--custom", f"{__file__}:SQLiteFTSRetriever"], check=True)
    if answer:
        from layered import Pipeline
        from layered.generation.transformers_generator import TransformersGenerator

        docs = [Document(id=r["id"], text=f"{r['question']}\n\n{r['answer']}", source=r["url"]) for r in rows]
        pipe = Pipeline(generator=TransformersGenerator(max_new_tokens=80), retriever=SQLiteFTSRetriever(docs), k=3)
        result = pipe.ask("What are the symptoms of body lice?")
        print(result.text)
        for c in result.sources:
            print(f"  [{c.number}] {c.source}")


if __name__ == "__main__":
    main(answer="--no-answer" not in sys.argv)
