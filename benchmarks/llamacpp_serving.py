"""llama.cpp + exported LoRA vs transformers + PEFT: greedy agreement and generation speed, one run.

    .venv/bin/python benchmarks/llamacpp_serving.py [--steps 30] [--prompts 20] [--tokens 64]

Tunes a LoRA adapter on the bundled Bitext pairs (SmolLM2-135M-Instruct, through
``Pipeline.fit``), exports it to a GGUF LoRA, and on held-out questions (the same token ids
for both backends) reports, for llama.cpp serving the Q4_1 GGUF's weights widened to F16
(the default) and as stored (``precision="native"``):

- agreement: how many of the prompts give the same first 16 greedy token ids with
  llama.cpp + GGUF adapter as with transformers + PEFT adapter (repetition penalty off);
  two controls: llama.cpp without the adapter against the same transformers outputs (is
  the adapter applied at all?) and the two base models against each other (how much the
  backends' own arithmetic differs: on native Q4_1 weights llama.cpp quantises activations
  to 8 bits);
- fidelity of the export: the shift the adapter causes in the next-token logits, llama.cpp
  (with minus without the GGUF adapter) against transformers (with minus without PEFT);
- speed: generated tokens per second of llama.cpp + adapter (both weight precisions) and of
  transformers with the LoRA merged into its weights, on the same prompts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from layered import Pipeline
from layered.adapters.runtime import serving
from layered.generation.llamacpp_batch import Sampling
from layered.generation.llamacpp_generator import PRECISIONS, LlamaCppGenerator
from layered.generation.transformers_generator import TransformersGenerator
from layered.prompts.template import ChatPromptTemplate
from layered.tuning.config import ALL_LINEAR, TuneConfig
from layered.tuning.data import clean, load_examples, split

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "bitext_support_sample.csv"
PROMPT = ChatPromptTemplate(system="You are a friendly customer-support agent for an online shop.", abstain=False)
AGREE = 16


def hf_tokens(gen: TransformersGenerator, ids: list[int], n: int) -> list[int]:
    import torch

    inputs = torch.tensor([ids])
    with torch.inference_mode():
        out = gen.model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=n, do_sample=False,
                                 repetition_penalty=1.0, pad_token_id=gen.tokenizer.eos_token_id)
    return out[0, len(ids):].tolist()


def cpp_tokens(gen: LlamaCppGenerator, ids: list[int], n: int) -> list[int]:
    """Raw greedy tokens (no repeat penalty, no guard) through the generator's batching engine."""
    return list(gen._load().submit(ids, adapter=gen.default_adapter, max_new_tokens=n, sampling=Sampling(repeat_penalty=1.0)).tokens())


def cpp_logits(gen: LlamaCppGenerator, ids: list[int]):
    return gen._load().logits(ids, adapter=gen.default_adapter).astype(np.float64)


def hf_logits(gen: TransformersGenerator, ids: list[int], adapter: str | None):
    import torch

    with serving(gen.model, adapter), torch.no_grad():
        return gen.model(input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per prompt in the speed test")
    args = ap.parse_args()
    examples, _ = clean(load_examples(DATA, keep=["intent"]), max_chars=1500)
    parts = split(examples, validation=0.1, test=0.1, seed=0)
    gen = TransformersGenerator(max_new_tokens=AGREE)
    pipe = Pipeline(generator=gen, prompt=PROMPT)
    config = TuneConfig(rank=16, alpha=32, learning_rate=1e-3, max_steps=args.steps, batch_size=4, eval_every=args.steps,
                        checkpoint_every=args.steps, target_modules=ALL_LINEAR)
    work = Path(tempfile.mkdtemp(prefix="layered-llamacpp-"))
    fit = pipe.fit(parts.train[:160], val=parts.validation[:16], config=config, out_dir=work / "run", progress=False)
    print(f"LoRA: {fit.steps} steps, validation loss {fit.val_losses[0][1]:.3f} -> {fit.val_losses[-1][1]:.3f}")
    questions = [e.question for e in (parts.test + parts.validation[16:])][: args.prompts]
    prompts = [gen.encode(pipe.build_prompt(q))["input_ids"][0].tolist() for q in questions]
    reference = [hf_tokens(gen, ids, AGREE) for ids in prompts]
    with serving(gen.model, None):
        base_reference = [hf_tokens(gen, ids, AGREE) for ids in prompts]
    served = {p: pipe.serve_with("llamacpp", adapter_dir=work, precision=p).generator for p in PRECISIONS}
    n = len(prompts)
    print(f"\nagreement with transformers on the first {AGREE} greedy tokens, {n} prompts, by llama.cpp weights:\n")
    print("| llama.cpp weights | + exported LoRA vs + PEFT LoRA | control: no adapter vs the same | control: base vs base "
          "| adapter's logit shift, cosine median (min) |\n|---|---|---|---|---|")
    for precision, fast in served.items():
        plain = LlamaCppGenerator(max_new_tokens=AGREE, precision=precision)
        with_adapter = [cpp_tokens(fast, ids, AGREE) for ids in prompts]
        without = [cpp_tokens(plain, ids, AGREE) for ids in prompts]
        cosines = []
        for ids in prompts:
            shift_hf = hf_logits(gen, ids, "default") - hf_logits(gen, ids, None)
            shift_cpp = cpp_logits(fast, ids) - cpp_logits(plain, ids)
            cosines.append(float(shift_hf @ shift_cpp / (np.linalg.norm(shift_hf) * np.linalg.norm(shift_cpp))))
        print(f"| {precision} | {sum(map(list.__eq__, reference, with_adapter))}/{n} | {sum(map(list.__eq__, reference, without))}/{n} "
              f"| {sum(map(list.__eq__, base_reference, without))}/{n} | {statistics.median(cosines):.4f} ({min(cosines):.4f}) |")

    gen.merge_adapter()
    runs = {"transformers + merged LoRA": lambda ids: hf_tokens(gen, ids, args.tokens)}
    for precision, fast in served.items():
        runs[f"llama.cpp ({precision}) + GGUF LoRA"] = lambda ids, fast=fast: cpp_tokens(fast, ids, args.tokens)
    timings = {}
    for label, run in runs.items():
        run(prompts[0])  # warm-up
        t, count = time.perf_counter(), 0
        for ids in prompts:
            count += len(run(ids))
        timings[label] = count / (time.perf_counter() - t)
    base = timings["transformers + merged LoRA"]
    print("\n| backend | tokens/s | speed-up |\n|---|---|---|")
    for label, rate in timings.items():
        print(f"| {label} | {rate:.1f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
