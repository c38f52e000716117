"""Every tuning method on the same data, measured: the method comparison table.

    .venv/bin/python benchmarks/tuning_methods.py [--steps 20] [--train 96] [--out FILE.md]

Fine-tunes SmolLM2-135M-Instruct (packaged, CPU, precision "auto") with each method on the
same Bitext training pairs through ``Pipeline.fit`` and reports, per method: trainable
parameters, adapter size on disk, training seconds per step, validation loss per answer
token before and after, the change in perplexity on general text (the forgetting check),
and generation latency per token against the base model measured in the same run (fixed
32 new tokens, greedy). LoRA is measured again after ``merge_adapter()``: merged weights
should cost nothing at inference.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from layered import Pipeline
from layered.generation.transformers_generator import TransformersGenerator
from layered.prompts.template import ChatPromptTemplate
from layered.tuning.config import ALL_LINEAR, TuneConfig
from layered.tuning.data import clean, load_examples, split
from layered.adapters.methods import count_parameters

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "bitext_support_sample.csv"
PROMPT = ChatPromptTemplate(system="You are a friendly customer-support agent for an online shop.", abstain=False)
NEW_TOKENS = 32
METHODS: dict[str, dict] = {
    "lora": {"rank": 16, "alpha": 32, "learning_rate": 1e-3},
    "lora (DoRA)": {"method": "lora", "rank": 16, "alpha": 32, "learning_rate": 1e-3, "dora": True},
    "ia3": {"learning_rate": 3e-3},
    "prefix": {"virtual_tokens": 16, "learning_rate": 3e-3},
    "bottleneck": {"bottleneck": 64, "learning_rate": 1e-3},
    "selective": {"top_layers": 2, "learning_rate": 1e-4},
    "full": {"learning_rate": 2e-5},
}


def ms_per_token(gen: TransformersGenerator, prompts, repeats: int = 2) -> float:
    """Median milliseconds per generated token over ``prompts`` (exactly NEW_TOKENS each, greedy)."""
    import torch

    def run(prompt) -> None:
        with torch.inference_mode():
            gen.model.generate(**gen.encode(prompt), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                               pad_token_id=gen.tokenizer.eos_token_id)

    run(prompts[0])  # warm-up, untimed
    times = []
    for _ in range(repeats):
        for prompt in prompts:
            t = time.perf_counter()
            run(prompt)
            times.append((time.perf_counter() - t) * 1000 / NEW_TOKENS)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--train", type=int, default=96)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--out", default="benchmarks/results/tuning_methods.md")
    args = ap.parse_args()
    examples, _ = clean(load_examples(DATA, keep=["intent"]), max_chars=1500)
    parts = split(examples, validation=0.1, test=0.1, seed=0)
    train, val = parts.train[: args.train], parts.validation[:24]
    base = TransformersGenerator(max_new_tokens=NEW_TOKENS)
    base_model, tokenizer = base.model, base.tokenizer
    prompts = [Pipeline(generator=base, prompt=PROMPT).build_prompt(e.question) for e in val[:3]]
    base_ms = [ms_per_token(base, prompts)]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="layered-methods-"))
    for label in args.methods:
        options = dict(METHODS[label])
        options.setdefault("method", label)
        config = TuneConfig(**options, max_steps=args.steps, batch_size=4, eval_every=args.steps, checkpoint_every=args.steps,
                            target_modules=ALL_LINEAR)
        gen = TransformersGenerator.from_objects(copy.deepcopy(base_model), tokenizer, name=base.model_name, max_new_tokens=NEW_TOKENS)
        pipe = Pipeline(generator=gen, prompt=PROMPT)
        fit = pipe.fit(train, val=val, config=config, out_dir=work / f"{label}.run", progress=False)
        trainable, total = count_parameters(gen.model)
        saved = pipe.save(work / label.replace(" ", "_").replace("(", "").replace(")", "")) / "generator" / "adapters"
        size = sum(f.stat().st_size for f in saved.iterdir())
        rows.append({
            "method": label, "trainable": trainable, "share": trainable / total, "size_mb": size / 1e6,
            "s_per_step": fit.seconds / fit.steps, "val_before": fit.val_losses[0][1], "val_after": fit.val_losses[-1][1],
            "ppl_change": fit.forgetting.change, "ms_per_token": ms_per_token(gen, prompts),
        })
        print(f"{label}: {rows[-1]}", flush=True)
        if label == "lora":
            gen.merge_adapter()
            rows.append({**rows[-1], "method": "lora, merged", "ms_per_token": ms_per_token(gen, prompts), "merged": True})
        del gen, pipe
    base_ms.append(ms_per_token(base, prompts))  # the base again at the end: how noisy the machine was
    ref = statistics.mean(base_ms)
    lines = [
        f"SmolLM2-135M-Instruct, {len(train)} Bitext pairs, {args.steps} steps of batch 4, validation on {len(val)} pairs; "
        f"base model {base_ms[0]:.1f} / {base_ms[1]:.1f} ms per token (start / end of run).",
        "",
        "| method | trainable params | share | adapter on disk | s / step | val loss before → after | general-text perplexity | ms / token | added latency |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = "— (merged into the base)" if r.get("merged") else f"{r['size_mb']:.2f} MB"
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {r['share']:.2%} | {size} | {r['s_per_step']:.2f} | "
            f"{r['val_before']:.3f} → {r['val_after']:.3f} | {r['ppl_change']:+.1%} | {r['ms_per_token']:.1f} | "
            f"{r['ms_per_token'] / ref - 1:+.0%} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
