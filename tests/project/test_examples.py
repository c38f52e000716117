"""The examples run as tests: the custom SQLite retriever plugs into a Pipeline and `layered eval retrieval`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from layered import Pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_retriever_example_is_evaluated_by_the_cli():
    out = subprocess.run([sys.executable, str(EXAMPLES / "custom_retriever.py"), "--no-answer"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    row = next(line for line in out.splitlines() if line.startswith("| SQLiteFTSRetriever"))
    recall, mrr, ndcg = (float(x) for x in row.strip("| ").split("|")[1:])
    assert recall > 0.5 and 0 < mrr <= 1 and 0 < ndcg <= 1  # a broken retriever scores about 0 here


def test_custom_retriever_in_a_pipeline_treats_query_text_as_data(tiny_generator, docs):
    retriever = _load("custom_retriever").SQLiteFTSRetriever(docs)
    pipe = Pipeline(generator=tiny_generator, retriever=retriever, k=3)
    hits = pipe.retrieve(docs[5].text.splitlines()[0])
    assert hits[0].chunk.doc_id == docs[5].id and len(hits) == 3
    for hostile in ['x" OR 1=1 --', "'; DROP TABLE docs; --", "NEAR(a b) * ^"]:
        pipe.retrieve(hostile)  # no SQL or FTS syntax error, nothing dropped
    assert pipe.retrieve(docs[5].text.splitlines()[0])[0].chunk.doc_id == docs[5].id
    assert pipe.ask(docs[5].text.splitlines()[0]).sources[0].doc_id == docs[5].id
