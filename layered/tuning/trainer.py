"""The training loop: length-bucketed batches, warm-up + linear decay, gradient accumulation,
periodic validation with early stopping, atomic checkpoints with exact resume, metrics.jsonl
and a loss-curve PNG.

Determinism: batch order depends only on ``(seed, epoch)``, and checkpoints carry the RNG
states, so a run resumed from a checkpoint takes the same steps as one never interrupted.

Under torchrun with several processes the loop is data-parallel (:mod:`layered.tuning.launch`):
each rank runs its share of every batch, gradients are summed across ranks before the step,
and rank 0 alone writes checkpoints and metrics.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from layered.artifacts import atomic_write_bytes
from layered.errors import ConfigError, InputError
from layered.hardware import cpu_supports_bf16
from layered.tuning.checkpoints import complete_checkpoints, load_checkpoint, save_checkpoint
from layered.tuning.config import TuneConfig
from layered.tuning.formatting import IGNORE, Features
from layered.tuning.launch import data_parallel

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    """What a training run did. Losses are mean per answer token."""

    steps: int
    train_loss: float
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    best_val_loss: float | None = None
    stopped_early: bool = False
    resumed_from: int | None = None
    tokens_per_second: float = 0.0
    seconds: float = 0.0
    output_dir: str = ""
    #: Perplexity on general text, base vs tuned (a ForgettingReport; set by ``Pipeline.fit``).
    forgetting: Any = None


def uses_bf16(config: TuneConfig) -> bool:
    """Whether training and validation run under bf16 autocast for this config."""
    return config.precision == "bfloat16" or (config.precision == "auto" and cpu_supports_bf16())


def bucketed_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar lengths (little padding), in a seeded random order.

    Indices are shuffled, cut into pools of 50 batches, sorted by length within each pool,
    batched, and the batches shuffled again.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(features: Sequence[Features], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f.input_ids)
        ids[row, :n] = torch.tensor(f.input_ids)
        labels[row, :n] = torch.tensor(f.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _keeps_logits(model: Any) -> bool:
    """Whether the (base) model's forward takes ``logits_to_keep`` (transformers causal LMs do)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _token_loss(model: Any, batch: dict[str, Any], bf16: bool) -> tuple[Any, int]:
    """Sum of per-token cross-entropy over answer tokens, and their count.

    Only positions that predict an answer token (in any row) are projected onto the
    vocabulary: with RAG prompts most positions are passages, and the vocabulary projection
    and its float copy dominate memory (4 x 1,200 x 49k logits: 1.3 GB, vs ~0.2 GB kept).
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch["labels"][:, 1:]
    options: dict[str, Any] = {}
    keep = (labels != IGNORE).any(dim=0).nonzero().squeeze(-1)  # position p predicts token p + 1
    if _keeps_logits(model) and len(keep):
        options["logits_to_keep"], labels = keep, labels[:, keep]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **options).logits
    if not options:
        logits = logits[:, :-1]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss, int((labels != IGNORE).sum())


def evaluate_loss(model: Any, features: Sequence[Features], *, pad_id: int, batch_size: int = 8, bf16: bool = False) -> float:
    """Mean answer-token loss over ``features`` (no gradients); data-parallel ranks each take a share of the batches."""
    import torch

    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    dp = data_parallel()
    starts = list(range(0, len(features), batch_size))
    with torch.no_grad():
        for start in starts if dp is None else dp.shard(starts):
            loss, n = _token_loss(model, _collate(features[start:start + batch_size], pad_id), bf16)
            total, tokens = total + float(loss), tokens + n
    if dp is not None:
        total, tokens = dp.sum([total, tokens])
    model.train(was_training)
    return total / max(tokens, 1)


def _plot(metrics: list[dict[str, Any]], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per answer token")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _recompute_activations(model: Any, on: bool) -> None:
    """Switch activation (gradient) checkpointing on or off, by its transformers 5 name or the older one."""
    names = ("activation_checkpointing_enable", "gradient_checkpointing_enable") if on else \
        ("activation_checkpointing_disable", "gradient_checkpointing_disable")
    switch = next((getattr(model, n) for n in names if hasattr(model, n)), None)
    if switch is None:
        raise ConfigError(f"{type(model).__name__} cannot recompute activations; set gradient_checkpointing=false")
    # Non-reentrant checkpointing also works when the (frozen) embeddings need no gradient.
    switch({"use_reentrant": False}) if on else switch()


def train(
    model: Any,
    train_set: Sequence[Features],
    val_set: Sequence[Features],
    config: TuneConfig,
    *,
    out_dir: str | Path,
    pad_id: int,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainReport:
    """Train ``model``'s trainable parameters on ``train_set``; see module docstring.

    ``stop_after`` ends the run after that many optimizer steps of the schedule ``config``
    describes (the learning-rate schedule still spans ``max_steps``): the first steps of a
    recipe, exactly as the full run took them.

    Writes ``out_dir/metrics.jsonl``, ``out_dir/loss.png`` and ``out_dir/checkpoints/``.
    With ``resume=True`` it continues from the newest complete checkpoint, if any.
    """
    import torch
    from tqdm.auto import tqdm

    if not train_set:
        raise InputError("the training set is empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dp = data_parallel()  # None in a single process
    main = dp is None or dp.is_main
    if dp is not None and dp.device.type != "cpu":
        model.to(dp.device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    bf16 = uses_bf16(config)
    lengths = [len(f.input_ids) for f in train_set]
    batches_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * batches_per_epoch / config.grad_accum))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters; apply a tuning method first")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = int(config.warmup_ratio * total_steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loop: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "metrics": [], "best_val": None, "bad_evals": 0, "tokens": 0}
    resumed_from = None
    ckpt_root = out / "checkpoints"
    found = complete_checkpoints(ckpt_root) if resume and main else []
    if dp is not None and resume:  # every rank resumes from the checkpoint rank 0 picked
        newest = dp.broadcast(found[-1].name if found else None)
        found = [ckpt_root / newest] if newest else []
    if found:
        loop = load_checkpoint(found[-1], model=model, optimizer=optimizer, scheduler=scheduler, rank=dp.rank if dp else 0)
        resumed_from = loop["step"]
        log.info("resuming from %s (step %d)", found[-1].name, loop["step"])
    if dp is not None:
        dp.broadcast_parameters(params)  # one starting point, whatever each rank initialised
    if config.recomputes_activations:
        _recompute_activations(model, True)
    model.train()
    started = time.perf_counter()
    tokens_this_run = 0
    stopped_early = False
    last_loss = loop["metrics"][-1]["loss"] if loop["metrics"] else float("nan")
    bar = tqdm(total=total_steps, initial=loop["step"], desc=f"training ({config.method})", unit="step", disable=not (progress and main))
    last_step = total_steps if stop_after is None else min(total_steps, stop_after)
    while loop["step"] < last_step and not stopped_early:
        batches = bucketed_batches(lengths, config.batch_size, seed=config.seed, epoch=loop["epoch"])
        while loop["batch"] < len(batches) and loop["step"] < last_step:
            group = batches[loop["batch"]:loop["batch"] + config.grad_accum]
            feats = [[train_set[i] for i in b] for b in group]
            n_tokens = sum(f.answer_tokens for b in feats for f in b)
            optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            # Each rank: its rows of every batch, scaled by the tokens of the whole group, so the
            # gradients summed over ranks are the one-process gradient.
            for b in feats if dp is None else [[train_set[i] for i in dp.shard(b)] for b in group]:
                if not b:  # a last batch with fewer rows than ranks
                    continue
                loss_sum, _ = _token_loss(model, _collate(b, pad_id), bf16)
                (loss_sum / max(n_tokens, 1)).backward()
                total_loss += float(loss_sum.detach())
            if dp is not None:
                dp.sum_gradients(params)
                total_loss = dp.sum([total_loss])[0]
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            loop["batch"] += len(group)
            loop["step"] += 1
            loop["tokens"] += sum(len(f.input_ids) for b in feats for f in b)
            tokens_this_run += sum(len(f.input_ids) for b in feats for f in b)
            last_loss = total_loss / max(n_tokens, 1)
            entry: dict[str, Any] = {"step": loop["step"], "loss": last_loss, "lr": scheduler.get_last_lr()[0]}
            if val_set and (loop["step"] % config.eval_every == 0 or loop["step"] == total_steps):
                entry["val_loss"] = evaluate_loss(model, val_set, pad_id=pad_id, batch_size=config.batch_size, bf16=bf16)
                if loop["best_val"] is None or entry["val_loss"] < loop["best_val"]:
                    loop["best_val"], loop["bad_evals"] = entry["val_loss"], 0
                else:
                    loop["bad_evals"] += 1
                    stopped_early = config.patience is not None and loop["bad_evals"] >= config.patience
            loop["metrics"].append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
            if loop["step"] % config.checkpoint_every == 0 or loop["step"] == total_steps or stopped_early:
                rng = dp.gather_rng() if dp is not None else None
                if main:
                    save_checkpoint(ckpt_root, step=loop["step"], model=model, optimizer=optimizer, scheduler=scheduler,
                                    loop=loop, keep=config.keep_checkpoints, rng_states=rng)
            if stopped_early:
                break
        if loop["batch"] >= len(batches):
            loop["epoch"], loop["batch"] = loop["epoch"] + 1, 0
    bar.close()
    if config.recomputes_activations:
        _recompute_activations(model, False)
    seconds = time.perf_counter() - started
    if main:
        atomic_write_bytes(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in loop["metrics"]).encode())
        _plot(loop["metrics"], out / "loss.png")
    vals = [(m["step"], m["val_loss"]) for m in loop["metrics"] if "val_loss" in m]
    return TrainReport(
        steps=loop["step"], train_loss=last_loss, val_losses=vals, best_val_loss=loop["best_val"], stopped_early=stopped_early,
        resumed_from=resumed_from, tokens_per_second=tokens_this_run / seconds if seconds else 0.0, seconds=seconds,
        output_dir=str(out),
    )
