"""Scale curves of the vector stores: build time, memory, query latency, recall, filtered queries.

    .venv/bin/python benchmarks/scale.py [--sizes 10000 100000 1000000] [--milvus-max 100000] [--out benchmarks/results/scale.md]

Vectors are synthetic above what this machine can embed in a session: 384-d (all-MiniLM-L6-v2's
size), drawn around 2,000 random centres (a clustered cloud, closer to real text embeddings than
uniform noise, on which every ANN index looks worse), L2-normalised; queries are 200 held-out
points of the same distribution. For each size and option: build time (add + train), memory (the
serialised index, or for Milvus the RSS growth of its server process), single-query latency p50
and p95 at k=10, recall@10 against exact search, and the p50 of a filtered query that keeps 10% of
the vectors (the shape of an access-control filter: FAISS with an ID selector inside the search,
Milvus with a scalar expression, searched with Bounded consistency after a flush: a Strong
search waited about 0.4 s per query for the server's timestamp tick). Options: FAISS flat (exact), FAISS HNSW (M=32, efSearch=128, as
``FaissStore`` builds it), FAISS IVF-Flat (nlist = 4*sqrt(n), nprobe = 16) and a Milvus 2.3
standalone server on loopback (HNSW, M=32, ef=128) up to ``--milvus-max`` vectors.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM, K, QUERIES = 384, 10, 200


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    def cloud(m: int) -> np.ndarray:
        x = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal((m, DIM)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return cloud(n), cloud(QUERIES)


def latencies(search, queries: np.ndarray) -> list[float]:
    out = []
    for q in queries:
        t = time.perf_counter()
        search(q[None, :])
        out.append(1000 * (time.perf_counter() - t))
    return out


def faiss_option(name: str, x: np.ndarray, queries: np.ndarray, truth: np.ndarray, allowed: np.ndarray) -> dict:
    import faiss

    n = len(x)
    t = time.perf_counter()
    if name == "flat":
        index = faiss.IndexFlatIP(DIM)
        params = faiss.SearchParameters
    elif name == "hnsw":
        index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
        params = lambda **kw: faiss.SearchParametersHNSW(efSearch=128, **kw)  # noqa: E731
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x[np.random.default_rng(1).choice(n, min(n, 40 * nlist), replace=False)])
        index.nprobe = 16
        params = lambda **kw: faiss.SearchParametersIVF(nprobe=16, **kw)  # noqa: E731
    index.add(x)
    build = time.perf_counter() - t
    memory = faiss.serialize_index(index).nbytes / 2**20
    lat = latencies(lambda q: index.search(q, K), queries)
    _, found = index.search(queries, K)
    recall = np.mean([len(set(f) & set(g)) / K for f, g in zip(found, truth)])
    selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
    filtered = latencies(lambda q: index.search(q, K, params=params(sel=selector)), queries)
    return {"build_s": build, "memory_mb": memory, "p50": statistics.median(lat), "p95": float(np.percentile(lat, 95)),
            "recall": recall, "filtered_p50": statistics.median(filtered)}


def milvus_option(x: np.ndarray, queries: np.ndarray, truth: np.ndarray, groups: np.ndarray, server) -> dict:
    import psutil
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=server.uri)
    name = f"scale_{len(x)}"
    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("group", DataType.INT64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": 32, "efConstruction": 200})
    proc = psutil.Process(server._server.server_proc.pid)
    before = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    t = time.perf_counter()
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    for start in range(0, len(x), 5000):
        rows = [{"id": i, "group": int(groups[i]), "vector": x[i].tolist()} for i in range(start, min(len(x), start + 5000))]
        client.insert(name, rows)
    client.flush(name)
    client.load_collection(name)
    client.search(name, [queries[0].tolist()], limit=K)  # the index is complete and loaded
    build = time.perf_counter() - t
    after = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    # Bounded consistency for queries (the collection is flushed and loaded): a Strong search waits
    # for the server's next timestamp tick, about 0.4 s here, whatever the index.
    search = lambda q, **kw: client.search(name, [q[0].tolist()], limit=K, search_params={"params": {"ef": 128}},  # noqa: E731
                                           consistency_level="Bounded", **kw)
    lat = latencies(search, queries)
    found = [[hit["id"] for hit in search(q[None, :])[0]] for q in queries]
    recall = np.mean([len(set(f) & set(g)) / K for f, g in zip(found, truth)])
    filtered = latencies(lambda q: search(q, filter="group == 3"), queries)
    client.drop_collection(name)
    return {"build_s": build, "memory_mb": (after - before) / 2**20, "p50": statistics.median(lat), "p95": float(np.percentile(lat, 95)),
            "recall": recall, "filtered_p50": statistics.median(filtered)}


def plot(rows: list[tuple[int, str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for option in dict.fromkeys(o for _, o, _ in rows):
        pts = [(n, r) for n, o, r in rows if o == option]
        ns = [n for n, _ in pts]
        axes[0].plot(ns, [r["p50"] for _, r in pts], marker="o", label=option)
        axes[1].plot(ns, [r["recall"] for _, r in pts], marker="o", label=option)
        axes[2].plot(ns, [r["build_s"] for _, r in pts], marker="o", label=option)
    for ax, title in zip(axes, ("query p50 (ms), k=10", "recall@10 vs exact", "build time (s)")):
        ax.set_xscale("log")
        ax.set_xlabel("vectors (384-d)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.suptitle("Vector store scale curves on 2 CPU cores (synthetic clustered vectors)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--milvus-max", type=int, default=100_000, help="largest size sent to the Milvus server (0: none)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    server = None
    if args.milvus_max:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.milvus_server import MilvusServerProcess

        server = MilvusServerProcess(Path(tempfile.mkdtemp(prefix="layered-scale-milvus-"))).start()
    rows = []
    try:
        for n in args.sizes:
            x, queries = data(n)
            exact = faiss.IndexFlatIP(DIM)
            exact.add(x)
            _, truth = exact.search(queries, K)
            groups = np.arange(n) % 10
            allowed = np.flatnonzero(groups == 3)
            options = ["flat", "hnsw", "ivf"] + (["milvus (server, HNSW)"] if server is not None and n <= args.milvus_max else [])
            for option in options:
                r = milvus_option(x, queries, truth, groups, server) if option.startswith("milvus") else \
                    faiss_option(option, x, queries, truth, allowed)
                rows.append((n, option if option.startswith("milvus") else f"FAISS {option}", r))
                print(f"{n:>9,} {rows[-1][1]:<22} build {r['build_s']:8.1f}s  memory {r['memory_mb']:8.1f} MB  p50 {r['p50']:7.2f} ms  "
                      f"p95 {r['p95']:7.2f} ms  recall@10 {r['recall']:.3f}  filtered p50 {r['filtered_p50']:7.2f} ms", flush=True)
    finally:
        if server is not None:
            server.stop()
    lines = ["# Vector store scale curves", "", f"`benchmarks/scale.py --sizes {' '.join(map(str, args.sizes))}`; its docstring says "
             "what is measured and how. Synthetic clustered 384-d vectors; 2 CPU cores.", "",
             "| vectors | option | build s | memory MB | query p50 ms | query p95 ms | recall@10 | filtered (10%) p50 ms |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n:,} | {o} | {r['build_s']:.1f} | {r['memory_mb']:.0f} | {r['p50']:.2f} | {r['p95']:.2f} | {r['recall']:.3f} | "
              f"{r['filtered_p50']:.2f} |" for n, o, r in rows]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n\n![scale curves](scale.png)\n", encoding="utf-8")
        plot(rows, args.out.with_name("scale.png"))


if __name__ == "__main__":
    main()
