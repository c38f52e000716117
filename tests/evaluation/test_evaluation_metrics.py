"""The metrics by hand, and the evaluation package's layering: metrics are a leaf."""

import ast
import math
from pathlib import Path

import pytest

import layered
from layered.evaluation.metrics import mrr_at_k, ndcg_at_k, recall_at_k, rouge_l, token_f1

EVALUATION = Path(layered.__file__).parent / "evaluation"


def test_metrics_by_hand():
    rel = {"a": 1, "b": 2}
    assert recall_at_k(["x", "a", "y"], rel, 3) == 0.5
    assert mrr_at_k(["x", "a"], rel, 10) == 0.5
    assert ndcg_at_k(["b", "a"], rel, 10) == pytest.approx(1.0)
    expected = (1 / math.log2(2) + 2 / math.log2(3)) / (2 / math.log2(2) + 1 / math.log2(3))
    assert ndcg_at_k(["a", "b"], rel, 10) == pytest.approx(expected)
    assert ndcg_at_k(["x"], {}, 10) == 0.0


def test_answer_metrics_by_hand():
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("cat", "the cat sat") == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))
    assert token_f1("", "x") == 0.0 and token_f1("", "") == 1.0
    assert rouge_l("a b c d", "a x c d") == pytest.approx(0.75)  # LCS a c d = 3 of 4
    assert rouge_l("d c b a", "a b c d") == pytest.approx(0.25)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            found.add(node.module or "")
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


LEAF_MAY_IMPORT = {"layered.types", "layered.errors"}  # value types and errors, nothing that runs


def _layered(names: set[str]) -> set[str]:
    """The ``layered`` modules among ``names`` (``from layered.types import Hit`` counts as ``layered.types``)."""
    return {n for n in names if n == "layered" or n.startswith("layered.")}


def test_metrics_are_a_leaf():
    # Metrics take strings and rankings: nothing that runs a model, a retriever or a pipeline.
    imported = _imports(EVALUATION / "metrics.py")
    assert {"math", "re", "collections"} <= imported  # the parse sees the module's own imports
    inside = {n for n in _layered(imported) if not any(n == ok or n.startswith(ok + ".") for ok in LEAF_MAY_IMPORT)}
    assert inside == set(), f"metrics.py imports {sorted(inside)}"
    heavy = ("torch", "transformers", "numpy", "faiss", "sentence_transformers")
    assert not [n for n in imported if n.split(".")[0] in heavy]


def test_drivers_sit_above_the_metrics():
    # The drivers score with the leaf's functions rather than keeping copies of their own.
    metric_names = {"token_f1", "rouge_l", "recall_at_k", "mrr_at_k", "ndcg_at_k"}
    for driver in ("comparison.py", "retrieval.py"):
        assert "layered.evaluation.metrics" in _imports(EVALUATION / driver), driver
        tree = ast.parse((EVALUATION / driver).read_text(encoding="utf-8"))
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not defined & metric_names, driver
