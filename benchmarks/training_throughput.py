"""Training throughput: layered's trainer vs a plain transformers Trainer + PEFT LoRA, one script.

    .venv/bin/python benchmarks/training_throughput.py [--steps 12] [--batch 8] [--examples 96]

Same model (SmolLM2-135M from the packaged GGUF), same LoRA config, same Bitext examples
formatted the same way, same batch size and number of optimizer steps. Throughput counts
real (non-padding) tokens per second of wall time. Each side starts from a fresh copy of the
base model. Rows: the Trainer baseline (random batches, padding to the longest in batch),
layered fp32 (length-bucketed batches) and layered with bf16 autocast.
"""

from __future__ import annotations

import argparse
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


def baseline(model, feats, config: TuneConfig, pad_id: int, out: str) -> float:  # type: ignore[no-untyped-def]
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
    )
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--examples", type=int, default=96)
    args = ap.parse_args()
    examples = load_examples(DATA)[: args.examples]
    gen = TransformersGenerator(max_new_tokens=8)
    _WEIGHTS.update(config=gen.model.config, state={k: v.clone() for k, v in gen.model.state_dict().items()})
    pipe = Pipeline(generator=gen, prompt=PROMPT)
    feats = [format_example(pipe, e) for e in examples]
    pad_id = gen.tokenizer.pad_token_id if gen.tokenizer.pad_token_id is not None else gen.tokenizer.eos_token_id
    config = TuneConfig(rank=16, alpha=32, max_steps=args.steps, batch_size=args.batch, learning_rate=1e-3, checkpoint_every=10_000, eval_every=10_000)
    # Every optimizer step sees batch_size examples on both sides, so the real tokens
    # processed are the same expected amount; count them exactly per side below.
    real_tokens_per_epoch = sum(len(f.input_ids) for f in feats)
    steps_per_epoch = -(-len(feats) // args.batch)
    tokens = real_tokens_per_epoch * args.steps / steps_per_epoch
    rows = []
    t = baseline(apply_method(fresh_model(), config), feats, config, pad_id, str(BASE / "trainer"))
    rows.append(("transformers Trainer + PEFT LoRA (fp32)", tokens / t))
    for precision in ("float32", "bfloat16"):
        model = apply_method(fresh_model(), config)
        cfg = config.model_copy(update={"precision": precision})
        report = train(model, feats, feats[:8], cfg, out_dir=BASE / precision, pad_id=pad_id, progress=False)
        loss = evaluate_loss(model, feats[:32], pad_id=pad_id)
        rows.append((f"layered ({precision}, length-bucketed)", report.tokens_per_second, loss))
    print(f"{len(feats)} examples, {args.steps} steps of batch {args.batch}\n")
    print("| trainer | tokens/s | ratio vs Trainer | loss after (32 train ex.) |\n|---|---|---|---|")
    base = rows[0][1]
    for row in rows:
        loss = f"{row[2]:.3f}" if len(row) > 2 else "-"
        print(f"| {row[0]} | {row[1]:.0f} | {row[1] / base:.2f}x | {loss} |")


if __name__ == "__main__":
    main()
