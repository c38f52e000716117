"""The ``layered`` command.

    layered index PATH --out DIR       index a file or folder into a saved pipeline (--workers N: on Ray)
    layered ask DIR "question"         answer from a saved pipeline (add --json for data)
    layered eval retrieval DATA        recall/MRR/nDCG of BM25, dense, hybrid on BEIR data
    layered tune DATA --pipeline DIR   fine-tune the generator on the prompts the pipeline serves
    layered serve DIR                  serve a saved pipeline over HTTP (OpenAI-compatible + /ask)
    layered compare medical            prompt-only vs few-shot vs RAG vs RAG+adapter, measured
    layered demo medical               the medical assistant: MedQuAD, shipped adapter, llama.cpp
    layered demo support               the support assistant: manuals, guidelines, routed policy adapter
    layered export-peft medical --out DIR   adapters as PEFT folders + the base as an HF folder, for vLLM

Answers go to stdout; progress and logs go to stderr. Exit codes: 0 success, 1 a
layered error (one line on stderr), 2 bad usage, 130 interrupted.

Each command is a thin wrapper: parse (:mod:`layered.cli_parser`), call the one function
that does the work (in the package it belongs to), print. The workflows live there:
``compare`` in :mod:`layered.evaluation.workflow`, ``tune`` in :mod:`layered.tuning.workflow`,
``eval`` in :mod:`layered.evaluation.retrieval`, ``demo`` in :mod:`layered.pipelines.demo`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import layered
from layered.cli_output import print_answer
from layered.cli_parser import parser, prompt_variables
from layered.errors import LayeredError

log = logging.getLogger("layered")


def _check_out(out: str) -> None:
    """Fail before any embedding work when ``--out`` cannot become a folder, or is a folder
    of files that saving there would replace."""
    from layered.artifacts import check_replaceable, recover_interrupted_swap

    path = Path(out).absolute()
    if path.exists() and not path.is_dir():
        raise layered.errors.InputError(f"--out {out} is a file; choose a folder")
    recover_interrupted_swap(path)  # an interrupted save's old folder back first, or its documents would be lost
    check_replaceable(path)
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise layered.errors.InputError(f"--out {out}: {parent} is a file, so no folder can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise layered.errors.InputError(f"--out {out}: cannot write under {parent}")


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


def _cmd_index(args: argparse.Namespace) -> int:
    from layered.artifacts import folder_lock

    t = time.perf_counter()
    _check_out(args.out)
    with folder_lock(args.out, wait=args.wait):  # one writer per DIR, from reading it to saving it
        return _index_locked(args, t)


def _index_locked(args: argparse.Namespace, t: float) -> int:
    from layered.retrieval.loaders import LoadLimits

    embed = None
    if args.workers or args.ray:  # embedding on Ray Data; loading, dedup and the store stay here
        from layered.retrieval.distributed import RayEmbedding

        embed = RayEmbedding.beside(args.out, workers=args.workers, address=args.ray)
    loader: dict[str, Any] = {k: v for k, v in (("text_fields", args.text_fields), ("id_field", args.id_field)) if v}
    loader["limits"] = LoadLimits(max_file_bytes=int(args.max_file_mb * 2**20), max_document_bytes=int(args.max_document_mb * 2**20))
    loader["strict"] = args.strict
    with embed.resumable() if embed is not None else contextlib.nullcontext():
        pipe = _index_into(args, loader, embed)
        path = pipe.save(args.out)
    log.info("%d chunks indexed (%.1fs); saved to %s", len(pipe.retriever), time.perf_counter() - t, path)
    print(path)
    return 0


def _index_into(args: argparse.Namespace, loader: dict[str, Any], embed: Any) -> Any:
    """The pipeline of ``layered index``: OUT's updated with PATH, or a new one on PATH."""
    from layered.artifacts import MANIFEST
    from layered.pipeline import Pipeline
    from layered.retrieval.loaders import load_documents

    if (Path(args.out) / MANIFEST).is_file():
        pipe = _load_pipeline(args.out, args)
        docs = load_documents(args.path, **loader)
        report = pipe.add_documents(docs, progress=not args.quiet, embed=embed)
        log.info("updated %s: %s", args.out, report)
        if args.prune:
            keep = {d.id for d in docs}
            gone = {c.doc_id for c in pipe.retriever.store.chunks()} - keep
            log.info("pruned %d documents no longer in %s", pipe.delete_documents(sorted(gone)), args.path)
    else:
        pipe = Pipeline.from_defaults(args.path, k=args.k, chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
                                      hybrid=args.hybrid, layout=args.layout, progress=not args.quiet, embed=embed, **loader)
    return pipe


def _cmd_ask(args: argparse.Namespace) -> int:
    variables = prompt_variables(args.var)
    pipe = _load_pipeline(args.dir, args)
    if args.backend:
        pipe = pipe.serve_with(args.backend)
    if args.max_new_tokens is not None:
        pipe.generator.max_new_tokens = args.max_new_tokens  # validated by the generator
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
        print_answer(answer)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from layered.pipelines import assistant, demo

    pipe = demo.prepare(args.name, cache_dir=args.cache_dir, rebuild=args.rebuild, backend=args.backend,
                        max_new_tokens=args.max_new_tokens, progress=not args.quiet)
    t = time.perf_counter()
    for i, (question, answer) in enumerate(demo.answers(args.name, pipe, args.questions or (), audience=args.audience)):
        routed = f"   [adapter: {answer.metadata.get('adapter') or 'base'}]" if args.name == "support" else ""
        if routed and answer.metadata.get("refused"):
            routed = "   [declined before generating]"
        if i:
            print()
        print(f"Q: {question}{routed}")
        print("A: ", end="")
        print_answer(answer)
        tokens = answer.generation.completion_tokens if answer.generation else 0
        log.info("(%d tokens in %.1fs)", tokens, time.perf_counter() - t)
        t = time.perf_counter()
    if args.name == "medical":
        print(f"\n{assistant('medical').DISCLAIMER}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from layered.artifacts import atomic_write_json
    from layered.evaluation.retrieval import markdown_table, run_beir

    results = run_beir(args.data, split=args.split, k=args.k, retriever=args.retriever, custom=args.custom,
                       max_queries=args.max_queries, layout=args.layout, progress=not args.quiet)
    print(markdown_table(results))
    if args.out:
        atomic_write_json(args.out, {"data": str(args.data), "k": args.k, "results": results})
        log.info("wrote %s", args.out)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from layered.tuning import launch
    from layered.tuning.workflow import TuneOptions, run_tune, tune_config

    config, data = tune_config(args.data, method=args.method, steps=args.steps)
    if args.nproc > 1 and not launch.launched():  # start N copies of this command under torchrun
        return launch.run_cli(args.argv, nproc=args.nproc)
    options = TuneOptions(pipeline=args.pipeline, out=args.out, run_dir=args.run_dir, question_field=args.question_field,
                          answer_field=args.answer_field, redact=args.redact, resume=args.resume, cache_dir=args.cache_dir)
    path = run_tune(config, data, options, load=lambda folder: _load_pipeline(folder, args), progress=not args.quiet)
    if path is not None:  # rank 0 of a data-parallel run, or the only process
        print(path)
    return 0


def _cmd_tune_retriever(args: argparse.Namespace) -> int:
    from layered.retrieval.finetune import RetrieverTuneConfig, read_pairs

    pairs = read_pairs(args.data, split=args.split)
    config = RetrieverTuneConfig(seed=args.seed, keep=args.keep, **{k: getattr(args, k) for k in ("epochs", "negatives") if getattr(args, k)})
    pipe = _load_pipeline(args.pipeline, args)
    report = pipe.fit_retriever(pairs, config=config, progress=not args.quiet)
    log.info("validation nDCG@10: base %.4f, tuned %.4f: keeping the %s embedder", report.val_ndcg_base, report.val_ndcg_tuned,
             report.kept)
    if report.kept == "tuned" or args.out:
        log.info("saved the pipeline to %s", pipe.save(Path(args.out or args.pipeline)))
    print(json.dumps(report.as_dict(), indent=2))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from layered.generation.backends import set_llamacpp_options
    from layered.serving.access import LOOPBACK, check_identity_source
    from layered.serving.server import PipelineServer, ServeOptions

    pipe = _load_pipeline(args.dir, args)
    check_identity_source(pipe, user_header=args.user_header, public_only=args.public_only)  # before the model loads
    if args.backend:
        pipe = pipe.serve_with(args.backend)
    set_llamacpp_options(pipe.generator, parallel=args.parallel, ignore_eos=args.ignore_eos)  # read when the model loads
    pipe.warm_up()
    options = ServeOptions(model_name=args.name, max_body_bytes=args.max_body, max_queue=args.max_queue,
                           user_header=args.user_header, groups_header=args.groups_header,
                           trusted_proxies=tuple(args.trusted_proxies or LOOPBACK), public_only=args.public_only,
                           header_timeout=args.header_timeout, keep_alive_timeout=args.keep_alive_timeout,
                           max_connections=args.max_connections)
    server = PipelineServer(pipe, (args.host, args.port), options)
    # Always said (even with -q): a server that does not say where it listens is no use.
    print(f"layered: serving {args.name} on {server.url} (POST /v1/chat/completions, POST /ask, GET /v1/models, "
          "GET /health); Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from layered.evaluation.workflow import CompareOptions, run_compare

    options = CompareOptions(
        task=args.task, data=args.data, test=args.test, shots=args.shots, steps=args.steps, search=args.search,
        retrain=args.retrain, max_new_tokens=args.max_new_tokens, backend=args.backend, audience=args.audience,
        out=args.out, cache_dir=args.cache_dir,
    )
    print(run_compare(options, progress=not args.quiet).table)
    return 0


def _cmd_export_peft(args: argparse.Namespace) -> int:
    import shlex

    from layered.serving.vllm import export_sources

    exported = export_sources(args.sources, args.out, adapters=args.adapters, base_folder=args.base_folder)
    log.info("exported %s and the base %s to %s", ", ".join(exported.adapters), exported.base, exported.folder)
    print("vllm serve " + shlex.join(exported.vllm_args(args.served_name)))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "index": _cmd_index, "ask": _cmd_ask, "eval": _cmd_eval, "tune": _cmd_tune, "tune-retriever": _cmd_tune_retriever,
    "serve": _cmd_serve, "demo": _cmd_demo, "compare": _cmd_compare, "export-peft": _cmd_export_peft,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to start the same command again (tune --nproc)
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
