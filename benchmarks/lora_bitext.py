"""LoRA on real support data: validation loss and answer quality before/after, one run.

    .venv/bin/python benchmarks/lora_bitext.py [--steps 40] [--train 240] [--test 16] [--out DIR]

Fine-tunes SmolLM2-135M-Instruct (packaged, CPU) with LoRA on the bundled Bitext sample
through ``Pipeline.fit`` (the prompts it serves), then reports validation loss per answer
token and token-F1 / ROUGE-L of greedy answers against the references on a held-out test
split (split by near-duplicate groups, seeded; nothing is tuned on the test split).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from layered import Pipeline
from layered.evaluation.metrics import rouge_l, token_f1
from layered.generation.transformers_generator import TransformersGenerator
from layered.prompts.template import ChatPromptTemplate
from layered.tuning.config import ALL_LINEAR, TuneConfig
from layered.tuning.data import clean, data_report, load_examples, split

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "bitext_support_sample.csv"
PROMPT = ChatPromptTemplate(system="You are a friendly customer-support agent for an online shop.", abstain=False)


def scores(pipe: Pipeline, examples) -> tuple[float, float, list[str]]:
    answers = [pipe.ask(e.question).text for e in examples]
    f1 = statistics.mean(token_f1(a, e.answer) for a, e in zip(answers, examples))
    rl = statistics.mean(rouge_l(a, e.answer) for a, e in zip(answers, examples))
    return f1, rl, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--test", type=int, default=16)
    ap.add_argument("--out", default="layered-lora-bitext", help="run folder (checkpoints, metrics.jsonl, loss.png)")
    args = ap.parse_args()
    examples, report = clean(load_examples(DATA, keep=["intent"]), max_chars=1500)
    print(report)
    parts = split(examples, validation=0.1, test=0.1, seed=0)
    train, val, test = parts.train[: args.train], parts.validation[:40], parts.test[: args.test]
    print(data_report(train, title="train"))
    pipe = Pipeline(generator=TransformersGenerator(max_new_tokens=96), prompt=PROMPT)
    f1_0, rl_0, before = scores(pipe, test)
    config = TuneConfig(rank=16, alpha=32, learning_rate=1e-3, max_steps=args.steps, batch_size=4, eval_every=10,
                        checkpoint_every=20, target_modules=ALL_LINEAR)
    t = time.perf_counter()
    fit = pipe.fit(train, val=val, config=config, out_dir=args.out, progress=True)
    seconds = time.perf_counter() - t
    f1_1, rl_1, after = scores(pipe, test)
    print(f"\ntraining: {fit.steps} steps in {seconds:.0f}s, {fit.tokens_per_second:.0f} tokens/s")
    print("validation loss per answer token: " + ", ".join(f"step {s}: {v:.3f}" for s, v in fit.val_losses))
    print(fit.forgetting)
    print(f"\n| | token F1 | ROUGE-L |\n|---|---|---|\n| base | {f1_0:.3f} | {rl_0:.3f} |\n| LoRA | {f1_1:.3f} | {rl_1:.3f} |")
    for e, a, b in list(zip(test, before, after))[:2]:
        print(f"\nQ: {e.question}\nreference: {e.answer[:300]}\nbase: {a[:300]}\nLoRA: {b[:300]}")
    print(f"\nloss curve: {args.out}/loss.png; metrics: {args.out}/metrics.jsonl")


if __name__ == "__main__":
    main()
