"""Peak memory and speed of LoRA training on long RAG prompts, with and without gradient checkpointing.

    .venv/bin/python benchmarks/training_memory.py [--steps 3] [--batch 4] [--docs 300]

The medical assistant's setting: MedQuAD questions formatted with 4 retrieved passages
(about 1,000-1,400 tokens each) plus the reference answer, SmolLM2-135M, LoRA r=16 on every
linear layer, bf16 autocast. Each setting runs in its own fresh process (peak RSS is per
process); the same examples, steps and seed go to both. Prints peak RSS before and after
training, training tokens/s and the final training loss, then the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile


def run_one(recompute: bool, steps: int, batch: int, docs: int) -> dict:
    from layered.pipelines import medical
    from layered.pipeline import Pipeline
    from layered.retrieval.loaders import load_documents
    from layered.tuning.config import short_lora

    corpus = load_documents(medical.SAMPLE_PATH)[:docs]
    pipe = Pipeline.from_defaults(corpus, prompt=medical.MEDICAL_PROMPT, max_new_tokens=96)
    keep = {d.id for d in corpus}
    train = [e for e in medical.comparison_splits().train if e.metadata["doc_ids"][0] in keep][: steps * batch]
    pipe.generator.warm_up()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = short_lora(steps).model_copy(update={"batch_size": batch, "gradient_checkpointing": recompute, "eval_every": steps})
    report = pipe.fit(train, val=train[:2], config=config, out_dir=tempfile.mkdtemp(), progress=False, check_forgetting=False)
    return {"gradient_checkpointing": recompute, "peak_rss_mb_before": before,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "tokens_per_second": report.tokens_per_second, "train_loss": report.train_loss, "examples": len(train)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--docs", type=int, default=300, help="MedQuAD pages to index (the questions come from these)")
    ap.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one == "on", args.steps, args.batch, args.docs)))
        return
    rows = []
    for one in ("off", "on"):
        done = subprocess.run([sys.executable, __file__, "--one", one, "--steps", str(args.steps), "--batch", str(args.batch),
                               "--docs", str(args.docs)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| gradient checkpointing | peak RSS MB (model loaded) | peak RSS MB (after training) | tokens/s | final train loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['gradient_checkpointing'] else 'off'} | {r['peak_rss_mb_before']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['tokens_per_second']:.0f} | {r['train_loss']:.4f} |")
    off, on = rows
    print(f"\npeak memory on/off: {on['peak_rss_mb'] / off['peak_rss_mb']:.2f}x; "
          f"speed on/off: {on['tokens_per_second'] / off['tokens_per_second']:.2f}x ({off['examples']} examples each)")


if __name__ == "__main__":
    main()
