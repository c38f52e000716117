"""The ``layered`` command line: its commands, their options and help (what :mod:`layered.cli` runs).

One function per command adds its subparser; option types that need a clear message
(ports, positive counts) are parsed here, so a bad value is a usage error (exit 2).
:func:`prompt_variables` reads ``ask --var NAME=VALUE`` pairs.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence, TypeAlias

import layered
from layered.adapters import METHODS
from layered.errors import InputError

# What add_subparsers() returns; argparse names its type only privately (generic in typeshed only).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
BACKENDS = ("transformers", "llamacpp")  # the local generator backends a saved pipeline can switch between


def parser() -> argparse.ArgumentParser:
    """The ``layered`` parser with every command."""
    p = argparse.ArgumentParser(prog="layered", description="Prompt -> retrieval -> fine-tuned generator, behind one Pipeline.")
    p.add_argument("--version", action="version", version=f"layered {layered.__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr, no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _index(sub)
    _ask(sub)
    _eval(sub)
    _tune(sub)
    _tune_retriever(sub)
    _serve(sub)
    _compare(sub)
    _demo(sub)
    _export_peft(sub)
    return p


def _index(sub: Commands) -> None:
    ix = sub.add_parser("index", help="index a file or folder into a saved pipeline folder",
                        description="Load, chunk and embed PATH (.jsonl[.gz], .csv, .txt, .md, or a folder of them) and save a "
                                    "pipeline to DIR. If DIR already holds a pipeline, only new or changed documents are embedded.")
    ix.add_argument("path", help="file or folder to index")
    ix.add_argument("--out", required=True, help="folder to save the pipeline to (replaced atomically)")
    ix.add_argument("--prune", action="store_true", help="when updating DIR, delete documents that are no longer in PATH")
    ix.add_argument("--hybrid", action="store_true", help="new index: fuse BM25 with dense search (z-scores of both)")
    ix.add_argument("--layout", choices=["passages", "sentences"], default="passages",
                    help="new index: token chunks (passages, default) or 3-sentence windows read with their page's title, "
                         "a hybrid's BM25 over whole pages (sentences)")
    ix.add_argument("--chunk-size", type=int, default=200, help="tokens per chunk (default 200)")
    ix.add_argument("--chunk-overlap", type=int, default=40, help="tokens shared by neighbouring chunks (default 40)")
    ix.add_argument("--text-field", action="append", dest="text_fields", metavar="FIELD",
                    help="JSONL/CSV field(s) holding the text; repeat for several (default: auto)")
    ix.add_argument("--id-field", help="JSONL/CSV field holding a unique document id (default: auto)")
    ix.add_argument("-k", type=int, default=4, help="passages retrieved per question (default 4)")
    ix.add_argument("--workers", type=_positive,
                    help="embed on Ray Data with N embedding actors (local Ray on this machine unless --ray); vectors are "
                         "kept in DIR.ingest/ until DIR is saved, so an interrupted run resumes (needs pip install 'layered[ray]')")
    ix.add_argument("--ray", metavar="ADDRESS",
                    help="embed on this Ray cluster (e.g. ray://head:10001 or auto; its nodes need layered installed); "
                         "--workers defaults to the cluster's CPUs")
    ix.add_argument("--max-file-mb", type=float, default=512, help="refuse a file larger than this after decompression (default 512)")
    ix.add_argument("--max-document-mb", type=float, default=16,
                    help="refuse one document (a JSONL line, CSV row, text file, PDF page) larger than this (default 16)")
    ix.add_argument("--strict", action="store_true",
                    help="stop at the first file of a folder that cannot be loaded (default: skip it, and list what was "
                         "skipped and why on stderr)")
    ix.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="when another process is writing DIR, wait up to this long for it (default 0: fail at once)")
    _add_trust_options(ix)


def _ask(sub: Commands) -> None:
    ask = sub.add_parser("ask", help="answer a question from a saved pipeline",
                         description="Answer QUESTION with the pipeline saved in DIR; prints the answer and its citations.")
    ask.add_argument("dir", help="folder written by `layered index` or Pipeline.save")
    ask.add_argument("question", help="the question")
    ask.add_argument("-k", type=int, help="passages to retrieve (default: the pipeline's)")
    ask.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: the pipeline's)")
    ask.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a prompt variable; repeatable")
    ask.add_argument("--adapter", help="answer with this adapter ('base': none; default: the router's or the default adapter)")
    ask.add_argument("--backend", choices=BACKENDS, help="generator backend (default: as saved)")
    _add_trust_options(ask)
    out = ask.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the answer as JSON")
    out.add_argument("--stream", action="store_true", help="print the answer as it is generated")


def _eval(sub: Commands) -> None:
    ev = sub.add_parser("eval", help="evaluate retrieval on BEIR-format data",
                        description="Index a BEIR corpus once and report recall@k, MRR@k and nDCG@k of BM25, dense and hybrid retrieval.")
    ev.add_argument("what", choices=["retrieval"], help="what to evaluate")
    ev.add_argument("data", help="BEIR folder: corpus.jsonl[.gz], queries*.jsonl, qrels*.tsv")
    ev.add_argument("--split", help="pick queries_SPLIT.jsonl / qrels_SPLIT.tsv when a folder has several")
    ev.add_argument("-k", type=int, default=10, help="cut-off for the metrics (default 10)")
    ev.add_argument("--retriever", choices=["all", "bm25", "dense", "hybrid"], default="all")
    ev.add_argument("--layout", choices=["passages", "sentences"], default="passages", help="index layout (as layered index --layout)")
    ev.add_argument("--custom", metavar="FILE.py:NAME",
                    help="evaluate your own retriever instead: NAME (in FILE.py, or module:NAME) is called with the corpus "
                         "documents and returns an object with retrieve(query, *, k, filters)")
    ev.add_argument("--max-queries", type=int, help="evaluate only the first N judged queries")
    ev.add_argument("--out", help="also write the results as JSON to this file")


def _tune(sub: Commands) -> None:
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
    tune.add_argument("--nproc", type=_positive, default=1,
                      help="data-parallel training in N processes on this machine, launched with torchrun (gloo on CPU, "
                           "NCCL on GPUs); the global batch stays batch_size (default 1)")
    tune.add_argument("--cache-dir", help="with --pipeline medical/support: the bundled assistant's cached index (default: the demo's)")
    _add_trust_options(tune)


def _tune_retriever(sub: Commands) -> None:
    tr = sub.add_parser("tune-retriever", help="fine-tune a saved pipeline's embedder on query/document pairs",
                        description="Fine-tune the embedder of the pipeline in --pipeline on DATA (a .jsonl of {query, doc_id, "
                                    "group?} lines, or a BEIR folder whose qrels judge the indexed documents) with hard negatives "
                                    "mined from its index, keep it only if it beats the base on held-out queries, re-embed the "
                                    "index and save the pipeline atomically. The fit report (JSON) goes to stdout.")
    tr.add_argument("data", help="pairs (.jsonl) or a BEIR folder (corpus ids must be the indexed document ids)")
    tr.add_argument("--pipeline", required=True, help="saved pipeline folder (dense or hybrid retriever)")
    tr.add_argument("--out", help="where to save the tuned pipeline (default: replace --pipeline atomically)")
    tr.add_argument("--split", default="train", help="BEIR split to read (default train)")
    tr.add_argument("--epochs", type=_positive, help="most epochs (default 4; early stopping on validation)")
    tr.add_argument("--negatives", type=_positive, help="hard negatives mined from the index per pair (default 4)")
    tr.add_argument("--seed", type=int, default=0, help="seed for the split, negatives and training (default 0)")
    tr.add_argument("--keep", choices=["better", "tuned"], default="better",
                    help="better: keep the tuned embedder only if it wins on validation (default); tuned: keep it regardless")
    _add_trust_options(tr)


def _serve(sub: Commands) -> None:
    srv = sub.add_parser("serve", help="serve a saved pipeline over HTTP",
                         description="Serve the pipeline in DIR: POST /v1/chat/completions (OpenAI-compatible, streaming), "
                                     "POST /ask (answer + citations), GET /v1/models, GET /health. Stop with Ctrl-C. "
                                     "Access control: behind a proxy that authenticates users and sets --user-header (and "
                                     "--groups-header), replacing what clients sent; those headers count only from "
                                     "--trusted-proxy peers. An index holding restricted documents (an access list other than "
                                     "['*']) is not served without --user-header or --public-only.")
    srv.add_argument("dir", help="saved pipeline folder")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    srv.add_argument("--backend", choices=BACKENDS,
                     help="generator backend (default: as saved); llamacpp runs the same weights and the exported LoRA ~4x faster on CPU")
    srv.add_argument("--name", default="layered", help="model id reported by /v1/models (default layered)")
    srv.add_argument("--user-header", help="header carrying the user id, set by a trusted proxy; when set, retrieval honours "
                                           "document access lists (an index with restricted documents needs it, or --public-only)")
    srv.add_argument("--groups-header", help="header carrying the user's groups, comma-separated (sent once)")
    srv.add_argument("--trusted-proxy", action="append", dest="trusted_proxies", metavar="ADDR",
                     help="IP or CIDR range of the proxy that sets --user-header/--groups-header (repeatable; default: loopback "
                          "only, 127.0.0.1 and ::1); a request carrying them from any other peer gets 403")
    srv.add_argument("--public-only", action="store_true",
                     help="serve only documents whose access list includes '*', to everyone, without identity headers")
    srv.add_argument("--header-timeout", type=_seconds, default=10.0,
                     help="seconds a connection has to send a complete request head, however slowly (default 10; 408 and close)")
    srv.add_argument("--keep-alive-timeout", type=_seconds, default=5.0,
                     help="seconds an idle connection stays open after a response (default 5)")
    srv.add_argument("--max-connections", type=_positive, default=512,
                     help="open connections at most; past it a new one gets 503 and is closed (default 512)")
    srv.add_argument("--max-queue", type=int, default=32, help="requests waiting for the model before 503 (default 32)")
    srv.add_argument("--parallel", type=_positive, help="llama.cpp backend: requests decoded together (default 8; 1 answers one "
                                                        "at a time)")
    srv.add_argument("--ignore-eos", action="store_true", help="llama.cpp backend: every answer runs to its max_tokens past "
                                                                "end-of-generation (load tests of a fixed answer length)")
    srv.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default 1 MiB)")
    _add_trust_options(srv)


def _compare(sub: Commands) -> None:
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
    cmp.add_argument("--backend", choices=BACKENDS,
                     help="generator backend for answering (default: llamacpp for the bundled tasks, else as saved; "
                          "training always uses transformers)")
    cmp.add_argument("--audience", help="prompt audience variable for every question (e.g. patient)")


def _demo(sub: Commands) -> None:
    demo = sub.add_parser("demo", help="run a ready-made assistant on bundled data",
                          description="Index the bundled data on first run (reused later), add the shipped adapter, "
                                      "and answer sample questions with citations.")
    demo.add_argument("name", choices=["medical", "support"], help="which demo")
    demo.add_argument("--cache-dir", help="this assistant's own index folder, one per assistant "
                      "(default: demo-NAME under $LAYERED_CACHE or ~/.cache/layered)")
    demo.add_argument("--rebuild", action="store_true", help="re-index even if a cached index exists")
    demo.add_argument("--question", action="append", dest="questions", metavar="Q", help="ask this instead of the sample questions; repeatable")
    demo.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: by audience, 80 for a patient)")
    demo.add_argument("--audience", choices=["patient", "clinician"], default="patient", help="medical: who the answers are for (default patient)")
    demo.add_argument("--backend", choices=BACKENDS, default="llamacpp",
                      help="generator backend (default llamacpp: same weights and adapters, ~4x faster on CPU)")


def _export_peft(sub: Commands) -> None:
    exp = sub.add_parser("export-peft", help="export LoRA adapters as PEFT folders (and the base model) for vLLM",
                         description="Write the LoRA adapters of SOURCE(s) as PEFT folders (OUT/adapters/NAME: adapter_config.json + "
                                     "adapter_model.safetensors) and the base model as a Hugging Face folder (OUT/base), then print "
                                     "the vLLM launch that serves them (--enable-lora --lora-modules NAME=FOLDER). Point a pipeline "
                                     "at it with the OpenAI generator, the adapter's name as the model.")
    exp.add_argument("sources", nargs="+", metavar="SOURCE",
                     help="a shipped adapter ('medical', 'support') or a saved pipeline folder (all its adapters); several share one base")
    exp.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    exp.add_argument("--adapter", action="append", dest="adapters", metavar="NAME",
                     help="from a pipeline folder: export only this adapter (repeatable)")
    exp.add_argument("--base-folder", metavar="DIR",
                     help="reuse this Hugging Face folder of the same base (e.g. an earlier export's base) instead of writing one")
    exp.add_argument("--served-name", default="base", help="the name vLLM serves the bare base model under (default base)")


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


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds < 86400:
        raise argparse.ArgumentTypeError(f"{value} is not a number of seconds above 0")
    return seconds


def _positive(value: str) -> int:
    n = _integer(value, "a whole number")
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not a positive number")
    return n


def _add_trust_options(parser: argparse.ArgumentParser) -> None:
    """Outbound permissions for a loaded folder: the caller names them, never the folder."""
    parser.add_argument("--trust-endpoint", action="append", default=[], metavar="URL",
                        help="allow the saved pipeline to contact this endpoint (repeatable; also $LAYERED_TRUSTED_ENDPOINTS)")
    parser.add_argument("--api-key-env", metavar="NAME",
                        help="environment variable holding the API key for a remote generator (never taken from the folder)")


RESERVED_VARS = frozenset({"question", "context", "k", "filters", "user", "embedder", "shots"})


def prompt_variables(pairs: Sequence[str]) -> dict[str, Any]:
    """``--var NAME=VALUE`` pairs as prompt variables (a one-line error for a malformed or reserved name)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise InputError(f"--var expects NAME=VALUE with NAME an identifier, got {pair!r}")
        if name in RESERVED_VARS:
            raise InputError(f"--var {name}=... is not a prompt variable; use the matching option instead")
        out[name] = value
    return out
