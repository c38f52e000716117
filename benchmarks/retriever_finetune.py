"""Cross-validated retriever fine-tuning: base vs fine-tuned all-MiniLM-L6-v2, dense and hybrid.

    .venv/bin/python benchmarks/retriever_finetune.py scifact PATH/TO/scifact [--folds 5] [--out benchmarks/results/retriever_finetune_scifact.md]
    .venv/bin/python benchmarks/retriever_finetune.py medquad [--topics 600] [--folds 5] [--out ...]
    recipe options: [--epochs N] [--lr X] [--negatives N] [--titles N] [--sentences N]
    index: [--layout passages|sentences] [--fusion rrf|zscore] [--choose] [--no-tune] (other than passages + rrf: that hybrid, today's
    default, is scored too, as "today's hybrid"); [--rerank N]: a cross-encoder trained per fold reranks the hybrid's top N
    one process per fold: ... --only F --save fold-F.json; then: retriever_finetune.py merge fold-*.json [--out ...]

SciFact: the BEIR train split (the only split read), queries grouped so that queries sharing
a relevant abstract are in the same fold (:func:`layered.retrieval.finetune.pairs_from_qrels`).
MedQuAD: the packaged pairs of ``--topics`` topics (question -> its answer page), grouped by
topic. For each fold, the embedder is fine-tuned on the other folds' pairs only (its early
stopping and keep-or-not decision on a grouped 10% of those), the whole corpus is re-embedded,
and BM25, dense, hybrid (base) and fine-tuned dense and hybrid are scored on the held-out fold's
queries: nDCG@10 and recall@10 over documents. Every fold is reported, and the "served" column
is what ``Pipeline.fit_retriever`` would serve (the tuned embedder only where it beat the base
on its validation split).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path

from layered.evaluation.retrieval import build_retrievers, evaluate_retriever, load_beir
from layered.protocols import Retriever
from layered.retrieval.defaults import LAYOUTS
from layered.retrieval.embedders import SentenceTransformerEmbedder
from layered.retrieval.finetune import (Pair, RetrieverTuneConfig, fine_tune_embedder, grouped_folds, grouped_split,
                                        pairs_from_qrels, pairs_from_sentences, pairs_from_titles)
from layered.retrieval.rerank import CrossEncoderReranker, RerankingRetriever, fit_cross_encoder
from layered.types import Document


def scifact(path: str) -> tuple[list[Document], dict[str, str], dict[str, dict[str, int]], list[Pair]]:
    data = load_beir(path, split="train")
    return data.corpus, data.queries, data.qrels, pairs_from_qrels(data.queries, data.qrels)


def medquad(topics: int) -> tuple[list[Document], dict[str, str], dict[str, dict[str, int]], list[Pair]]:
    kb = Path(__file__).resolve().parents[1] / "pipelines" / "data" / "medquad.jsonl.gz"  # layered.pipelines.medical.KB_PATH
    with gzip.open(kb, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    chosen = sorted({r["focus"] for r in rows})[::max(1, len({r["focus"] for r in rows}) // topics)][:topics]
    rows = [r for r in rows if r["focus"] in set(chosen)]
    first: dict[str, str] = {}  # pages with the same answer text are one indexed document
    for r in rows:
        first.setdefault(r["answer"], r["id"])
    docs = [Document(id=r["id"], text=r["answer"], metadata={"title": r["focus"]}) for r in rows if first[r["answer"]] == r["id"]]
    queries = {r["id"]: r["question"] for r in rows}
    qrels = {r["id"]: {first[r["answer"]]: 1} for r in rows}
    return docs, queries, qrels, [Pair(r["question"], first[r["answer"]], r["focus"]) for r in rows]


def as_json(scores: dict) -> dict[str, dict[str, float]]:
    """nDCG@10 and recall@10 of each scored retriever, as JSON-ready floats."""
    return {n: {k: float(v[k]) for k in ("ndcg@10", "recall@10")} for n, v in scores.items()}


def p50_ms(retriever: Retriever, queries: list[str]) -> float:
    """Median wall time of one ``retrieve(q, k=10)``, in milliseconds."""
    times = []
    for q in queries:
        t = time.perf_counter()
        retriever.retrieve(q, k=10)
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 1)


def reranked(train: list[Pair], hybrid: Retriever, base_model: str, candidates: int, device: str) -> tuple[Retriever, float]:
    """``hybrid`` with a cross-encoder trained on this fold's training pairs reranking its top
    ``candidates`` (:func:`layered.retrieval.rerank.fit_cross_encoder`), and the training seconds."""
    out = Path(tempfile.mkdtemp(prefix="layered-ce-")) / "model"
    t = time.perf_counter()
    fit_cross_encoder(train, retriever=hybrid, base_model=base_model, out_dir=out, device=device)
    return RerankingRetriever(hybrid, CrossEncoderReranker(out), candidates=candidates), round(time.perf_counter() - t, 1)


def run_fold(i: int, train: list[Pair], test: list[Pair], data: tuple, base: dict, extra: list[Pair], config: RetrieverTuneConfig | None,
             device: str, today: Retriever | None = None, configs: dict[str, Retriever] | None = None, rerank: int = 0) -> dict:
    """One held-out fold: base and fine-tuned retrievers scored on its queries (JSON-ready);
    ``today``: a reference retriever scored too (the passages hybrid, when ``base`` is another layout);
    ``configs``: base hybrids by "layout/fusion" (``base``'s among them) of which the one with the
    best nDCG@10 on this fold's training queries is chosen, and scored on the held-out queries as
    "chosen base hybrid": the choice of layout and fusion, cross-validated. ``config`` None: no fine-tuning.
    ``rerank`` N: the base hybrid's top N reranked by a cross-encoder trained on the fold's training pairs,
    scored as "reranked hybrid", with both retrievers' median query latency."""
    _, queries, qrels, _ = data
    by_query = {q: qid for qid, q in queries.items()}
    test_ids = sorted({by_query[p.query] for p in test})
    test_queries, test_qrels = {q: queries[q] for q in test_ids}, {q: qrels[q] for q in test_ids}
    scores = {name: evaluate_retriever(r, test_queries, test_qrels) for name, r in base.items()}
    if today is not None:
        scores = {"today's hybrid": evaluate_retriever(today, test_queries, test_qrels), **scores}
    chosen, on_train = None, {}
    if configs:
        train_ids = sorted({by_query[p.query] for p in train})
        train_queries, train_qrels = {q: queries[q] for q in train_ids}, {q: qrels[q] for q in train_ids}
        on_train = {name: round(evaluate_retriever(r, train_queries, train_qrels)["ndcg@10"], 4) for name, r in configs.items()}
        chosen = max(on_train, key=on_train.__getitem__)
        scores["chosen base hybrid"] = evaluate_retriever(configs[chosen], test_queries, test_qrels)
        print(f"fold {i}: on its training queries {on_train}: chose {chosen}", flush=True)
    row = {"fold": i, "test_queries": len(test_ids), "chosen": chosen, "on_train": on_train}
    if rerank:
        ce, train_s = reranked(train, base["hybrid"], base["dense"].embedder.path, rerank, device)
        scores["reranked hybrid"] = evaluate_retriever(ce, test_queries, test_qrels)
        sample = list(test_queries.values())[:50]
        row["rerank"] = {"candidates": rerank, "train_s": train_s, "p50_ms_hybrid": p50_ms(base["hybrid"], sample),
                         "p50_ms_reranked": p50_ms(ce, sample)}
        print(f"fold {i}: cross-encoder {row['rerank']}", flush=True)
    if config is None:  # --no-tune: the base retrievers and the cross-validated choice only
        print(f"fold {i}: {len(test_ids)} test queries; " + ", ".join(f"{n} {s['ndcg@10']:.4f}" for n, s in scores.items()), flush=True)
        return {**row, "scores": as_json(scores)}
    out = Path(tempfile.mkdtemp(prefix="layered-cv-")) / "model"
    fit, val = grouped_split(train, config.validation, seed=config.seed)
    report = fine_tune_embedder(fit + extra, val_pairs=val, retriever=base["hybrid"], base_model=base["dense"].embedder.path,
                                out_dir=out, config=config, progress=False, device=device)
    tuned = base["hybrid"].reembedded(SentenceTransformerEmbedder(str(out), device=device), progress=False)
    scores["tuned dense"] = evaluate_retriever(tuned.dense, test_queries, test_qrels)
    scores["tuned hybrid"] = evaluate_retriever(tuned, test_queries, test_qrels)
    # Fusion weights (dense, bm25) chosen on the fold's validation queries only.
    val_ids = sorted({by_query[p.query] for p in val})
    val_queries, val_qrels = {q: queries[q] for q in val_ids}, {q: qrels[q] for q in val_ids}
    best = max(WEIGHTS, key=lambda w: evaluate_retriever(tuned.with_fusion(weights=w), val_queries, val_qrels)["ndcg@10"])
    scores["tuned hybrid, weighted"] = evaluate_retriever(tuned.with_fusion(weights=best), test_queries, test_qrels)
    served = "tuned" if report.val_ndcg_tuned > report.val_ndcg_base else "base"
    scores["served hybrid"] = scores["tuned hybrid" if served == "tuned" else "hybrid"]
    if chosen is not None:  # the tuned embedder serves only in the layout and fusion it was tuned in
        scores["served, chosen layout"] = scores["served hybrid" if configs[chosen] is base["hybrid"] else "chosen base hybrid"]
    print(f"fold {i}: weights {best}; {len(test_ids)} test queries; val nDCG {report.val_ndcg_base:.4f} -> {report.val_ndcg_tuned:.4f} "
          f"({report.epochs_run} epochs, {report.seconds:.0f}s); " + ", ".join(f"{n} {s['ndcg@10']:.4f}" for n, s in scores.items()),
          flush=True)
    return {**row, "val_base": report.val_ndcg_base, "val_tuned": report.val_ndcg_tuned, "epochs": report.epochs_run,
            "seconds": report.seconds, "served": served, "weights": list(best),
            "scores": as_json(scores)}


def report(rows: list[dict], header: str) -> str:
    """The per-fold and mean tables, in Markdown."""
    rows = sorted(rows, key=lambda r: r["fold"])
    names = list(rows[0]["scores"])
    mean = {m: {k: statistics.fmean(r["scores"][m][k] for r in rows) for k in ("ndcg@10", "recall@10")} for m in names}
    if "val_base" not in rows[0]:  # --no-tune rows
        return "\n".join([
            header, "", "## nDCG@10 per held-out fold (no fine-tuning)", "",
            "| fold | test queries | chosen on its training queries | " + " | ".join(names) + " |", "|---" * (3 + len(names)) + "|",
            *(f"| {r['fold']} | {r['test_queries']} | {r['chosen']} | " + " | ".join(f"{r['scores'][m]['ndcg@10']:.4f}" for m in names) + " |"
              for r in rows),
            "", "## Mean over the held-out folds", "", "| retriever | nDCG@10 | recall@10 |", "|---|---|---|",
            *(f"| {m} | {v['ndcg@10']:.4f} | {v['recall@10']:.4f} |" for m, v in mean.items()), "",
            *([f"Chosen base hybrid - today's hybrid: {mean['chosen base hybrid']['ndcg@10'] - mean[TODAY]['ndcg@10']:+.4f} nDCG@10.", ""]
              if "chosen base hybrid" in mean and TODAY in mean else []),
            *([f"Reranked hybrid - hybrid: {mean['reranked hybrid']['ndcg@10'] - mean['hybrid']['ndcg@10']:+.4f} nDCG@10; median query latency "
               f"(50 held-out queries per fold, mean over folds) {statistics.fmean(r['rerank']['p50_ms_hybrid'] for r in rows):.1f} ms -> "
               f"{statistics.fmean(r['rerank']['p50_ms_reranked'] for r in rows):.1f} ms reranking the top {rows[0]['rerank']['candidates']}; "
               f"cross-encoder training {statistics.fmean(r['rerank']['train_s'] for r in rows):.0f} s per fold.", ""]
              if "rerank" in rows[0] else [])])
    lines = [header, "", "## nDCG@10 per held-out fold", "",
             "| fold | test queries | val nDCG@10 base -> tuned | epochs | served | " + " | ".join(names) + " |",
             "|---" * (5 + len(names)) + "|"]
    for r in rows:
        lines.append(f"| {r['fold']} | {r['test_queries']} | {r['val_base']:.4f} -> {r['val_tuned']:.4f} | {r['epochs']} | {r['served']} | "
                     + " | ".join(f"{r['scores'][m]['ndcg@10']:.4f}" for m in names) + " |")
    today = (f"fine-tuned hybrid - today's hybrid: {mean['tuned hybrid']['ndcg@10'] - mean[TODAY]['ndcg@10']:+.4f}, "
             f"served hybrid - today's hybrid: {mean['served hybrid']['ndcg@10'] - mean[TODAY]['ndcg@10']:+.4f}; " if TODAY in mean else "")
    lines += ["", "## Mean over the held-out folds", "", "| retriever | nDCG@10 | recall@10 |", "|---|---|---|",
              *(f"| {m} | {v['ndcg@10']:.4f} | {v['recall@10']:.4f} |" for m, v in mean.items()), "",
              f"{today}Fine-tuned hybrid - base hybrid: {mean['tuned hybrid']['ndcg@10'] - mean['hybrid']['ndcg@10']:+.4f} nDCG@10; "
              f"served - base hybrid: {mean['served hybrid']['ndcg@10'] - mean['hybrid']['ndcg@10']:+.4f}; "
              f"mean validation gain of the tuned embedder: {statistics.fmean(r['val_tuned'] - r['val_base'] for r in rows):+.4f}.", ""]
    if rows[0].get("chosen") and TODAY in mean:
        lines += [f"Layout/fusion chosen on each fold's training queries: {', '.join(str(r['chosen']) for r in rows)}; "
                  f"served with the chosen layout - today's hybrid: "
                  f"{mean['served, chosen layout']['ndcg@10'] - mean[TODAY]['ndcg@10']:+.4f} nDCG@10.", ""]
    return "\n".join(lines)


WEIGHTS = [(1.0, 1.0), (1.5, 1.0), (2.0, 1.0), (1.0, 1.5), (1.0, 2.0)]
TODAY = "today's hybrid"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=["scifact", "medquad", "merge"], help="merge: the tables from --save files given as PATHs")
    ap.add_argument("path", nargs="*", help="the BEIR SciFact folder (scifact), or fold JSON files (merge)")
    ap.add_argument("--topics", type=int, default=600, help="MedQuAD topics (default 600)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only", type=int, nargs="*", help="run only these folds (0-based)")
    ap.add_argument("--epochs", type=int, default=RetrieverTuneConfig.epochs)
    ap.add_argument("--lr", type=float, default=RetrieverTuneConfig.learning_rate)
    ap.add_argument("--negatives", type=int, default=RetrieverTuneConfig.negatives, help="mined hard negatives per pair")
    ap.add_argument("--titles", type=int, default=0, help="add this many (title -> document) pairs from the corpus alone")
    ap.add_argument("--sentences", type=int, default=0,
                    help="add this many (sentence -> its page without it) pairs from the corpus alone (inverse cloze task)")
    ap.add_argument("--layout", choices=LAYOUTS, default="passages", help="how the corpus is indexed (default: passages)")
    ap.add_argument("--fusion", choices=["rrf", "zscore"], default="rrf", help="how the hybrid fuses dense and BM25 (default: rrf, as in runs 1-7)")
    ap.add_argument("--choose", action="store_true",
                    help="also score both fusions over both layouts and let each fold choose one on its training queries")
    ap.add_argument("--no-tune", action="store_true", help="score the base retrievers only (with --choose: the choice cross-validated)")
    ap.add_argument("--rerank", type=int, default=0, metavar="N",
                    help="also score the base hybrid's top N reranked by a cross-encoder trained on each fold's training pairs")
    ap.add_argument("--model", default=None, help="embedder folder (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--device", default="cpu", help="where to embed and train (cpu, or cuda on a GPU)")
    ap.add_argument("--save", type=Path, help="also write the folds' rows and the recipe as JSON here (for merge)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.dataset == "merge":
        saved = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.path]
        text = report([r for s in saved for r in s["rows"]], saved[0]["header"])
    else:
        data = scifact(args.path[0]) if args.dataset == "scifact" else medquad(args.topics)
        docs, queries, qrels, pairs = data
        t = time.perf_counter()
        embedder = SentenceTransformerEmbedder(**({"model": args.model} if args.model else {}), device=args.device)
        base = build_retrievers(docs, embedder=embedder, layout=args.layout, fusion=args.fusion, progress=True)
        today = build_retrievers(docs, embedder=embedder, fusion="rrf")["hybrid"] if (args.layout, args.fusion) != ("passages", "rrf") else None
        configs = None
        if args.choose and today is not None:  # both fusions over both indexes; the fold picks on its training queries
            other = "rrf" if args.fusion == "zscore" else "zscore"
            configs = {f"{args.layout}/{args.fusion}": base["hybrid"], f"{args.layout}/{other}": base["hybrid"].with_fusion(fusion=other),
                       "passages/rrf": today, "passages/zscore": today.with_fusion(fusion="zscore")}
        print(f"{args.dataset}: {len(docs)} documents, {len(base['dense'])} chunks indexed in {time.perf_counter() - t:.0f}s; "
              f"{len(pairs)} pairs, {len({p.group for p in pairs})} groups", flush=True)
        config = None if args.no_tune else RetrieverTuneConfig(epochs=args.epochs, learning_rate=args.lr, negatives=args.negatives, keep="tuned")
        titled = [Document(d.id, d.text, metadata={"title": d.text.split("\n\n")[0]}) for d in docs if "\n\n" in d.text]
        titles = [Pair(p.query, p.doc_id, "title:" + p.doc_id) for p in pairs_from_titles(titled)][: args.titles]
        sentences = pairs_from_sentences(docs, seed=0)[: args.sentences]
        extra = titles + sentences
        header = (f"{len(docs)} documents, {len(pairs)} (query, document) pairs in {len({p.group for p in pairs})} groups; "
                  f"`benchmarks/retriever_finetune.py` (its docstring says how), device {args.device}, layout {args.layout}, fusion {args.fusion}"
                  f"{', layout and fusion chosen per fold on its training queries' if configs else ''}. "
                  f"Recipe: {json.dumps(config.__dict__) if config else 'none (--no-tune)'}; {len(titles)} title pairs and "
                  f"{len(sentences)} sentence pairs added to every fold's training pairs.")
        rows = []
        for i, (train, test) in enumerate(grouped_folds(pairs, args.folds, seed=0)):
            if args.only and i not in args.only:
                continue
            rows.append(run_fold(i, train, test, data, base, extra, config, args.device, today, configs, args.rerank))
            if args.save:  # after every fold: a stopped run keeps the folds it finished
                args.save.write_text(json.dumps({"header": header, "rows": rows}, indent=1), encoding="utf-8")
        text = report(rows, header)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
