"""Distributed ingestion without a cluster: the batch checkpoint, the batching, the missing-Ray error.

The real runs (a local Ray with 2 actors, equal to the single-process index, resumed after an
interruption) are in tests/retrieval/test_ray_ingestion.py.
"""

from __future__ import annotations

import sys

import numpy as np

from layered.cli import main
from layered.retrieval import distributed
from layered.retrieval.distributed import Checkpoint


def test_checkpoint_keeps_whole_batches_of_one_embedder(tmp_path):
    keys = [distributed.batch_key(texts) for texts in (["a", "b"], ["c"])]
    assert distributed.batch_key(["ab"]) != distributed.batch_key(["a", "b"])
    first = Checkpoint(tmp_path, "weights-1", 4, flush_rows=3)
    assert first.load() == {}
    first.add(keys[0], np.ones((2, 4), np.float32))
    assert not list(tmp_path.glob("part-*"))  # 2 rows waiting, below flush_rows
    first.add(keys[1], np.full((1, 4), 2, np.float32))
    staged = Checkpoint(tmp_path, "weights-1", 4).load()
    assert staged.keys() == set(keys) and staged[keys[1]].tolist() == [[2, 2, 2, 2]] and staged[keys[0]].shape == (2, 4)
    (tmp_path / "part-x.npz.tmp").write_bytes(b"half a part")  # killed while writing
    assert Checkpoint(tmp_path, "weights-2", 4).load() == {}  # other weights: never reuse their vectors
    assert not list(tmp_path.glob("part-*")) and not list(tmp_path.glob("*.tmp"))


def test_batches_are_cut_as_in_one_process():
    texts = ["ccc", "a", "bb", "a", "dddd"]
    assert distributed.length_sorted_batches(texts, 2) == [[1, 3], [2, 0], [4]]


def test_workers_without_ray_is_one_line_error(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "some text"}\n')
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["index", str(corpus), "--out", str(tmp_path / "x"), "--workers", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "layered: error: distributed ingestion needs Ray, which is not installed: pip install 'layered[ray]'"
    assert not (tmp_path / "x").exists()
