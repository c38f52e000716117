"""The ``layered`` command.

    layered index PATH --out DIR       index a file or folder into a saved pipeline
    layered ask DIR "question"         answer from a saved pipeline (add --json for data)
    layered eval retrieval DATA        recall/MRR/nDCG of BM25, dense, hybrid on BEIR data
    layered tune DATA --pipeline DIR   fine-tune the generator on the prompts the pipeline serves
    layered serve DIR                  serve a saved pipeline over HTTP (OpenAI-compatible + /ask)
    layered compare medical            prompt-only vs few-shot vs RAG vs RAG+adapter, measured
    layered demo medical               the medical assistant: MedQuAD, shipped adapter, llama.cpp
    layered demo support               the support assistant: manuals, guidelines, routed policy adapter

Answers go to stdout; progress and logs go to stderr. Exit codes: 0 success, 1 a
layered error (one line on stderr), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import layered
from layered.adapters import METHODS
from layered.errors import LayeredError

log = logging.getLogger("layered")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layered", description="Prompt -> retrieval -> fine-tuned generator, behind one Pipeline.")
    p.add_argument("--version", action="version", version=f"layered {layered.__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr, no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ix = sub.add_parser("index", help="index a file or folder into a saved pipeline folder",
                        description="Load, chunk and embed PATH (.jsonl[.gz], .csv, .txt, .md, or a folder of them) and save a "
                                    "pipeline to DIR. If DIR already holds a pipeline, only new or changed documents are embedded.")
    ix.add_argument("path", help="file or folder to index")
    ix.add_argument("--out", required=True, help="folder to save the pipeline to (replaced atomically)")
    ix.add_argument("--prune", action="store_true", help="when updating DIR, delete documents that are no longer in PATH")
    ix.add_argument("--hybrid", action="store_true", help="new index: fuse BM25 with dense search (RRF)")
    ix.add_argument("--chunk-size", type=int, default=200, help="tokens per chunk (default 200)")
    ix.add_argument("--chunk-overlap", type=int, default=40, help="tokens shared by neighbouring chunks (default 40)")
    ix.add_argument("--text-field", action="append", dest="text_fields", metavar="FIELD",
                    help="JSONL/CSV field(s) holding the text; repeat for several (default: auto)")
    ix.add_argument("--id-field", help="JSONL/CSV field holding a unique document id (default: auto)")
    ix.add_argument("-k", type=int, default=4, help="passages retrieved per question (default 4)")
    ix.add_argument("--max-file-mb", type=float, default=512, help="refuse a file larger than this after decompression (default 512)")
    ix.add_argument("--max-document-mb", type=float, default=16,
                    help="refuse one document (a JSONL line, CSV row, text file, PDF page) larger than this (default 16)")
    _add_trust_options(ix)

    ask = sub.add_parser("ask", help="answer a question from a saved pipeline",
                         description="Answer QUESTION with the pipeline saved in DIR; prints the answer and its citations.")
    ask.add_argument("dir", help="folder written by `layered index` or Pipeline.save")
    ask.add_argument("question", help="the question")
    ask.add_argument("-k", type=int, help="passages to retrieve (default: the pipeline's)")
    ask.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: the pipeline's)")
    ask.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a prompt variable; repeatable")
    ask.add_argument("--adapter", help="answer with this adapter ('base': none; default: the router's or the default adapter)")
    ask.add_argument("--backend", choices=["transformers", "llamacpp"], help="generator backend (default: as saved)")
    _add_trust_options(ask)
    out = ask.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the answer as JSON")
    out.add_argument("--stream", action="store_true", help="print the answer as it is generated")

    ev = sub.add_parser("eval", help="evaluate retrieval on BEIR-format data",
                        description="Index a BEIR corpus once and report recall@k, MRR@k and nDCG@k of BM25, dense and hybrid retrieval.")
    ev.add_argument("what", choices=["retrieval"], help="what to evaluate")
    ev.add_argument("data", help="BEIR folder: corpus.jsonl[.gz], queries*.jsonl, qrels*.tsv")
    ev.add_argument("--split", help="pick queries_SPLIT.jsonl / qrels_SPLIT.tsv when a folder has several")
    ev.add_argument("-k", type=int, default=10, help="cut-off for the metrics (default 10)")
    ev.add_argument("--retriever", choices=["all", "bm25", "dense", "hybrid"], default="all")
    ev.add_argument("--custom", metavar="FILE.py:NAME",
                    help="evaluate your own retriever instead: NAME (in FILE.py, or module:NAME) is called with the corpus "
                         "documents and returns an object with retrieve(query, *, k, filters)")
    ev.add_argument("--max-queries", type=int, help="evaluate only the first N judged queries")
    ev.add_argument("--out", help="also write the results as JSON to this file")

    tune = sub.add_parser("tune", help="fine-tune a saved pipeline's generator on question/answer data",
                          description="Clean DATA (.jsonl/.csv pairs or chat rows), hold out validation, fine-tune the generator "
                                      "of the pipeline in --pipeline on the prompts it serves, and save the tuned pipeline.")
    tune.add_argument("data", help="training data, or a .toml/.json TuneConfig file with a 'data' key")
    tune.add_argument("--pipeline", required=True,
                      help="saved pipeline folder to tune, or 'medical' / 'support': a bundled assistant without its adapters "
                           "(with a shipped recipe, e.g. pipelines/data/adapters/medical/recipe.toml, this retrains its adapter)")
    tune.add_argument("--out", help="where to save the tuned pipeline (default: replace --pipeline atomically)")
    tune.add_argument("--run-dir", help="checkpoints, metrics.jsonl and loss.png (default: OUT.run)")
    tune.add_argument("--method", choices=METHODS, help="tuning method (default lora)")
    tune.add_argument("--steps", type=int, help="optimizer steps (default: one epoch)")
    tune.add_argument("--question-field", help="column holding the question")
    tune.add_argument("--answer-field", help="column holding the answer")
    tune.add_argument("--redact", action="store_true", help="replace e-mails, phone numbers and long ids before training")
    tune.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in the run folder")
    tune.add_argument("--cache-dir", help="with --pipeline medical/support: the bundled assistant's cached index (default: the demo's)")
    _add_trust_options(tune)

    srv = sub.add_parser("serve", help="serve a saved pipeline over HTTP",
                         description="Serve the pipeline in DIR: POST /v1/chat/completions (OpenAI-compatible, streaming), "
                                     "POST /ask (answer + citations), GET /v1/models, GET /health. Stop with Ctrl-C.")
    srv.add_argument("dir", help="saved pipeline folder")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    srv.add_argument("--backend", choices=["transformers", "llamacpp"],
                     help="generator backend (default: as saved); llamacpp runs the same weights and the exported LoRA ~4x faster on CPU")
    srv.add_argument("--name", default="layered", help="model id reported by /v1/models (default layered)")
    srv.add_argument("--user-header", help="header carrying the user id; when set, retrieval honours document access lists")
    srv.add_argument("--groups-header", help="header carrying the user's groups, comma-separated")
    srv.add_argument("--max-queue", type=int, default=32, help="requests waiting for the model before 503 (default 32)")
    srv.add_argument("--parallel", type=_positive, help="llama.cpp backend: requests decoded together (default 8; 1 answers one "
                                                        "at a time)")
    srv.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default 1 MiB)")
    _add_trust_options(srv)

    cmp = sub.add_parser("compare", help="measure prompt-only, few-shot, RAG and RAG+adapter on a held-out split",
                         description="Answer a held-out test split with four strategies on one base model (prompt-only, "
                                     "few-shot, RAG, RAG + tuned adapter) and report retrieval hit rate and MRR, token F1, "
                                     "ROUGE-L, citation precision, refusals, latency and tokens. The table goes to stdout; "
                                     "--out also writes comparison.md, comparison.json and comparison.png.")
    cmp.add_argument("task", help="'medical' or 'support' (the bundled assistants), or a saved pipeline folder (with --data)")
    cmp.add_argument("--data", help="with a pipeline folder: question/answer pairs (.jsonl/.csv), split 80/10/10 by seed; "
                                    "a 'doc_ids' column (list of relevant document ids) enables the retrieval columns")
    cmp.add_argument("--test", type=int, default=30, help="test questions to answer per strategy (default 30)")
    cmp.add_argument("--shots", type=int, default=2, help="few-shot examples per question (default 2)")
    cmp.add_argument("--steps", type=int, default=40, help="adapter training steps when one is trained (default 40)")
    cmp.add_argument("--search", action="store_true",
                     help="auto-PEFT: train LoRA at ranks 8/16 x learning rates 5e-4/2e-3, keep the best on validation")
    cmp.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: the pipeline's)")
    cmp.add_argument("--out", help="write comparison.md/.json/.png here, and the adapter training runs (checkpoints, "
                                   "loss.png) under OUT/runs; without it the runs are removed")
    cmp.add_argument("--cache-dir", help="bundled tasks: the cached pipeline's folder, as for demo (default: the demo's)")
    cmp.add_argument("--retrain", action="store_true", help="bundled tasks: train a new adapter (--steps) instead of the shipped one")
    cmp.add_argument("--backend", choices=["llamacpp", "transformers"],
                     help="generator backend for answering (default: llamacpp for the bundled tasks, else as saved; "
                          "training always uses transformers)")
    cmp.add_argument("--audience", help="prompt audience variable for every question (e.g. patient)")

    demo = sub.add_parser("demo", help="run a ready-made assistant on bundled data",
                          description="Index the bundled data on first run (reused later), add the shipped adapter, "
                                      "and answer sample questions with citations.")
    demo.add_argument("name", choices=["medical", "support"], help="which demo")
    demo.add_argument("--cache-dir", help="where the index is cached (default: $LAYERED_CACHE or ~/.cache/layered)")
    demo.add_argument("--rebuild", action="store_true", help="re-index even if a cached index exists")
    demo.add_argument("--question", action="append", dest="questions", metavar="Q", help="ask this instead of the sample questions; repeatable")
    demo.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: by audience, 80 for a patient)")
    demo.add_argument("--audience", choices=["patient", "clinician"], default="patient", help="medical: who the answers are for (default patient)")
    demo.add_argument("--backend", choices=["llamacpp", "transformers"], default="llamacpp",
                      help="generator backend (default llamacpp: same weights and adapters, ~4x faster on CPU)")
    return p


def _integer(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None


def _port(value: str) -> int:
    port = _integer(value, "a port number")
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range; use 1-65535 (0 picks a free one)")
    return port


def _positive(value: str) -> int:
    n = _integer(value, "a whole number")
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a positive number")
    return n


def _check_out(out: str) -> None:
    """Fail before any embedding work when ``--out`` cannot become a folder."""
    path = Path(out).absolute()
    if path.exists() and not path.is_dir():
        raise layered.errors.InputError(f"--out {out} is a file; choose a folder")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise layered.errors.InputError(f"--out {out}: {parent} is a file, so no folder can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise layered.errors.InputError(f"--out {out}: cannot write under {parent}")


def _add_trust_options(parser: argparse.ArgumentParser) -> None:
    """Outbound permissions for a loaded folder: the caller names them, never the folder."""
    parser.add_argument("--trust-endpoint", action="append", default=[], metavar="URL",
                        help="allow the saved pipeline to contact this endpoint (repeatable; also $LAYERED_TRUSTED_ENDPOINTS)")
    parser.add_argument("--api-key-env", metavar="NAME",
                        help="environment variable holding the API key for a remote generator (never taken from the folder)")


def _load_pipeline(path: str | Path, args: argparse.Namespace) -> Any:
    from layered.pipeline import Pipeline

    return Pipeline.load(path, trust_remote_endpoint=args.trust_endpoint, api_key_env=args.api_key_env)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    # Third-party loaders are chatty; keep stderr readable unless asked for debug logs.
    for name in ("transformers", "sentence_transformers", "httpx", "huggingface_hub", "faiss", "faiss.loader", "gguf"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)
    if quiet:  # no progress bars either (transformers draws one with plain tqdm while dequantising GGUF)
        os.environ["TQDM_DISABLE"] = "1"
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import warnings

        warnings.filterwarnings("ignore")


def _print_answer(answer: layered.Answer) -> None:
    print(answer.text)
    cited = {c.number for c in answer.citations}
    if answer.sources:
        print("Sources:")
        for s in answer.sources:
            mark = "*" if s.number in cited else " "
            print(f" {mark}[{s.number}] {s.chunk_id}  {s.source}  (score {s.score:.3f})")
        how = "cited by the model" if answer.metadata.get("citation_mode") == "model" else "supported by overlap"
        print(f" (* = {how})")
    grounding = answer.metadata.get("grounding")
    if grounding and grounding["fallback"]:
        print(" (nothing the model wrote was in the passages: quoting the best passage instead)")
    elif grounding and grounding["unsupported"] and grounding["mode"] == "drop":
        for sentence in grounding["unsupported"]:
            print(f" (dropped, not in the passages: {sentence})")
    elif grounding and grounding["unsupported"]:
        print(f" ({len(grounding['unsupported'])} of {grounding['sentences']} sentences are not in the passages shown)")


def _cmd_index(args: argparse.Namespace) -> int:
    from layered.artifacts import MANIFEST, recover_interrupted_swap
    from layered.pipeline import Pipeline
    from layered.retrieval.loaders import load_documents

    from layered.retrieval.loaders import LoadLimits

    t = time.perf_counter()
    _check_out(args.out)
    loader: dict[str, Any] = {k: v for k, v in (("text_fields", args.text_fields), ("id_field", args.id_field)) if v}
    loader["limits"] = LoadLimits(max_file_bytes=int(args.max_file_mb * 2**20), max_document_bytes=int(args.max_document_mb * 2**20))
    # A crash between the two renames of an atomic save leaves the old folder renamed aside:
    # put it back before deciding whether OUT holds a pipeline, or its documents would be lost.
    recover_interrupted_swap(args.out)
    if (Path(args.out) / MANIFEST).is_file():
        pipe = _load_pipeline(args.out, args)
        docs = load_documents(args.path, **loader)
        report = pipe.add_documents(docs, progress=not args.quiet)
        log.info("updated %s: %s", args.out, report)
        if args.prune:
            keep = {d.id for d in docs}
            gone = {c.doc_id for c in pipe.retriever.store.chunks()} - keep
            log.info("pruned %d documents no longer in %s", pipe.delete_documents(sorted(gone)), args.path)
    else:
        pipe = Pipeline.from_defaults(
            args.path, k=args.k, chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
            hybrid=args.hybrid, progress=not args.quiet, **loader,
        )
    path = pipe.save(args.out)
    log.info("%d chunks indexed (%.1fs); saved to %s", len(pipe.retriever), time.perf_counter() - t, path)
    print(path)
    return 0


RESERVED_VARS = frozenset({"question", "context", "k", "filters", "user", "embedder", "shots"})


def _parse_vars(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise layered.errors.InputError(f"--var expects NAME=VALUE with NAME an identifier, got {pair!r}")
        if name in RESERVED_VARS:
            raise layered.errors.InputError(f"--var {name}=... is not a prompt variable; use the matching option instead")
        out[name] = value
    return out


def _cmd_ask(args: argparse.Namespace) -> int:

    variables = _parse_vars(args.var)
    pipe = _load_pipeline(args.dir, args)
    if args.backend:
        pipe = pipe.serve_with(args.backend)
    if args.max_new_tokens:
        pipe.generator.max_new_tokens = args.max_new_tokens
    if args.stream:
        stream = pipe.stream(args.question, k=args.k, adapter=args.adapter, **variables)
        for piece in stream:
            print(piece, end="", flush=True)
        print()
        if stream.metadata.get("injection_suspects"):
            log.warning("passages that look like injected instructions: %s",
                        ", ".join(f"[{s['number']}] {s['chunk_id']}" for s in stream.metadata["injection_suspects"]))
        return 0
    answer = pipe.ask(args.question, k=args.k, adapter=args.adapter, **variables)
    if args.json:
        print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print_answer(answer)
    return 0


def _demo_cache(args: argparse.Namespace, name: str) -> Path:
    """The folder a bundled assistant's pipeline is cached in: ``--cache-dir``, else the shared default."""
    from layered.models import cache_dir

    return Path(args.cache_dir) if args.cache_dir else cache_dir() / f"demo-{name}"


def _cmd_demo(args: argparse.Namespace) -> int:
    from layered.pipelines import medical, support

    name = args.name
    module: Any = medical if name == "medical" else support
    cache = _demo_cache(args, name)
    t = time.perf_counter()
    if args.rebuild or not cache.exists():
        log.info("first run: indexing %s (later runs reuse the saved index)",
                 "all 16,407 MedQuAD pages" if name == "medical" else "the product manuals and agent guidelines")
    pipe, reused = module.load_or_build(cache, rebuild=args.rebuild, progress=not args.quiet)
    log.info("%s %s: %d passages (%.1fs)", "reusing the saved index in" if reused else "indexed and saved to", cache,
             len(pipe.retriever), time.perf_counter() - t)
    log.info("data: %s", module.ATTRIBUTION)
    if args.backend == "llamacpp":
        pipe = pipe.serve_with("llamacpp", adapter_dir=cache.with_name(cache.name + ".lora"))
    if args.max_new_tokens:
        pipe.generator.max_new_tokens = args.max_new_tokens
    pipe.warm_up()
    log.info("ready in %.1fs (%s backend, adapters: %s)", time.perf_counter() - t, args.backend, ", ".join(pipe.generator.adapters) or "none")
    if name == "medical":
        questions = [(q, {}) for q in args.questions or medical.DEMO_QUESTIONS]
    else:
        questions = [(q, {}) for q in args.questions] if args.questions else list(support.DEMO_QUESTIONS)
    for i, (question, slots) in enumerate(questions):
        if i:
            print()
        t = time.perf_counter()
        if name == "medical":
            answer = pipe.ask(question, audience=args.audience)
            print(f"Q: {question}")
        else:
            question = support.fill_slots(question, slots)
            answer = support.ask(pipe, question, **slots)
            print(f"Q: {question}   [adapter: {answer.metadata.get('adapter') or 'base'}]")
        print("A: ", end="")
        _print_answer(answer)
        log.info("(%d tokens in %.1fs)", answer.generation.completion_tokens if answer.generation else 0, time.perf_counter() - t)
    if name == "medical":
        print(f"\n{medical.DISCLAIMER}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from layered.artifacts import atomic_write_json
    from layered.evaluation.retrieval import build_retrievers, evaluate_retriever, load_beir, markdown_table

    data = load_beir(args.data, split=args.split)
    qrels = dict(list(data.qrels.items())[: args.max_queries]) if args.max_queries else data.qrels
    log.info("%d documents, %d judged queries", len(data.corpus), len(qrels))
    if args.custom:
        retrievers = {args.custom.rpartition(":")[2]: _load_object(args.custom)(data.corpus)}
        names = list(retrievers)
    else:
        retrievers = build_retrievers(data.corpus, progress=not args.quiet)
        names = list(retrievers) if args.retriever == "all" else [args.retriever]
    results = {name: evaluate_retriever(retrievers[name], data.queries, qrels, k=args.k) for name in names}
    print(markdown_table(results))
    if args.out:
        atomic_write_json(args.out, {"data": str(args.data), "k": args.k, "results": results})
        log.info("wrote %s", args.out)
    return 0


def _load_object(spec: str) -> Any:
    """``path/to/file.py:NAME`` or ``package.module:NAME`` -> the object (a clear error otherwise)."""
    import importlib
    import importlib.util

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise layered.errors.ConfigError(f"{spec!r}: expected FILE.py:NAME or module:NAME")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise layered.errors.SourceNotFoundError(f"{path}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise layered.errors.ConfigError(f"cannot import {where!r}: {e}") from None
    if not hasattr(module, name):
        raise layered.errors.ConfigError(f"{where} has no {name!r}")
    return getattr(module, name)


def _cmd_tune(args: argparse.Namespace) -> int:
    from layered.tuning.config import TuneConfig
    from layered.tuning.data import data_report, redact
    from layered.tuning.fit import read_recipe, recipe_examples

    options: dict[str, object] = {}
    data = Path(args.data)
    if data.suffix.lower() in (".toml", ".json"):
        options, data = read_recipe(data)
    if args.method:
        options["method"] = args.method
    if args.steps:
        options["max_steps"] = args.steps
    config = TuneConfig(**options)  # type: ignore[arg-type]
    examples = recipe_examples(data, question_field=args.question_field, answer_field=args.answer_field)
    if args.redact:
        examples, counts = redact(examples)
        log.info("redacted: %s", ", ".join(f"{n} {k}" for k, n in counts.items()))
    log.info("%s", data_report(examples, title=str(data.name)))
    if args.pipeline in BUNDLED:
        if not args.out:
            raise layered.errors.InputError(f"--pipeline {args.pipeline} (the bundled assistant) needs --out DIR for the tuned pipeline")
        pipe = _bundled_base(args, args.pipeline)
    else:
        pipe = _load_pipeline(args.pipeline, args)
    out = Path(args.out or args.pipeline)
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.name + ".run")
    fit = pipe.fit(examples, config=config, out_dir=run_dir, resume=args.resume, progress=not args.quiet)
    path = pipe.save(out)
    losses = ", ".join(f"step {s}: {v:.3f}" for s, v in fit.val_losses)
    log.info("validation loss per answer token: %s", losses)
    log.info("%d steps in %.0fs (%.0f tokens/s); metrics and loss curve in %s", fit.steps, fit.seconds, fit.tokens_per_second, run_dir)
    log.info("tuned pipeline (adapter in generator/adapters/) saved to %s", path)
    print(path)
    return 0


BUNDLED = ("medical", "support")


def _bundled_base(args: argparse.Namespace, name: str) -> Any:
    """A bundled assistant's pipeline without adapters (transformers), from the demo cache when intact."""
    from layered.pipelines import medical, support

    if name == "medical":
        return medical.load_or_build(_demo_cache(args, "medical"), progress=not args.quiet, adapter=False)[0]
    return support.load_or_build(_demo_cache(args, "support"), progress=not args.quiet, adapter=False)[0]


def _cmd_serve(args: argparse.Namespace) -> int:
    from layered.serving.server import PipelineServer, ServeOptions

    pipe = _load_pipeline(args.dir, args)
    if args.backend:
        pipe = pipe.serve_with(args.backend)
    if args.parallel is not None:
        if getattr(pipe.generator, "kind", None) != "llamacpp":
            raise layered.errors.ConfigError("--parallel sets the llama.cpp backend's batch; add --backend llamacpp")
        pipe.generator.parallel = args.parallel  # read when the model loads, below
    pipe.warm_up()
    options = ServeOptions(model_name=args.name, max_body_bytes=args.max_body, max_queue=args.max_queue,
                           user_header=args.user_header, groups_header=args.groups_header)
    server = PipelineServer(pipe, (args.host, args.port), options)
    # Always said (even with -q): a server that does not say where it listens is no use.
    print(f"layered: serving {args.name} on {server.url} (POST /v1/chat/completions, POST /ask, GET /v1/models, "
          "GET /health); Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _comparison_task(args: argparse.Namespace) -> tuple[Any, Any, str | None]:
    """``(pipeline, splits, adapter)`` for ``layered compare``: adapter None means train one.

    The bundled tasks compare their *shipped* adapters (trained on their training splits only);
    ``--search`` or ``--retrain`` trains new ones instead.
    """
    if args.task in BUNDLED:
        from layered.pipelines import medical, support

        module: Any = medical if args.task == "medical" else support
        train_new = args.search or args.retrain
        pipe, _ = module.load_or_build(_demo_cache(args, args.task), progress=not args.quiet, adapter=not train_new)
        parts = medical.splits() if args.task == "medical" else support.policy_splits()
        return pipe, parts, None if train_new else ("medical" if args.task == "medical" else "policy")
    from layered.pipeline import Pipeline
    from layered.tuning.data import clean, columns, load_examples, split

    if not args.data:
        raise layered.errors.InputError(f"{args.task!r} is not a bundled task (medical, support); a pipeline folder needs --data")
    pipe = Pipeline.load(args.task)
    keep = ["doc_ids"] if "doc_ids" in columns(args.data) else []
    examples, report = clean(load_examples(args.data, keep=keep))
    log.info("cleaning: %s", report)
    if keep:  # JSONL gives a list; CSV a comma-separated string
        examples = [dataclasses.replace(e, metadata={"doc_ids": _id_list(e.metadata["doc_ids"])}) for e in examples]
    adapter = getattr(pipe.generator, "default_adapter", None)
    if adapter is not None:
        log.warning("comparing the pipeline's own adapter %r as it is: the scores are fair only if it never trained "
                    "on this data's test split (split 80/10/10 with seed 0)", adapter)
    return pipe, split(examples, validation=0.1, test=0.1, seed=0), adapter


def _id_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]


def _cmd_compare(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is None:  # training runs go to a scratch folder that is removed afterwards
        with tempfile.TemporaryDirectory(prefix="layered-compare-") as scratch:
            return _compare(args, None, Path(scratch))
    return _compare(args, out, out / "runs")


def _compare(args: argparse.Namespace, out: Path | None, runs: Path) -> int:
    from layered.artifacts import atomic_write_json, atomic_write_bytes
    from layered.evaluation.comparison import bar_chart, compare, markdown_table
    from layered.tuning.config import short_lora
    from layered.tuning.search import base_copy, search_lora

    pipe, splits, adapter = _comparison_task(args)
    if args.max_new_tokens:
        pipe.generator.max_new_tokens = args.max_new_tokens
    test = splits.test[: args.test]
    log.info("%d training, %d validation, %d test examples (answering %d)", len(splits.train), len(splits.validation),
             len(splits.test), len(test))
    config = short_lora(args.steps)
    val = splits.validation[:24]
    search = None
    if adapter is None and args.search:
        search = search_lora(lambda: base_copy(pipe), splits.train, val, config=config, out_dir=runs / "search",
                             progress=not args.quiet)
        log.info("auto-PEFT:\n%s", search.markdown_table())
        pipe, adapter = search.pipeline, "default"
    elif adapter is None:
        report = pipe.fit(splits.train, val=val, config=config, out_dir=runs / "adapter", progress=not args.quiet,
                          check_forgetting=False)
        log.info("adapter: validation loss %.3f -> %.3f", report.val_losses[0][1], report.val_losses[-1][1])
        adapter = "default"
    backend = args.backend or ("llamacpp" if args.task in BUNDLED else None)
    if backend:
        pipe = pipe.serve_with(backend, adapter_dir=runs / "gguf")
    variables = {"audience": args.audience} if args.audience else {}
    results = compare(pipe, test, few_shot_pool=splits.train[:2000], adapter=adapter, shots=args.shots, variables=variables,
                      progress=not args.quiet)
    table = markdown_table(results)
    print(table)
    if out:
        text = f"{table}\n" + (f"\nAuto-PEFT (validation loss per answer token):\n\n{search.markdown_table()}\n" if search else "")
        atomic_write_bytes(out / "comparison.md", text.encode())
        atomic_write_json(out / "comparison.json", {
            "task": args.task, "test_questions": len(test), "shots": args.shots, "steps": args.steps,
            "max_new_tokens": pipe.generator.max_new_tokens, "backend": getattr(pipe.generator, "kind", None), "audience": args.audience,
            "adapter": adapter, "results": [r.to_dict() for r in results],
            "search": None if search is None else [vars(t) for t in search.trials],
        })
        bar_chart(results, out / "comparison.png", title=f"layered compare {Path(args.task).name}: {len(test)} held-out questions")
        log.info("wrote %s/comparison.md, comparison.json and comparison.png", out)
    return 0


COMMANDS = {"index": _cmd_index, "ask": _cmd_ask, "eval": _cmd_eval, "tune": _cmd_tune, "serve": _cmd_serve, "demo": _cmd_demo,
            "compare": _cmd_compare}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        return COMMANDS[args.command](args)
    except LayeredError as e:
        # One line, printable whatever bytes a file name held.
        message = " ".join(str(e).split("\n")).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        print(f"layered: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("layered: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
