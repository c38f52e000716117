"""The trainer on a tiny real Llama: it learns, it resumes exactly after kill -9, it writes its artifacts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from layered.errors import ConfigError
from layered.tuning.config import TuneConfig
from layered.tuning.formatting import IGNORE
from tests.helpers import arithmetic_rows

SCRIPT = r"""
import json, sys, time
from pathlib import Path
import layered.tuning.trainer as trainer
from layered.tuning.config import TuneConfig
from layered.tuning.formatting import Features
from layered.adapters.methods import apply_method
from transformers import AutoModelForCausalLM

model_dir, data, out, slow = sys.argv[1], json.loads(Path(sys.argv[2]).read_text()), sys.argv[3], float(sys.argv[4])
if slow:  # stretch each step so the parent can kill mid-run
    real = trainer._token_loss
    trainer._token_loss = lambda *a, **k: (time.sleep(slow), real(*a, **k))[1]
model = apply_method(AutoModelForCausalLM.from_pretrained(model_dir), TuneConfig(**data["config"]))
feats = lambda rows: [Features(input_ids=r[0], labels=r[1]) for r in rows]
report = trainer.train(model, feats(data["train"]), feats(data["val"]), TuneConfig(**data["config"]),
                       out_dir=out, pad_id=0, resume=True, progress=False)
print(json.dumps({"loss": report.train_loss, "val": report.best_val_loss, "steps": report.steps, "resumed": report.resumed_from}))
"""


def _run(tiny_model_dir, data_file, out, slow=0.0):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(data_file), str(out), str(slow)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def data_file(tmp_path, smol_tokenizer):
    config = {"method": "lora", "rank": 4, "learning_rate": 5e-3, "max_steps": 24, "batch_size": 4, "eval_every": 6,
              "checkpoint_every": 4, "keep_checkpoints": 2, "dropout": 0.1, "seed": 3}
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"config": config, "train": arithmetic_rows(smol_tokenizer, 32), "val": arithmetic_rows(smol_tokenizer, 40)[32:]}))
    return path


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, data_file):
    reference = _run(tiny_model_dir, data_file, tmp_path / "reference")
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(data_file), str(out), "0.05"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-000008" / "manifest.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _run(tiny_model_dir, data_file, out)
    assert resumed["resumed"] is not None and 8 <= resumed["resumed"] < 24
    assert resumed["steps"] == reference["steps"] == 24
    assert resumed["loss"] == pytest.approx(reference["loss"], abs=1e-5)
    assert resumed["val"] == pytest.approx(reference["val"], abs=1e-5)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 25))  # no step lost or repeated
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "checkpoints").glob("step-*"))) == 2  # keep last N
    assert metrics[-1]["val_loss"] < metrics[5]["val_loss"]  # it learned something


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="invalid tuning config: rank"):
        TuneConfig(rank=0)
    with pytest.raises(ConfigError, match="lerning_rate"):
        TuneConfig(lerning_rate=1)
    with pytest.raises(ConfigError, match="prefix tuning cannot use gradient_checkpointing"):
        TuneConfig(method="prefix", gradient_checkpointing=True)
    assert TuneConfig().recomputes_activations and not TuneConfig(method="prefix").recomputes_activations


def test_bf16_autocast_keeps_the_loss_within_tolerance_of_fp32(tmp_path, tiny_model_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    from layered.tuning import trainer
    from layered.tuning.formatting import Features
    from layered.adapters.methods import apply_method

    rows = arithmetic_rows(smol_tokenizer, 40)
    feats = [Features(input_ids=r[0], labels=r[1]) for r in rows]
    results = {}
    for precision in ("float32", "bfloat16"):
        config = TuneConfig(method="full", learning_rate=3e-3, max_steps=12, batch_size=4, eval_every=12, checkpoint_every=12,
                            dropout=0.0, precision=precision)
        model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
        before = trainer.evaluate_loss(model, feats[32:], pad_id=0)
        report = trainer.train(model, feats[:32], feats[32:], config, out_dir=tmp_path / precision, pad_id=0, progress=False)
        results[precision] = (before, trainer.evaluate_loss(model, feats[32:], pad_id=0), report.train_loss)
    (b32, v32, t32), (b16, v16, t16) = results["float32"], results["bfloat16"]
    assert b32 == b16 and v32 < b32 - 0.5  # same start, and fp32 really learned
    assert abs(v16 - v32) / v32 < 0.02 and abs(t16 - t32) / t32 < 0.02  # bf16 ends where fp32 does (validation in fp32)


def test_loss_on_kept_logits_equals_the_loss_on_all_logits(tiny_model_dir):
    """Projecting only answer-predicting positions onto the vocabulary changes nothing but the cost."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from layered.tuning.trainer import _keeps_logits, _token_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert _keeps_logits(model)
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (3, 40))
    mask = torch.ones_like(ids)
    mask[2, 30:] = 0  # a shorter, padded row
    labels = torch.full_like(ids, IGNORE)
    labels[0, 25:40], labels[1, 33:40], labels[2, 20:30] = ids[0, 25:40], ids[1, 33:40], ids[2, 20:30]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        loss, n = _token_loss(model, batch, bf16=False)
        full = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        expected = F.cross_entropy(full.reshape(-1, full.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE, reduction="sum")
    assert n == 15 + 7 + 10
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_gradient_checkpointing_trains_the_same_lora(tmp_path, tiny_model_dir, smol_tokenizer):
    """Recomputing activations changes memory and time, not the result (LoRA: frozen embeddings)."""
    from transformers import AutoModelForCausalLM

    from layered.tuning import trainer
    from layered.tuning.formatting import Features
    from layered.adapters.methods import apply_method

    feats = [Features(input_ids=r[0], labels=r[1]) for r in arithmetic_rows(smol_tokenizer, 24)]
    losses = {}
    for recompute in (False, True):
        config = TuneConfig(rank=4, learning_rate=5e-3, max_steps=4, batch_size=4, eval_every=4, checkpoint_every=4,
                            dropout=0.0, precision="float32", gradient_checkpointing=recompute)
        model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
        report = trainer.train(model, feats[:20], feats[20:], config, out_dir=tmp_path / str(recompute), pad_id=0, progress=False)
        assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # off again for serving
        losses[recompute] = (report.train_loss, report.val_losses[-1][1])
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_validation_loss_is_the_token_mean_whatever_the_order_and_batching(tiny_model_dir, smol_tokenizer):
    """evaluate_loss batches length-sorted features: the mean answer-token loss is the one of
    each example scored alone, and shuffling the input changes nothing."""
    import random

    from transformers import AutoModelForCausalLM

    from layered.tuning import trainer
    from layered.tuning.formatting import Features

    rows = arithmetic_rows(smol_tokenizer, 24)
    rows = [[ids + ids[:i % 7], labels + [IGNORE] * (i % 7)] for i, (ids, labels) in enumerate(rows)]  # uneven lengths
    feats = [Features(input_ids=r[0], labels=r[1]) for r in rows]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    alone = sum(trainer.evaluate_loss(model, [f], pad_id=0) * f.answer_tokens for f in feats) / sum(f.answer_tokens for f in feats)
    shuffled = feats[:]
    random.Random(0).shuffle(shuffled)
    batched = [trainer.evaluate_loss(model, f, pad_id=0, batch_size=5) for f in (feats, shuffled)]
    assert batched[0] == pytest.approx(alone, rel=1e-5) and batched[1] == pytest.approx(alone, rel=1e-5)


def test_long_rows_train_unpadded_and_the_step_is_the_padded_one(tmp_path, tiny_model_dir, smol_tokenizer, monkeypatch):
    """Rows from UNPADDED_MIN_TOKENS train one forward each (or with rows of their exact length);
    the optimizer steps, and so the losses, are the padded batches' (up to float rounding)."""
    from transformers import AutoModelForCausalLM

    from layered.adapters.methods import apply_method
    from layered.tuning import trainer
    from layered.tuning.formatting import Features

    rows = arithmetic_rows(smol_tokenizer, 24)
    feats = [Features(input_ids=ids + ids[:i % 5], labels=labels + [IGNORE] * (i % 5)) for i, (ids, labels) in enumerate(rows)]
    lengths = sorted({len(f.input_ids) for f in feats})
    monkeypatch.setattr(trainer, "UNPADDED_MIN_TOKENS", lengths[len(lengths) // 2])
    cut = trainer.micro_batches(feats[:8])
    assert sorted(map(id, (f for rows in cut for f in rows))) == sorted(map(id, feats[:8]))  # every row once
    assert all(len(f.input_ids) < trainer.UNPADDED_MIN_TOKENS for f in cut[0])
    assert all(len({len(f.input_ids) for f in rows}) == 1 for rows in cut[1:]) and len(cut) >= 2
    losses = {}
    for threshold in (10**9, 0, trainer.UNPADDED_MIN_TOKENS):  # all padded, all unpadded, mixed
        monkeypatch.setattr(trainer, "UNPADDED_MIN_TOKENS", threshold)
        config = TuneConfig(rank=4, learning_rate=5e-3, max_steps=4, batch_size=6, eval_every=4, checkpoint_every=4,
                            dropout=0.0, precision="float32")
        model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
        report = trainer.train(model, feats[:20], feats[20:], config, out_dir=tmp_path / str(threshold), pad_id=0, progress=False)
        losses[threshold] = [json.loads(line)["loss"] for line in (tmp_path / str(threshold) / "metrics.jsonl").read_text().splitlines()]
        losses[threshold].append(report.val_losses[-1][1])
    padded, *others = losses.values()
    assert all(other == pytest.approx(padded, rel=1e-5) for other in others)
