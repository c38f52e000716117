"""Load test of continuous batching: the generator alone, then `layered serve` of the medical assistant.

    .venv/bin/python benchmarks/serve_load.py [--concurrency 1 4 8 16] [--tokens 128] [--out benchmarks/results/serve_load.md]

Part 1, the generator alone (llama.cpp, the packaged SmolLM2 served F16): 8 short prompts,
up to 128 new tokens each, decoded one at a time and then all 8 together on the same
batching engine; aggregate tokens/s of each.

Part 2, the full RAG load: the medical assistant (full MedQuAD index from the demo cache,
shipped adapter, llama.cpp backend) saved to a temporary folder and served by a real
``layered serve`` subprocess on a loopback port, twice: ``--parallel 1`` (one request at a
time: the baseline, with the same shared-prefix cache) and ``--parallel 8`` (batched). At
each concurrency C, client threads send streamed ``/v1/chat/completions`` requests
(distinct MedQuAD questions, clinician audience, ``max_tokens`` 128) in two shapes: the
issue's 128-token answers (servers started with ``--ignore-eos``, so every answer is exactly
128 tokens, as vLLM's and llama-server's load tests fix the answer length) and the assistant
as shipped (its adapter's short answers, stopping where the model stops). The table reports
requests/s, p50/p95 latency, time to first streamed piece (the client's) and to first token
(the server's), and the server's per-request split: queued, prefill, decode. Any 5xx fails.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from layered.generation.llamacpp_generator import LlamaCppGenerator
from layered.models import cache_dir
from layered.pipelines import medical
from layered.types import Message, Prompt

SHORT = ["Write a long story about a dragon.", "Describe the ocean in detail.", "Explain how computers work, step by step.",
         "Write a long letter to a friend about your holiday.", "Describe a busy city street at night.",
         "Tell me about the history of bread.", "Explain how plants grow, in detail.", "Write a long poem about the moon."]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[max(0, int(round(q * len(values))) - 1)]


def generator_alone(tokens: int) -> dict[str, float]:
    gen = LlamaCppGenerator(max_new_tokens=tokens, parallel=8, loop_ngram=None, whole_sentences=False)
    prompts = [Prompt(messages=(Message("user", q),)) for q in SHORT]
    list(gen.submit(prompts[0], max_new_tokens=8).tokens())  # warm-up

    def run(p: Prompt) -> int:
        return len(list(gen.submit(p).tokens()))

    t = time.perf_counter()
    one = sum(run(p) for p in prompts)
    one_rate = one / (time.perf_counter() - t)
    t = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        many = sum(pool.map(run, prompts))
    many_rate = many / (time.perf_counter() - t)
    gen.close()
    return {"one_tokens": one, "one_rate": one_rate, "many_tokens": many, "many_rate": many_rate}


def prefix_cache_effect(pipe, asks: list[str]) -> list[str]:
    """Mean prefill of real RAG prompts, one at a time, with and without the shared-prefix cache."""
    from layered.generation.llamacpp_batch import BatchEngine

    fast = pipe.serve_with("llamacpp")
    prompts = [fast.generator.encode(fast.build_prompt(q, audience="clinician")) for q in asks]
    weights = fast.generator._load().model_path
    fast.generator.close()
    out = {}
    for cache in (False, True):
        engine = BatchEngine(weights, slots=1, window=fast.generator.context_window, threads=__import__("os").cpu_count(),
                             prefix_cache=cache)
        jobs = []
        for ids in prompts:
            job = engine.submit(ids, max_new_tokens=1)
            list(job.tokens())
            jobs.append(job.stats)
        engine.close()
        out[cache] = (statistics.fmean(s.prefill_s for s in jobs[1:]), statistics.fmean(s.cached_tokens for s in jobs[1:]),
                      statistics.fmean(s.prompt_tokens for s in jobs[1:]))
    return ["## Shared-prefix KV cache: prefill of the medical assistant's RAG prompts, one at a time", "",
            "| prefix cache | prompt tokens | reused from the cache | prefill s (mean of 7) |", "|---|---|---|---|",
            *(f"| {'on' if c else 'off'} | {p:.0f} | {r:.0f} | {t:.3f} |" for c, (t, r, p) in out.items()), ""]


def questions() -> list[str]:
    with gzip.open(medical.KB_PATH, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    seen: dict[str, str] = {}
    for row in rows[::37]:  # spread over the sources; distinct questions
        seen.setdefault(row["question"], row["question"])
    return list(seen)


def serve(folder: Path, parallel: int, max_queue: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "layered.cli", "-q", "serve", str(folder), "--port", "0", "--backend", "llamacpp",
                             "--parallel", str(parallel), "--max-queue", str(max_queue), *extra], stderr=subprocess.PIPE, text=True)
    while True:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("the server exited before listening")
        if "http://" in line:
            url = line[line.index("http://"):].split()[0]
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
            return proc, url


def one_request(client: httpx.Client, url: str, question: str, tokens: int, model: str) -> dict[str, float]:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "stream": True, "max_tokens": tokens,
            "layered": {"variables": {"audience": "clinician"}}}
    t = time.perf_counter()
    first, timing, status = 0.0, {}, 0
    with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        status = response.status_code
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"][0]["delta"].get("content") and not first:
                first = time.perf_counter() - t
            timing = (chunk.get("layered") or {}).get("metadata", {}).get("timing", timing)
    return {"status": status, "latency": time.perf_counter() - t, "first_piece": first, **timing}


def load(url: str, concurrency: int, asks: list[str], tokens: int, model: str) -> dict[str, object]:
    client = httpx.Client(timeout=httpx.Timeout(connect=5, read=600, write=30, pool=600), limits=httpx.Limits(max_connections=concurrency))
    one_request(client, url, "What is glaucoma?", 8, model)  # warm-up, not counted
    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda q: one_request(client, url, q, tokens, model), asks))
    wall = time.perf_counter() - t
    client.close()
    ok = [r for r in results if r["status"] == 200]
    mean = lambda key: statistics.fmean(r.get(key, 0.0) for r in ok) if ok else 0.0  # noqa: E731
    return {
        "n": len(results), "wall": wall, "rps": len(results) / wall, "statuses": dict(Counter(r["status"] for r in results)),
        "p50": statistics.median(r["latency"] for r in results), "p95": pct([r["latency"] for r in results], 0.95),
        "first_p50": statistics.median(r["first_piece"] for r in ok), "ttft_p50": statistics.median(r.get("ttft_s", 0) for r in ok),
        "queued": mean("queued_s"), "prefill": mean("prefill_s"), "decode": mean("decode_s"), "tokens": mean("tokens"),
        "prompt": mean("prompt_tokens"), "cached": mean("cached_tokens"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--tokens", type=int, default=128, help="max new tokens per answer")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client thread at each concurrency (at least 8 requests)")
    ap.add_argument("--out", type=Path, help="write the Markdown report here too")
    args = ap.parse_args()
    lines = ["# Serving load: continuous batching on llama.cpp", "",
             f"Machine: {__import__('os').cpu_count()} CPU cores; `benchmarks/serve_load.py` (this file's docstring says how).", ""]

    alone = generator_alone(args.tokens)
    lines += ["## The generator alone: 8 short prompts, up to 128 new tokens each", "",
              "| decoding | tokens | aggregate tokens/s | ratio |", "|---|---|---|---|",
              f"| one at a time | {alone['one_tokens']} | {alone['one_rate']:.1f} | 1.00x |",
              f"| 8 together (one batch per step) | {alone['many_tokens']} | {alone['many_rate']:.1f} | "
              f"**{alone['many_rate'] / alone['one_rate']:.2f}x** |", ""]
    print("\n".join(lines), flush=True)

    pipe, _ = medical.load_or_build(cache_dir() / "demo-medical")
    folder = Path(tempfile.mkdtemp(prefix="layered-load-")) / "pipeline"
    pipe.save(folder)
    asks = questions()
    lines += prefix_cache_effect(pipe, asks[-8:])
    print("\n".join(lines[-6:]), flush=True)
    # Two load shapes: 128-token answers (the shape: servers run with --ignore-eos, so
    # every answer is exactly --tokens long, as vLLM's and llama-server's load tests do), and the
    # assistant as shipped (its adapter answers in ~45 words and stops, so prefill dominates).
    shapes = [("128-token answers (adapter: base)", "layered:base", args.concurrency, ["--ignore-eos"]),
              ("as shipped (adapter: medical)", "layered", [8], [])]
    rows = []
    for shape, model, concurrencies, extra in shapes:
        for label, parallel in (("one at a time", 1), ("batched", 8)):
            proc, url = serve(folder, parallel, max_queue=64, extra=extra)
            try:
                for c in concurrencies:
                    n = max(8, c * args.rounds)
                    start = sum(max(8, d * args.rounds) for d in concurrencies[:concurrencies.index(c)])
                    r = load(url, c, asks[start:start + n], args.tokens, model)
                    rows.append((shape, label, c, r))
                    print(shape, label, c, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    table = ["## The medical assistant over HTTP (`layered serve`, streamed chat completions, up to 128 new tokens)", "",
             "Same questions for both servers (distinct at every concurrency). Latency and first piece are the client's; "
             "first token, queued, prefill and decode are the server's means per request (prefill: slot taken -> first token).", "",
             "| answers | server | concurrency | requests | requests/s | p50 s | p95 s | first piece p50 s | first token p50 s | queued s "
             "| prefill s | decode s | prompt tok (cached) | answer tok | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for shape, label, c, r in rows:
        table.append(f"| {shape} | {label} | {c} | {r['n']} | {r['rps']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['first_p50']:.2f} "
                     f"| {r['ttft_p50']:.2f} | {r['queued']:.2f} | {r['prefill']:.2f} | {r['decode']:.2f} "
                     f"| {r['prompt']:.0f} ({r['cached']:.0f}) | {r['tokens']:.0f} | {r['statuses']} |")
    by = {(shape, label, c): r for shape, label, c, r in rows}
    summary = []
    for shape, _, concurrencies, _ in shapes:
        for c in concurrencies:
            one, many = by[(shape, "one at a time", c)], by[(shape, "batched", c)]
            summary.append(f"- {shape}, concurrency {c}: batched {many['rps'] / one['rps']:.2f}x the requests/s, p95 {many['p95']:.1f} s "
                           f"vs {one['p95']:.1f} s")
    fives = sum(n for *_, r in rows for code, n in r["statuses"].items() if int(code) >= 500)
    summary.append(f"- 5xx responses in all runs: {fives}")
    lines += table + [""] + summary + [""]
    print("\n".join(table + [""] + summary))
    if args.out:
        args.out.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
