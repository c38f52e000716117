"""Load test: `layered serve` with the default medical pipeline, N requests at concurrency C.

    .venv/bin/python benchmarks/serve_load.py [--requests 200] [--concurrency 8] [--backend llamacpp] [--tokens 32]

Builds (or reuses) the medical demo index, starts ``layered serve`` as a real subprocess on a
loopback port, sends POST /ask requests (MedQuAD questions, round robin) from C client
threads, and reports status counts and p50 / p95 / max latency. Any 5xx is a failure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from layered.models import cache_dir
from layered.pipelines import medical


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--backend", choices=["transformers", "llamacpp"], default="llamacpp")
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens per answer")
    args = ap.parse_args()

    pipe, _ = medical.load_or_build(cache_dir() / "demo-medical")
    pipe.generator.max_new_tokens = args.tokens
    folder = Path(tempfile.mkdtemp(prefix="layered-load-")) / "pipeline"
    pipe.save(folder)
    proc = subprocess.Popen([sys.executable, "-m", "layered.cli", "-q", "serve", str(folder), "--port", "0",
                             "--backend", args.backend, "--max-queue", str(args.concurrency * 2)],
                            stderr=subprocess.PIPE, text=True)
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            if not line:
                raise SystemExit("the server exited before listening")
            if "http://" in line:
                url = line[line.index("http://"):].split()[0]
        questions = [json.loads(line)["question"] for line in medical.SAMPLE_PATH.read_text(encoding="utf-8").splitlines()[:50]]
        client = httpx.Client(timeout=httpx.Timeout(connect=5, read=600, write=30, pool=600),
                              limits=httpx.Limits(max_connections=args.concurrency))

        def one(i: int) -> tuple[int, float]:
            t = time.perf_counter()
            response = client.post(url + "/ask", json={"question": questions[i % len(questions)]})
            return response.status_code, time.perf_counter() - t

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    statuses = Counter(code for code, _ in results)
    latencies = sorted(s for _, s in results)
    p95 = latencies[max(0, int(round(0.95 * len(latencies))) - 1)]
    print(f"{args.requests} requests at concurrency {args.concurrency}, backend {args.backend}, up to {args.tokens} new tokens, "
          f"{wall:.0f}s wall ({args.requests / wall:.2f} requests/s)")
    print(f"status codes: {dict(statuses)}; 5xx: {sum(n for c, n in statuses.items() if c >= 500)}")
    print(f"latency: p50 {statistics.median(latencies):.2f}s, p95 {p95:.2f}s, max {latencies[-1]:.2f}s")


if __name__ == "__main__":
    main()
