"""Training throughput: layered's trainer vs a plain transformers Trainer + PEFT LoRA, one script.

    .venv/bin/python benchmarks/training_throughput.py [--steps 12] [--batch 8] [--examples 96] [--checkpointing on|off]
        [--recipe support] [--tuned-only] [--eval 32]

Same model (SmolLM2-135M from the packaged GGUF), same LoRA config, same Bitext examples
formatted the same way, same batch size and number of optimizer steps, the same gradient
checkpointing setting on every row (layered's default for LoRA: on). Throughput counts real
(non-padding) tokens per second of wall time. Each side starts from a fresh copy of the base
model. Rows: the Trainer as configured before (fp32, random batches), the *well-configured*
Trainer (``bf16=True``, ``train_sampling_strategy="group_by_length"``, transformers 5's name for
``group_by_length=True``), layered fp32 and layered with bf16 autocast (length-bucketed batches),
each with layered's default LoRA dropout masks (``--dropout-masks torch fast`` adds rows with
torch's dropout, which the Trainer's PEFT layers use, to separate the two).

``--recipe support`` trains on what the shipped ``policy`` adapter trains on instead: its
recipe's examples formatted by the support assistant with retrieved passages (RAG prompts of
several hundred tokens with a short answer: the workload ``Pipeline.fit`` serves), with the
assistant's own prompt; ``--tuned-only`` keeps the two bf16 rows (the anchor and layered).

Model FLOP utilisation: 6 x parameters x real tokens/s (the usual training-FLOPs convention)
over this CPU's measured matmul peak in the row's precision (best of a few 2048x2048 matmuls,
same threads). LoRA skips the frozen weights' gradients but recomputes activations with
checkpointing, so the true work is near 6N per token here; the convention is kept for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from layered import Pipeline
from layered.generation.transformers_generator import TransformersGenerator
from layered.prompts.template import ChatPromptTemplate
from layered.tuning.config import TuneConfig
from layered.tuning.data import load_examples
from layered.tuning.formatting import IGNORE, format_example
from layered.adapters.methods import apply_method
from layered.tuning.trainer import evaluate_loss, train

DATA = "examples/data/bitext_support_sample.csv"
PROMPT = ChatPromptTemplate(system="You are a friendly customer-support agent for an online shop.", abstain=False)


BASE = Path(tempfile.gettempdir()) / "layered-bench"
_WEIGHTS: dict = {}


def fresh_model():  # type: ignore[no-untyped-def]
    """A fresh fp32 copy of the base model without the GGUF quantization tag (the Trainer
    refuses tagged models even though transformers has dequantised their weights)."""
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(_WEIGHTS["config"])
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(_WEIGHTS["state"])
    return model


def matmul_peak(dtype_name: str, n: int = 2048, repeats: int = 10) -> float:
    """Best achieved FLOP/s of an n x n matmul in ``dtype_name`` on this CPU."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def baseline(model, feats, config: TuneConfig, pad_id: int, out: str, *, tuned: bool, checkpointing: bool) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """The Trainer's wall time and the real tokens of the batches it trained on (its sampler
    chooses them; counted at the model's forward, since the data loader reads one batch ahead)."""
    import torch
    from transformers import Trainer, TrainingArguments

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(feats)

        def __getitem__(self, i: int) -> dict[str, list[int]]:
            return {"input_ids": feats[i].input_ids, "labels": feats[i].labels}

    def collate(rows):  # type: ignore[no-untyped-def]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id)
        labels = torch.full((len(rows), width), IGNORE)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[j, :n], labels[j, :n], mask[j, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=config.batch_size, max_steps=config.max_steps, learning_rate=config.learning_rate,
        warmup_steps=int(config.warmup_ratio * config.max_steps), lr_scheduler_type="linear", logging_steps=1000, save_strategy="no", report_to=[],
        use_cpu=True, seed=config.seed, dataloader_num_workers=0, disable_tqdm=True, max_grad_norm=config.max_grad_norm,
        bf16=tuned, train_sampling_strategy="group_by_length" if tuned else "random",
        gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    if checkpointing:
        model.enable_input_require_grads()  # PEFT + checkpointing: the frozen embeddings' output must carry grads
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate)
    seen = [0]

    def count(module, args, kwargs):  # type: ignore[no-untyped-def]
        seen[0] += int(kwargs["attention_mask"].sum())

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    hook.remove()
    return elapsed, seen[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--examples", type=int, default=96)
    ap.add_argument("--checkpointing", choices=["on", "off"], default="on")
    ap.add_argument("--recipe", choices=["support"], help="train on a shipped adapter's RAG-formatted recipe examples")
    ap.add_argument("--tuned-only", action="store_true", help="only the bf16 rows (the well-configured Trainer and layered)")
    ap.add_argument("--eval", type=int, default=32, help="training examples the loss after is measured on (default 32)")
    ap.add_argument("--dropout-masks", nargs="+", choices=["fast", "torch"], default=["fast"],
                    help="layered rows for these LoRA dropout masks (default: fast, layered's default; torch: torch's dropout, as the Trainer)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every row this many times, alternating the sides (median reported)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    checkpointing = args.checkpointing == "on"
    if args.recipe:
        from layered.pipelines import support
        from layered.pipelines.shipped import ShippedAdapter
        from layered.tuning.fit import read_recipe, recipe_examples

        pipe, _ = support.load_or_build(BASE / "support-index", adapter=False)
        examples = recipe_examples(read_recipe(ShippedAdapter.named(args.recipe).folder / "recipe.toml")[1])[: args.examples]
        gen = pipe.generator
    else:
        examples = load_examples(DATA)[: args.examples]
        gen = TransformersGenerator(max_new_tokens=8)
        pipe = Pipeline(generator=gen, prompt=PROMPT)
    _WEIGHTS.update(config=gen.model.config, state={k: v.clone() for k, v in gen.model.state_dict().items()})
    feats = [format_example(pipe, e) for e in examples]
    pad_id = gen.tokenizer.pad_token_id if gen.tokenizer.pad_token_id is not None else gen.tokenizer.eos_token_id
    config = TuneConfig(rank=16, alpha=32, max_steps=args.steps, batch_size=args.batch, learning_rate=1e-3, checkpoint_every=10_000,
                        eval_every=10_000, gradient_checkpointing=checkpointing)
    params = sum(p.numel() for p in gen.model.parameters())
    peaks = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16")}
    real_tokens_per_epoch = sum(len(f.input_ids) for f in feats)
    trainers = (("transformers Trainer + PEFT LoRA (fp32, random batches)", False),
                ("transformers Trainer + PEFT LoRA (bf16, group_by_length)", True))
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (label, precision) -> (tokens/s, loss) per round
    for _ in range(args.rounds):  # rounds alternate the sides, so a slow spell of this VM hits both
        for label, tuned in trainers[1:] if args.tuned_only else trainers:
            model = apply_method(fresh_model(), config)
            t, tokens = baseline(model, feats, config, pad_id, str(BASE / "trainer"), tuned=tuned, checkpointing=checkpointing)
            model.eval()
            runs.setdefault((label, "bfloat16" if tuned else "float32"), []).append(
                (tokens / t, evaluate_loss(model, feats[: args.eval], pad_id=pad_id)))
        for precision in ("bfloat16",) if args.tuned_only else ("float32", "bfloat16"):
            for masks in args.dropout_masks:
                model = apply_method(fresh_model(), config)
                cfg = config.model_copy(update={"precision": precision, "dropout_masks": masks})
                # No validation set: the Trainer rows validate nothing either, so both sides do the same work.
                report = train(model, feats, [], cfg, out_dir=BASE / precision, pad_id=pad_id, progress=False)
                runs.setdefault((f"layered ({precision}, length-bucketed, {masks} dropout masks)", precision), []).append(
                    (report.tokens_per_second, evaluate_loss(model, feats[: args.eval], pad_id=pad_id)))
    rows = [(label, statistics.median(r for r, _ in seen), statistics.median(v for _, v in seen), precision, [r for r, _ in seen])
            for (label, precision), seen in runs.items()]
    lines = [f"{len(feats)} examples, {args.steps} steps of batch {args.batch}, gradient checkpointing {args.checkpointing}; "
             f"{params / 1e6:.1f}M parameters; matmul peak fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, "
             f"bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s; data: "
             f"{'the ' + args.recipe + ' recipe, RAG-formatted' if args.recipe else 'the Bitext sample, no retrieval'}, "
             f"{real_tokens_per_epoch / len(feats):.0f} tokens per example on average", "",
             f"{args.rounds} rounds, the sides alternating; tokens/s: the median (every round's in brackets)", "",
             f"| trainer | tokens/s | vs well-configured Trainer | loss after ({args.eval} train ex.) | MFU |", "|---|---|---|---|---|"]
    anchor = rows[0 if args.tuned_only else 1][1]
    for label, rate, loss, precision, each in rows:
        mfu = 6 * params * rate / peaks[precision]
        lines.append(f"| {label} | {rate:.0f} ({', '.join(f'{r:.0f}' for r in each)}) | {rate / anchor:.2f}x | {loss:.4f} | {mfu:.1%} |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text("# Training throughput (LoRA r=16, SmolLM2-135M, this CPU)\n\n`benchmarks/training_throughput.py`\n\n"
                            + "\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
