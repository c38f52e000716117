"""Continuous batching on llama.cpp: many requests share each decode step.

llama-cpp-python's ``Llama`` decodes one sequence at a time. :class:`BatchEngine` drives
llama.cpp's low-level batch API itself: one context whose KV cache holds up to ``slots``
sequences (one sequence id and, by default, one KV stream each), and one scheduler thread
that runs two kinds of step: a *decode step* puts the next token of every generating
sequence into a single ``llama_batch``; a *prefill step* evaluates a chunk (up to ``batch``
tokens) of the oldest waiting prompt. The two alternate while both have work, so answers
keep streaming while new prompts are read. A request joins as soon as a slot is free and
leaves the moment it ends or is cancelled (its slot and KV cells freed at once), so short
answers never wait for long ones.

Contracts:

- **Same tokens as alone.** Each request samples with its own llama.cpp sampler chain
  (repeat penalty over its own generated tokens, then greedy, or top-k/top-p/temperature
  with its seed), exactly the chain ``Llama.create_completion`` builds. llama.cpp computes
  every row of a batch independently, except that a one-row batch goes through other matrix
  kernels (ggml's ``vec_dot``) than a multi-row one (tinyBLAS): one-token steps are padded
  with a throwaway row, so a request's greedy tokens are the same whether it ran alone or
  beside others, except at a near-tie: the sums still depend on the batch's shape by ~1e-3,
  and on an AVX2 CPU one answer of 20 parted at a top-2 logit gap of 0.0014, in one run of
  two (tested on 20 prompts: every parting at a gap under 0.02).
- **Adapters per step.** llama.cpp applies LoRA adapters per context, not per sequence: a
  step serves the sequences of one adapter (``None``: the base model); adapter groups take
  turns, so mixed traffic still shares steps within each group.
- **Shared prefix.** Prompts that start with the same tokens (the system prompt and
  instructions of every RAG prompt) reuse the KV cells of that prefix instead of computing
  them again (``prefix_cache``; one cached prefix per adapter, since a LoRA changes them).
- **Cancellation.** :meth:`Job.cancel` (or closing :meth:`Job.tokens`) ends the request
  before its next step; a request's failure (KV cache full) ends that request with an
  error, never the engine.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Mapping, Sequence

from layered.errors import GenerationError, ModelNotAvailableError

#: Shorter shared prefixes are not worth a cache entry.
MIN_PREFIX = 16

#: Set to ``1`` to let ggml put weights in its extra buffer types (AMX tiles) on a CPU that
#: advertises AMX; see :func:`model_params`.
AMX_ENV = "LAYERED_LLAMACPP_AMX"


def cpu_has_amx(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU's flags (Linux ``/proc/cpuinfo``) list ``amx_int8``; False where unreadable."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_int8" in line.split() for line in text.splitlines())


def model_params(extra_buffers: bool | None = None) -> Any:
    """llama.cpp's model parameters, with ggml's extra weight buffers off on an AMX CPU.

    On a CPU that advertises AMX, ggml moves quantised weights (Q4_0, Q4_1, Q8_0, K-quants)
    into its AMX buffer type and multiplies multi-token batches with tile instructions.
    llama-cpp-python 0.3.36 built natively on an AMX Xeon VM killed the process with SIGILL
    at the first prompt (``tileloadd`` in ``ggml_backend_amx_mul_mat``), although AMX itself
    ran there (a C test of ``ldtilecfg``/``tileloadd``/``tdpbssd`` in threads passed): a
    crash no exception can catch. So on such CPUs the weights stay in plain CPU buffers
    (ggml's AVX-512 kernels) unless ``extra_buffers`` is True or
    ``$LAYERED_LLAMACPP_AMX`` is ``1``. Elsewhere (``extra_buffers=None``) llama.cpp's default
    stands: extra buffers on, ggml's repacked Q4_0/K-quant layouts included.
    """
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    if extra_buffers is None:
        extra_buffers = os.environ.get(AMX_ENV, "") == "1" or not cpu_has_amx()
    params.use_extra_bufts = extra_buffers
    return params


@dataclass(frozen=True)
class Sampling:
    """How a request picks tokens: llama-cpp-python's ``create_completion`` chain."""

    temperature: float = 0.0
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.1
    penalty_last_n: int = 64
    seed: int = 0
    #: Never end at an end-of-generation token: always ``max_new_tokens`` (load tests; vLLM's
    #: and llama-server's ``ignore_eos``).
    ignore_eos: bool = False


@dataclass
class JobStats:
    """Where a request's time went (seconds, from :func:`time.perf_counter`)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    submitted: float = 0.0
    started: float = 0.0
    first_token: float = 0.0
    finished: float = 0.0
    tokens: int = 0

    @property
    def queued_s(self) -> float:
        return max(0.0, self.started - self.submitted)

    @property
    def prefill_s(self) -> float:
        """From taking a slot to the first generated token (the prompt's evaluation)."""
        return max(0.0, self.first_token - self.started) if self.first_token else 0.0

    @property
    def decode_s(self) -> float:
        """From the first generated token to the last (to now, while the request still runs)."""
        return max(0.0, (self.finished or time.perf_counter()) - self.first_token) if self.first_token else 0.0

    def as_dict(self) -> dict[str, float]:
        """The timings and token counts as plain numbers (``ttft_s``: submission to first token)."""
        ttft = max(0.0, self.first_token - self.submitted) if self.first_token else 0.0
        return {"queued_s": round(self.queued_s, 4), "prefill_s": round(self.prefill_s, 4), "decode_s": round(self.decode_s, 4),
                "ttft_s": round(ttft, 4), "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                "tokens": self.tokens}


_DONE = object()


@dataclass(eq=False)
class Job:
    """One request in the engine: iterate :meth:`tokens` for its token ids as they are sampled."""

    ids: list[int]
    adapter: str | None
    max_new_tokens: int
    sampling: Sampling
    stats: JobStats = field(default_factory=JobStats)
    finish_reason: str | None = None  # "stop" (end-of-generation token) or "length"
    #: Only evaluate the prompt and keep its last position's logits here (see ``BatchEngine.logits``).
    logits: Any = None
    logits_only: bool = False
    _out: "queue.SimpleQueue[Any]" = field(default_factory=queue.SimpleQueue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop this request before its next step; its slot is freed then."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def tokens(self) -> Generator[int, None, None]:
        """The generated token ids, blocking for each; closing the iterator cancels the job."""
        try:
            while True:
                item = self._out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()


@dataclass(eq=False)
class _Running:
    """Scheduler-side state of a job that holds a slot."""

    job: Job
    seq: int
    sampler: Any
    pos: int = 0  # tokens of this sequence in the KV cache
    todo: list[int] = field(default_factory=list)  # prompt tokens not yet evaluated
    last: int = -1  # the last sampled token, evaluated at the next step
    generated: int = 0
    learn: int = 0  # once the prompt is in the cache: cache its first ``learn`` tokens as the prefix


@dataclass
class _Prefix:
    """A cached prompt prefix: the sequence id holding its KV cells and its tokens."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    last_prompt: list[int] = field(default_factory=list)


class BatchEngine:
    """One llama.cpp model and context serving up to ``slots`` requests at once.

    ``window`` is the longest sequence (prompt + answer) one request may have; each sequence
    id gets its own KV stream of ``window`` cells (``unified=True``: one pool of
    ``slots * window`` cells shared by all, measured slower here). ``batch`` is the most
    tokens one step evaluates. ``threads``: llama.cpp's CPU threads.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        slots: int = 8,
        window: int = 2048,
        batch: int = 512,
        threads: int = 1,
        flash_attn: bool = True,
        loras: Mapping[str, str | Path] | None = None,
        lora_scale: float = 1.0,
        prefix_cache: bool = True,
        unified: bool = False,
    ) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's load and graph logs: errors only
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.model_path, self.slots, self.window, self.batch_size = Path(model_path), slots, window, batch
        self.prefix_cache, self.unified = prefix_cache, unified
        self._pad_seq = slots  # a throwaway row for one-token steps (see _step)
        self._model = _internals.LlamaModel(path_model=str(model_path), params=model_params(), verbose=False)
        params = llama_cpp.llama_context_default_params()
        n_seq = slots + 2 + len(loras or {})  # + the pad row + one cached prefix per adapter
        # Unified: one pool of cells for all sequences. Not unified (the default): each sequence
        # id its own stream of ``window`` cells, so attention reads only that sequence's cells
        # (measured: 1.57x vs 1.39x one-at-a-time on 700-token prompts, 8 at once).
        params.n_ctx = (slots if unified else n_seq) * window
        params.n_batch = params.n_ubatch = batch
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = unified
        params.no_perf = True
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=batch, embd=0, n_seq_max=1, verbose=False)
        self._vocab = self._model.vocab
        self._eog: list[int] | None = None
        self.n_vocab = self._model.n_vocab()
        self._lora_scale = lora_scale
        self._loras: dict[str, Any] = {}
        for name, file in (loras or {}).items():
            handle = llama_cpp.llama_adapter_lora_init(self._model.model, str(file).encode("utf-8"))
            if not handle:
                raise ModelNotAvailableError(f"llama.cpp could not load the LoRA adapter {file}")
            self._loras[name] = handle
        self._current_adapter: Any = ()  # nothing set yet
        # One cached prefix per adapter (a LoRA changes the keys and values): its sequence
        # id, the tokens its KV cells hold, and the last prompt seen with that adapter.
        self._prefix = {name: _Prefix(slots + 1 + i) for i, name in enumerate([None, *self._loras])}
        self._waiting: deque[Job] = deque()
        self._running: list[_Running] = []
        self._free = list(range(slots))
        self._turn = itertools.count()
        self._prefilled_last = False
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="layered-llamacpp-batch", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------------

    def submit(self, ids: Sequence[int], *, adapter: str | None = None, max_new_tokens: int = 256,
               sampling: Sampling = Sampling(), logits_only: bool = False) -> Job:
        """Queue a request; its tokens arrive on the returned :class:`Job`."""
        if adapter is not None and adapter not in self._loras:
            raise GenerationError(f"the engine has no adapter {adapter!r}")
        if not ids:
            raise GenerationError("cannot generate from an empty prompt")
        if len(ids) + max_new_tokens > self.window:
            raise GenerationError(f"{len(ids)} prompt + {max_new_tokens} new tokens exceed the {self.window}-token window")
        job = Job(list(ids), adapter, max_new_tokens, sampling, logits_only=logits_only)
        job.stats.submitted = time.perf_counter()
        job.stats.prompt_tokens = len(job.ids)
        with self._wake:
            if self._closed:
                raise GenerationError("the llama.cpp engine is closed")
            self._waiting.append(job)
            self._wake.notify()
        return job

    def logits(self, ids: Sequence[int], *, adapter: str | None = None) -> Any:
        """The next-token logits after ``ids`` (a float32 array over the vocabulary), computed
        in the engine's own steps like any request (for agreement checks and benchmarks)."""
        job = self.submit(ids, adapter=adapter, max_new_tokens=1, logits_only=True)
        for _ in job.tokens():
            pass
        return job.logits

    def piece(self, token: int) -> bytes:
        """The bytes of ``token`` (a UTF-8 character may span several tokens)."""
        import llama_cpp

        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    @property
    def active(self) -> int:
        """Requests holding a slot now."""
        return len(self._running)

    def close(self) -> None:
        """Stop the scheduler (pending requests end with an error) and free the model."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._thread.join()
        import llama_cpp

        for handle in self._loras.values():
            llama_cpp.llama_adapter_lora_free(handle)
        self._loras.clear()
        self._batch.close()
        self._ctx.close()
        self._model.close()

    # -- scheduler ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._running:
                    self._wake.wait()
                if self._closed:
                    break
                self._admit()
            try:
                self._drop_cancelled()
                if self._running:
                    self._step()
            except Exception as e:  # a bug or a llama.cpp failure ends the requests in flight, not the engine
                for run in list(self._running):
                    self._finish(run, GenerationError(f"llama.cpp generation failed: {e}"))
        error = GenerationError("the llama.cpp engine was closed")
        for job in [*self._waiting, *(r.job for r in self._running)]:
            job._out.put(error)

    def _admit(self) -> None:
        """Give free slots to waiting jobs (called with the lock held)."""
        while self._free and self._waiting:
            job = self._waiting.popleft()
            if job.cancelled:
                job._out.put(_DONE)
                continue
            seq = self._free.pop(0)
            run = _Running(job, seq, self._sampler(job.sampling), todo=list(job.ids))
            job.stats.started = time.perf_counter()
            self._reuse_prefix(run)
            self._running.append(run)

    def _reuse_prefix(self, run: _Running) -> None:
        """Share the cached prefix's KV cells with a new sequence, and learn a longer prefix."""
        if not self.prefix_cache:
            return
        ids, prefix = run.job.ids, self._prefix[run.job.adapter]
        # Always leave one prompt token to evaluate: its logits pick the first answer token.
        n = min(_common(prefix.tokens, ids), len(ids) - 1)
        if n >= MIN_PREFIX:
            self._memory_cp(prefix.seq, run.seq, n, have=len(prefix.tokens))
            run.pos, run.todo = n, ids[n:]
            run.job.stats.cached_tokens = n
        # The longest start two consecutive prompts share becomes the cached prefix once
        # this prompt's cells exist (see _learn_prefix).
        shared = _common(prefix.last_prompt, ids)
        run.learn = shared if shared > len(prefix.tokens) and shared >= MIN_PREFIX else 0
        prefix.last_prompt = ids

    def _learn_prefix(self, run: _Running) -> None:
        n, run.learn = run.learn, 0
        prefix = self._prefix[run.job.adapter]
        if n > len(prefix.tokens):
            self._memory_rm(prefix.seq)
            self._memory_cp(run.seq, prefix.seq, n, have=run.pos)
            prefix.tokens = run.job.ids[:n]

    def _drop_cancelled(self) -> None:
        for run in [r for r in self._running if r.job.cancelled]:
            self._finish(run, None)

    def _step(self) -> None:
        """One llama.cpp call for the sequences of one adapter: either one token for every
        generating sequence (a decode step), or one chunk of one waiting prompt (a prefill
        step). Decode and prefill steps alternate while both have work, so answers keep
        flowing while new prompts are read."""
        adapters = list(dict.fromkeys(r.job.adapter for r in self._running))
        adapter = adapters[next(self._turn) % len(adapters)]
        group = [r for r in self._running if r.job.adapter == adapter]
        self._set_adapter(adapter)
        batch = self._batch.batch
        n, outputs = 0, []
        decoding = [r for r in group if not r.todo]
        prefilling = [r for r in group if r.todo]
        if decoding and (not prefilling or not self._prefilled_last):
            for run in decoding:
                _put(batch, n, run.last, run.pos, run.seq, True)
                outputs.append((run, n, 1))
                n += 1
            self._prefilled_last = False
        else:  # the oldest waiting prompt, one chunk
            run = prefilling[0]
            take = run.todo[: self.batch_size]
            for i, token in enumerate(take):
                _put(batch, n, token, run.pos + i, run.seq, i == len(take) - 1 and len(take) == len(run.todo))
                n += 1
            outputs.append((run, n - 1, len(take)))
            self._prefilled_last = True
        if n == 1:
            # llama.cpp multiplies a one-row batch with other kernels (ggml's vec_dot) than a
            # batch of several rows (tinyBLAS): pad it with a throwaway row, so a request's
            # tokens do not depend on how many others share its step.
            _put(batch, n, run.last if not run.todo else run.todo[0], 0, self._pad_seq, False)
            n += 1
        batch.n_tokens = n
        import llama_cpp

        status = llama_cpp.llama_decode(self._ctx.ctx, batch)
        self._memory_rm(self._pad_seq)
        if status != 0:
            error = GenerationError(f"llama.cpp could not decode the batch (status {status}); the KV cache is full")
            for run, _, _ in outputs:
                self._finish(run, error)
            return
        now = time.perf_counter()
        for run, index, count in outputs:
            run.pos += count
            if run.todo:  # a prompt chunk
                run.todo = run.todo[count:]
                if run.todo:
                    continue
                self._learn_prefix(run)
                if run.job.logits_only:
                    import numpy as np

                    row = llama_cpp.llama_get_logits_ith(self._ctx.ctx, index)
                    run.job.logits = np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()
                    self._finish(run, None)
                    continue
            token = run.sampler.sample(self._ctx, index)
            self._emit(run, token, now)

    def _emit(self, run: _Running, token: int, now: float) -> None:
        import llama_cpp

        job = run.job
        if not job.stats.first_token:
            job.stats.first_token = now
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            job.finish_reason = "stop"
            self._finish(run, None)
            return
        run.last, run.generated = token, run.generated + 1
        job.stats.tokens = run.generated
        job._out.put(token)
        if run.generated >= job.max_new_tokens:
            job.finish_reason = "length"
            self._finish(run, None)

    def _finish(self, run: _Running, error: BaseException | None) -> None:
        run.job.stats.finished = time.perf_counter()
        self._memory_rm(run.seq)
        run.sampler.close()
        self._running.remove(run)
        with self._wake:
            self._free.append(run.seq)
            self._free.sort()
        run.job._out.put(error if error is not None else _DONE)  # last: the slot is free when the caller hears

    # -- llama.cpp helpers -------------------------------------------------------------------

    def _sampler(self, s: Sampling) -> Any:
        from llama_cpp import _internals

        sampler = _internals.LlamaSampler()
        if s.ignore_eos:
            sampler.add_logit_bias(self.n_vocab, {t: float("-inf") for t in self._eog_tokens()})
        sampler.add_penalties(self.n_vocab, s.penalty_last_n, s.repeat_penalty, 0.0, 0.0)
        if s.temperature <= 0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(s.top_k)
            sampler.add_typical(1.0, 1)
            sampler.add_top_p(s.top_p, 1)
            sampler.add_min_p(s.min_p, 1)
            sampler.add_temp(s.temperature)
            sampler.add_dist(s.seed)
        return sampler

    def _eog_tokens(self) -> list[int]:
        import llama_cpp

        if self._eog is None:
            self._eog = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t)]
        return self._eog

    def _set_adapter(self, adapter: str | None) -> None:
        import llama_cpp

        if adapter == self._current_adapter:
            return
        if adapter is None:
            failed = llama_cpp.llama_set_adapters_lora(self._ctx.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._loras[adapter])
            failed = llama_cpp.llama_set_adapters_lora(self._ctx.ctx, handles, 1, (ctypes.c_float * 1)(self._lora_scale))
        if failed:
            raise ModelNotAvailableError(f"llama.cpp could not switch to adapter {adapter or 'base'!r}")
        self._current_adapter = adapter

    def _memory_rm(self, seq: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq, -1, -1)

    def _memory_cp(self, src: int, dst: int, n: int, *, have: int) -> None:
        """Give ``dst`` the KV cells of ``src``'s first ``n`` tokens (``src`` holds ``have``)."""
        import llama_cpp

        if self.unified:  # cells are shared, not copied
            llama_cpp.llama_memory_seq_cp(self._ctx.memory, src, dst, 0, n)
            return
        # Separate streams: llama.cpp copies whole streams only; copy, then cut to n tokens.
        llama_cpp.llama_memory_seq_cp(self._ctx.memory, src, dst, -1, -1)
        if n < have:
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, dst, n, -1)


def _put(batch: Any, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = logits


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
