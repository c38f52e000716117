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

import dataclasses
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
from layered.tuning.dropout import fast_lora_dropout
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
    #: The principals training ran as (``["*"]``: public documents only) and every document whose
    #: passages were in a training or validation prompt (set by ``Pipeline.fit``): the adapter's lineage.
    access_scope: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)


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


#: Rows at least this long train alone, one forward each: no padding, and attention takes its
#: causal path, which skips the masked half. Measured on 4-row batches of the support recipe
#: (step time, ``benchmarks/training_throughput.py`` workload): 0.89x at ~160 tokens per row,
#: 1.01x at ~310, 1.11x at ~750; shorter rows keep their padded batch.
UNPADDED_MIN_TOKENS = 384


def micro_batches(rows: Sequence[Features]) -> list[list[Features]]:
    """The forward passes one batch is cut into: rows shorter than :data:`UNPADDED_MIN_TOKENS`
    together (padded), longer rows alone or with rows of exactly their length (no padding).
    The summed loss, and so the gradient, is the batch's (up to float rounding)."""
    short = [f for f in rows if len(f.input_ids) < UNPADDED_MIN_TOKENS]
    by_length: dict[int, list[Features]] = {}
    for f in rows:
        if len(f.input_ids) >= UNPADDED_MIN_TOKENS:
            by_length.setdefault(len(f.input_ids), []).append(f)
    return ([short] if short else []) + list(by_length.values())


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
    """Mean answer-token loss over ``features`` (no gradients); data-parallel ranks each take a share of the batches.

    Batches are cut from the features sorted by length, so little of each batch is padding;
    the mean is a sum over answer tokens, so the order does not change it (beyond float rounding).
    """
    import torch

    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0.0
    dp = data_parallel()
    ordered = sorted(features, key=lambda f: len(f.input_ids))
    starts = list(range(0, len(ordered), batch_size))
    with torch.no_grad():
        for start in starts if dp is None else dp.shard(starts):
            loss, n = _token_loss(model, _collate(ordered[start:start + batch_size], pad_id), bf16)
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


@dataclass
class LoopState:
    """Where a run is: saved in every checkpoint (the JSON ``loop`` object, these keys) and
    restored on resume, so a resumed run takes the same steps as one never interrupted."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_val: float | None = None
    bad_evals: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "LoopState":
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})


@dataclass
class _Run:
    """What every step of one run shares: the model and data, the optimizer and schedule, the ranks."""

    model: Any
    train_set: Sequence[Features]
    val_set: Sequence[Features]
    config: TuneConfig
    pad_id: int
    dp: Any  # the DataParallel of this process, None in a single process
    params: list[Any]
    optimizer: Any
    scheduler: Any
    total_steps: int
    ckpt_root: Path
    bf16: bool

    @property
    def main(self) -> bool:
        return self.dp is None or self.dp.is_main


def _start(model: Any, train_set: Sequence[Features], val_set: Sequence[Features], config: TuneConfig, *, pad_id: int, out: Path) -> _Run:
    """Seed, move the model to this rank's device, and build the optimizer and its warm-up + linear-decay schedule."""
    import torch

    dp = data_parallel()  # None in a single process
    if dp is not None and dp.device.type != "cpu":
        model.to(dp.device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
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
    return _Run(model=model, train_set=train_set, val_set=val_set, config=config, pad_id=pad_id, dp=dp, params=params,
                optimizer=optimizer, scheduler=scheduler, total_steps=total_steps, ckpt_root=out / "checkpoints", bf16=uses_bf16(config))


def _resume(run: _Run, resume: bool) -> tuple[LoopState, int | None]:
    """The loop state to start from (the newest complete checkpoint's with ``resume``) and its step."""
    dp = run.dp
    found = complete_checkpoints(run.ckpt_root) if resume and run.main else []
    if dp is not None and resume:  # every rank resumes from the checkpoint rank 0 picked
        newest = dp.broadcast(found[-1].name if found else None)
        found = [run.ckpt_root / newest] if newest else []
    state, resumed_from = LoopState(), None
    if found:
        saved = load_checkpoint(found[-1], model=run.model, optimizer=run.optimizer, scheduler=run.scheduler, rank=dp.rank if dp else 0)
        state = LoopState.from_dict(saved)
        resumed_from = state.step
        log.info("resuming from %s (step %d)", found[-1].name, state.step)
    if dp is not None:
        dp.broadcast_parameters(run.params)  # one starting point, whatever each rank initialised
    return state, resumed_from


def _step(run: _Run, group: Sequence[Sequence[int]]) -> tuple[float, int]:
    """One optimizer step over the batches of ``group`` (gradient accumulation): the mean
    answer-token loss and the tokens read."""
    import torch

    dp, train_set = run.dp, run.train_set
    feats = [[train_set[i] for i in b] for b in group]
    n_tokens = sum(f.answer_tokens for b in feats for f in b)
    run.optimizer.zero_grad(set_to_none=True)
    total_loss = 0.0
    # Each rank: its rows of every batch, scaled by the tokens of the whole group, so the
    # gradients summed over ranks are the one-process gradient.
    for b in feats if dp is None else [[train_set[i] for i in dp.shard(b)] for b in group]:
        for rows in micro_batches(b):  # none for a last batch with fewer rows than ranks
            loss_sum, _ = _token_loss(run.model, _collate(rows, run.pad_id), run.bf16)
            (loss_sum / max(n_tokens, 1)).backward()
            total_loss += float(loss_sum.detach())
    if dp is not None:
        dp.sum_gradients(run.params)
        total_loss = dp.sum([total_loss])[0]
    torch.nn.utils.clip_grad_norm_(run.params, run.config.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    return total_loss / max(n_tokens, 1), sum(len(f.input_ids) for b in feats for f in b)


def _validate(run: _Run, state: LoopState, entry: dict[str, Any]) -> bool:
    """Add the validation loss to ``entry`` when one is due; whether early stopping now ends the run."""
    config = run.config
    if not run.val_set or not (state.step % config.eval_every == 0 or state.step == run.total_steps):
        return False
    entry["val_loss"] = evaluate_loss(run.model, run.val_set, pad_id=run.pad_id, batch_size=config.batch_size, bf16=run.bf16)
    if state.best_val is None or entry["val_loss"] < state.best_val:
        state.best_val, state.bad_evals = entry["val_loss"], 0
        return False
    state.bad_evals += 1
    return config.patience is not None and state.bad_evals >= config.patience


def _checkpoint(run: _Run, state: LoopState, stopped_early: bool) -> None:
    """Save a checkpoint when one is due (rank 0 writes; every rank contributes its RNG state)."""
    config = run.config
    if state.step % config.checkpoint_every == 0 or state.step == run.total_steps or stopped_early:
        rng = run.dp.gather_rng() if run.dp is not None else None
        if run.main:
            save_checkpoint(run.ckpt_root, step=state.step, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                            loop=state.as_dict(), keep=config.keep_checkpoints, rng_states=rng)


def _epochs(run: _Run, state: LoopState, last_step: int, bar: Any) -> tuple[float, int, bool]:
    """Optimizer steps until ``last_step`` or early stopping: the last training loss, the tokens
    read by this run, and whether it stopped early."""
    config, lengths = run.config, [len(f.input_ids) for f in run.train_set]
    last_loss = state.metrics[-1]["loss"] if state.metrics else float("nan")
    tokens_this_run, stopped_early = 0, False
    while state.step < last_step and not stopped_early:
        batches = bucketed_batches(lengths, config.batch_size, seed=config.seed, epoch=state.epoch)
        while state.batch < len(batches) and state.step < last_step:
            group = batches[state.batch:state.batch + config.grad_accum]
            last_loss, tokens = _step(run, group)
            state.batch += len(group)
            state.step += 1
            state.tokens += tokens
            tokens_this_run += tokens
            entry: dict[str, Any] = {"step": state.step, "loss": last_loss, "lr": run.scheduler.get_last_lr()[0]}
            stopped_early = _validate(run, state, entry)
            state.metrics.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
            _checkpoint(run, state, stopped_early)
            if stopped_early:
                break
        if state.batch >= len(batches):
            state.epoch, state.batch = state.epoch + 1, 0
    return last_loss, tokens_this_run, stopped_early


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
    Activation recomputation, when the config switches it on, is switched off again however the run ends;
    so are the faster LoRA dropout masks (``config.dropout_masks``, :mod:`layered.tuning.dropout`).
    """
    from tqdm.auto import tqdm

    if not train_set:
        raise InputError("the training set is empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _start(model, train_set, val_set, config, pad_id=pad_id, out=out)
    state, resumed_from = _resume(run, resume)
    if config.recomputes_activations:
        _recompute_activations(model, True)
    try:
        with fast_lora_dropout(model, config.dropout_masks == "fast"):
            model.train()
            started = time.perf_counter()
            bar = tqdm(total=run.total_steps, initial=state.step, desc=f"training ({config.method})", unit="step",
                       disable=not (progress and run.main))
            try:
                last_step = run.total_steps if stop_after is None else min(run.total_steps, stop_after)
                last_loss, tokens_this_run, stopped_early = _epochs(run, state, last_step, bar)
            finally:
                bar.close()
    finally:
        if config.recomputes_activations:
            _recompute_activations(model, False)
    seconds = time.perf_counter() - started
    if run.main:
        atomic_write_bytes(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in state.metrics).encode())
        _plot(state.metrics, out / "loss.png")
    vals = [(m["step"], m["val_loss"]) for m in state.metrics if "val_loss" in m]
    return TrainReport(
        steps=state.step, train_loss=last_loss, val_losses=vals, best_val_loss=state.best_val, stopped_early=stopped_early,
        resumed_from=resumed_from, tokens_per_second=tokens_this_run / seconds if seconds else 0.0, seconds=seconds,
        output_dir=str(out),
    )
