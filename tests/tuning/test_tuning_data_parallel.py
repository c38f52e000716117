"""Data-parallel training under torchrun (2 CPU processes, gloo) on the tiny real Llama.

Two processes must train the same adapter as one process with the same global batch and
seed: stated tolerance, max |difference| of any adapter weight < 1e-5 (fp32). A run whose
rank 1 is killed with SIGKILL resumes from rank 0's last checkpoint to the same result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from layered.tuning import launch
from tests.helpers import arithmetic_rows

TOLERANCE = 1e-5

SCRIPT = r"""
import json, os, sys, time
from pathlib import Path
import layered.tuning.trainer as trainer
from layered.tuning.config import TuneConfig
from layered.tuning.formatting import Features
from layered.adapters.methods import apply_method, trainable_state
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

model_dir, data, out, slow = sys.argv[1], json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]), float(sys.argv[4])
rank = int(os.environ.get("RANK", "0"))
out.mkdir(parents=True, exist_ok=True)
(out / f"pid-{rank}").write_text(str(os.getpid()))
if slow:  # stretch each step so the parent can kill mid-run
    real = trainer._token_loss
    trainer._token_loss = lambda *a, **k: (time.sleep(slow), real(*a, **k))[1]
config = TuneConfig(**data["config"])
model = apply_method(AutoModelForCausalLM.from_pretrained(model_dir), config)
feats = lambda rows: [Features(input_ids=r[0], labels=r[1]) for r in rows]
report = trainer.train(model, feats(data["train"]), feats(data["val"]), config, out_dir=out, pad_id=0, resume=True, progress=False)
save_file(trainable_state(model), str(out / f"adapter-{rank}.safetensors"))
print(json.dumps({"loss": report.train_loss, "val": report.best_val_loss, "steps": report.steps, "resumed": report.resumed_from}))
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def _data(tmp_path, tokenizer, **config):
    # 30 examples in global batches of 5 (ranks take 3 and 2 rows), 2 batches per step, across an epoch boundary.
    base = {"method": "lora", "rank": 4, "learning_rate": 5e-3, "max_steps": 4, "batch_size": 5, "grad_accum": 2,
            "eval_every": 2, "checkpoint_every": 2, "keep_checkpoints": 2, "dropout": 0.0, "precision": "float32", "seed": 3}
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"config": {**base, **config}, "train": arithmetic_rows(tokenizer, 30), "val": arithmetic_rows(tokenizer, 36)[30:]}))
    return path


def _command(script, model_dir, data, out, nproc, slow=0.0):
    args = [str(script), str(model_dir), str(data), str(out), str(slow)]
    return launch.torchrun_command(args, nproc=nproc, module=None) if nproc > 1 else [sys.executable, *args]


def _train(script, model_dir, data, out, nproc):
    proc = subprocess.run(_command(script, model_dir, data, out, nproc), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def _max_diff(a, b):
    from safetensors.torch import load_file

    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys() and left
    return max(float((left[k] - right[k]).abs().max()) for k in left)


@pytest.mark.slow  # ~20 s idle, 40 s on a busy machine: three processes start torch
def test_two_processes_train_the_same_adapter_as_one(tmp_path, tiny_model_dir, smol_tokenizer, script):
    data = _data(tmp_path, smol_tokenizer)
    one = _train(script, tiny_model_dir, data, tmp_path / "one", 1)
    two = _train(script, tiny_model_dir, data, tmp_path / "two", 2)
    diff = _max_diff(tmp_path / "one" / "adapter-0.safetensors", tmp_path / "two" / "adapter-0.safetensors")
    print(f"max |adapter weight difference|, 2 processes vs 1: {diff:.2e}")
    assert diff < TOLERANCE
    assert _max_diff(tmp_path / "two" / "adapter-0.safetensors", tmp_path / "two" / "adapter-1.safetensors") == 0.0  # ranks agree
    assert two["steps"] == one["steps"] == 4
    assert two["loss"] == pytest.approx(one["loss"], abs=TOLERANCE) and two["val"] == pytest.approx(one["val"], abs=TOLERANCE)
    first = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert one["loss"] < first  # it learned
    # Rank 0 alone wrote the run folder: complete checkpoints and one metrics file.
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_kill_9_of_one_rank_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, smol_tokenizer, script):
    data = _data(tmp_path, smol_tokenizer, dropout=0.1, max_steps=8)  # dropout: each rank's random state must resume
    reference = _train(script, tiny_model_dir, data, tmp_path / "reference", 2)
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_command(script, tiny_model_dir, data, out, 2, slow=0.1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "step-000004" / "manifest.json").exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
            time.sleep(0.05)
        os.kill(int((out / "pid-1").read_text()), signal.SIGKILL)
        assert proc.wait(timeout=60) != 0  # torchrun stops the other rank and fails
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    resumed = _train(script, tiny_model_dir, data, out, 2)
    assert resumed["resumed"] is not None and 4 <= resumed["resumed"] < 8
    assert resumed["steps"] == reference["steps"] == 8
    assert _max_diff(out / "adapter-0.safetensors", tmp_path / "reference" / "adapter-0.safetensors") < TOLERANCE
    assert resumed["val"] == pytest.approx(reference["val"], abs=TOLERANCE)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 9))  # no step lost or repeated


@pytest.mark.slow
def test_tune_with_nproc_2_saves_the_adapter_one_process_would(tiny_generator, tmp_path, capsys):
    """``layered tune --nproc 2`` (through :func:`launch.tune`, the Python form): torchrun, rank 0 saves."""
    from layered import Pipeline
    from layered.cli import main

    pairs = [{"question": f"What is the code for item {i}?", "answer": f"The code is X{i % 3}."} for i in range(30)]
    Pipeline(generator=tiny_generator).save(tmp_path / "base")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    (tmp_path / "tune.toml").write_text('data = "pairs.jsonl"\nrank = 4\nmax_steps = 3\nbatch_size = 6\ndropout = 0.0\n'
                                        'precision = "float32"\nlearning_rate = 0.01\n', encoding="utf-8")
    assert main(["-q", "tune", str(tmp_path / "tune.toml"), "--pipeline", str(tmp_path / "base"), "--out", str(tmp_path / "one")]) == 0
    out = launch.tune(tmp_path / "tune.toml", pipeline=tmp_path / "base", nproc=2, out=tmp_path / "two")
    assert out == tmp_path / "two" and Pipeline.load(out).generator.adapters["default"]["rank"] == 4
    adapter = ("generator", "adapters", "default.safetensors")
    # Looser than TOLERANCE: on these chat prompts a few k_proj gradients are near Adam's eps
    # (1e-8), where it turns summation-order noise into update noise (measured 3e-5 of weights
    # up to 0.18, while the losses agree within 1e-6).
    assert _max_diff(tmp_path.joinpath("one", *adapter), tmp_path.joinpath("two", *adapter)) < 1e-4
    losses = [[json.loads(line)["loss"] for line in (tmp_path / f"{n}.run" / "metrics.jsonl").read_text().splitlines()] for n in ("one", "two")]
    assert len(losses[1]) == 3 and losses[1] == pytest.approx(losses[0], abs=TOLERANCE)
