"""The bundled assistants as a user meets them, and the reproducibility of their shipped adapters.

Slow: the medical demo indexes all 16,407 MedQuAD pages once per test session (a few
minutes); the reproducibility tests reuse that index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layered.artifacts import sha256_file
from layered.pipelines.shipped import ShippedAdapter

pytestmark = pytest.mark.slow
QUESTION = "What are the treatments for Graves disease?"
UNANSWERABLE = "Can the birth control pill Ocella cause DVT?"
#: Relative tolerance on the recorded per-step training losses: the same CPU kind repeats
#: them to ~1e-6; bf16 autocast on another CPU can round differently.
LOSS_RTOL = 0.02


def _layered(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "layered.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=dict(os.environ))


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assistants")
    return {"medical": root / "demo-medical", "support": root / "demo-support"}


def _sources(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if line.lstrip(" *").startswith("[")]


def test_demo_medical_indexes_all_of_medquad_once_then_answers_with_its_adapter(caches):
    cache = caches["medical"]
    first = _layered("demo", "medical", "--cache-dir", str(cache), "--question", QUESTION)
    assert first.returncode == 0, first.stderr
    assert "first run: indexing all 16,407 MedQuAD pages" in first.stderr
    assert "adapters: medical" in first.stderr and "llamacpp backend" in first.stderr
    saved_ids = {json.loads(line)["id"] for line in (cache / "store" / "chunks.jsonl").read_text().splitlines()}
    assert len(saved_ids) > 16000
    rows = _sources(first.stdout)
    assert rows and {r[1] for r in rows} <= saved_ids
    assert any("graves" in r[1].lower() or "graves" in first.stdout.lower() for r in rows)
    answer = first.stdout.split("A: ", 1)[1].split("Sources:", 1)[0]
    assert "[" in answer and "antithyroid" in answer.lower() or "radioactive iodine" in answer.lower()
    manifest_mtime = (cache / "manifest.json").stat().st_mtime_ns

    second = _layered("demo", "medical", "--cache-dir", str(cache), "--question", QUESTION)
    assert second.returncode == 0, second.stderr
    assert "reusing the saved index" in second.stderr and "embedding" not in second.stderr
    assert (cache / "manifest.json").stat().st_mtime_ns == manifest_mtime
    assert second.stdout == first.stdout  # greedy decoding: same answer, same sources

    # Right or silent: a question no MedQuAD page answers is declined, naming what was found.
    declined = _layered("demo", "medical", "--cache-dir", str(cache), "--question", UNANSWERABLE)
    assert declined.returncode == 0, declined.stderr
    assert "I could not find this in the medical sources" in declined.stdout and "(declined: no passage answers it" in declined.stdout
    assert "closest passages I found are about" in declined.stdout


def test_demo_support_routes_with_its_shipped_adapter_without_training(caches):
    cache = caches["support"]
    args = ("demo", "support", "--cache-dir", str(cache), "--question", "How do I cancel my order?",
            "--question", "What is the warranty on the TrailMaster X4 Tent?", "--question", "What is the warranty on the Contoso Electric Bike?")
    first = _layered(*args)
    assert first.returncode == 0, first.stderr
    assert "training" not in first.stderr.lower() and "adapters: policy" in first.stderr
    assert "[adapter: policy]" in first.stdout and "[adapter: base]" in first.stdout
    sources = _sources(first.stdout)
    # Routed scopes: the cancel question searches the ABCD guidelines, the tent one the manuals.
    assert any(s[1].startswith("abcd/") for s in sources) and any("abcd/" not in s[1] for s in sources)
    assert "{{" not in first.stdout and "<passage" not in first.stdout  # no template slot or prompt tag reaches a customer
    bike = first.stdout.split("Q: What is the warranty on the Contoso Electric Bike?", 1)[1]
    assert "(declined: no passage answers it" in bike  # a product the shop does not sell
    second = _layered(*args)
    assert second.returncode == 0, second.stderr
    assert "reusing the saved index" in second.stderr and second.stdout == first.stdout


@pytest.mark.parametrize("name", ["medical", "support"])
def test_a_shipped_adapter_matches_its_manifest_and_its_recipe_reproduces_the_first_steps(name, caches, tmp_path):
    from layered.pipelines import medical, support
    from layered.tuning.config import TuneConfig
    from layered.tuning.fit import read_recipe, recipe_examples

    shipped = ShippedAdapter.named(name).verify()
    report = shipped.report()
    options, data = read_recipe(shipped.folder / "recipe.toml")
    assert data == shipped.data and report["data_sha256"] == sha256_file(data)
    recorded = [json.loads(line)["loss"] for line in (shipped.folder / "metrics.jsonl").read_text().splitlines()]
    assert len(recorded) == options["max_steps"] == report["steps"]

    module = medical if name == "medical" else support
    pipe, _ = module.load_or_build(caches[name], adapter=False)
    pipe.fit(recipe_examples(data), config=TuneConfig(**options), out_dir=tmp_path / "run", stop_after=3,
             check_forgetting=False, progress=False)
    again = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(again) == 3
    assert again == pytest.approx(recorded[:3], rel=LOSS_RTOL)

    # The shipped weights are what the generator serves once installed.
    from safetensors.torch import load_file

    fresh, _ = module.load_or_build(caches[name])
    served = fresh.generator.adapter_weights(medical.ADAPTER if name == "medical" else "policy")
    stored = load_file(str(shipped.weights))
    assert served.keys() == stored.keys() and all(bool((served[k] == stored[k]).all()) for k in stored)
