"""A llama.cpp generator for GGUF models (``llama-cpp-python``): the fast CPU serving path.

The prompt is rendered to token ids with the model's own chat template through the
transformers tokenizer read from the same GGUF, so llama.cpp sees exactly the tokens the
transformers generator (and ``Pipeline.fit``) would: train what you serve, serve it fast.
LoRA adapters exported to GGUF (:mod:`layered.adapters.export`) are loaded once and chosen
per request by name. Decoding is greedy unless ``temperature > 0``; ``stop`` sequences end
the answer.

Requests decode through :class:`~layered.generation.llamacpp_batch.BatchEngine`: up to
``parallel`` requests from any threads share each llama.cpp step (continuous batching),
and a request's greedy answer is the same whether it ran alone or beside others (but at
floating-point near-ties of its logits: :mod:`~layered.generation.llamacpp_batch`).

By default a quantized GGUF is served with its weights widened to F16
(:mod:`layered.generation.gguf_weights`): llama.cpp then computes what the transformers
backend (and the trainer) computes, instead of rounding activations to 8 bits.
``precision="native"`` serves the GGUF's own quantized blocks: faster, and the greedy
answers drift from the trained model's.
"""

from __future__ import annotations

import codecs
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

from layered import models
from layered.adapters import DEFAULT, runtime
from layered.artifacts import sha256_file
from layered.errors import ConfigError
from layered.generation.cancel import stop_signal
from layered.generation.common import DECODING_KEYS, LocalDecoding, chat_messages, check_fits
from layered.generation.gguf_weights import gguf_tokenizer, widened
from layered.generation.guards import DecodingGuard
from layered.generation.llamacpp_batch import BatchEngine, Job, Sampling
from layered.types import Generation, PieceStream, Prompt

LORA_FILE = "adapter.gguf"
DEFAULT_NAME = DEFAULT
PRECISIONS = ("f16", "native")


class LlamaCppGenerator(LocalDecoding):
    """Chat generation with llama.cpp on CPU; same prompt contract as the transformers generator.

    ``repetition_penalty`` is llama.cpp's: it applies to the last 64 tokens (prompt included),
    where transformers applies it to every token so far; 1.0 turns it off in both.
    ``flash_attn`` (on by default) measured 6-10% more tokens/s here. ``precision``: ``"f16"``
    (default) serves a quantized GGUF's weights widened to 16-bit floats, so the answers are
    the transformers backend's; ``"native"`` multiplies the quantized blocks as stored (llama.cpp
    then quantizes activations to 8 bits: 3-16% more tokens/s here, a third of the weight memory).
    ``parallel``: requests decoded together at most (the KV cache holds ``parallel`` full
    windows); further requests wait for a free slot.
    """

    kind = "llamacpp"

    def __init__(
        self,
        model: str = models.DEFAULT_GENERATOR.name,
        *,
        max_new_tokens: int = 256,
        context_window: int = 2048,
        temperature: float = 0.0,
        top_p: float = 0.95,
        repetition_penalty: float = 1.1,
        stop: Sequence[str] = (),
        seed: int = 0,
        threads: int | None = None,
        lora: str | Path | None = None,
        lora_scale: float = 1.0,
        loras: Mapping[str, str | Path] | None = None,
        default_adapter: str | None = None,
        flash_attn: bool = True,
        precision: Literal["f16", "native"] = "f16",
        loop_ngram: int | None = 4,
        whole_sentences: bool = True,
        parallel: int = 8,
        ignore_eos: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
            raise ConfigError(f"parallel must be a positive number of requests, not {parallel!r}")
        named = {**({DEFAULT_NAME: lora} if lora is not None else {}), **dict(loras or {})}
        for name, file in named.items():
            if not Path(file).is_file():
                raise ConfigError(f"the LoRA adapter {name!r} ({file}) does not exist")
        if lora is not None and default_adapter is None:
            default_adapter = DEFAULT_NAME
        if default_adapter is not None and default_adapter not in named:
            raise ConfigError(f"default_adapter {default_adapter!r} is not one of the adapters ({', '.join(named) or 'none'})")
        self._set_decoding(model, max_new_tokens=max_new_tokens, context_window=context_window, temperature=temperature,
                           repetition_penalty=repetition_penalty, seed=seed, loop_ngram=loop_ngram, whole_sentences=whole_sentences)
        self.top_p = top_p
        self.stop = list(stop)
        self.threads = threads
        #: GGUF LoRA adapters by name; one context switches between them per request.
        self.loras: dict[str, Path] = {name: Path(file) for name, file in named.items()}
        self.default_adapter = default_adapter
        self.lora_scale = lora_scale
        self.flash_attn = flash_attn
        self.precision = precision
        #: Requests decoded together at most (KV cache slots); more wait for a free slot.
        self.parallel = parallel
        #: Every answer runs to its ``max_new_tokens`` past end-of-generation tokens and loops
        #: (for load tests of a fixed answer length, as llama-server's ``--ignore-eos``).
        self.ignore_eos = ignore_eos
        self._engine: BatchEngine | None = None
        self._tokenizer: Any = None
        self._lock = threading.RLock()
        self._encode_lock = threading.Lock()

    @classmethod
    def from_generator(cls, generator: Any, *, adapter_dir: str | Path | None = None, **options: Any) -> "LlamaCppGenerator":
        """The llama.cpp twin of a transformers generator: same GGUF, same decoding settings, and
        every LoRA adapter exported to GGUF (into ``adapter_dir``, else a temp folder), the same
        one answering by default.
        """
        from layered.adapters.export import export_lora

        path = models.resolve(generator.model_name)
        if not path.is_file() or path.suffix != ".gguf":
            raise ConfigError(f"llama.cpp serves GGUF files; the generator's model is {path}")
        settings = {k: getattr(generator, k) for k in ("max_new_tokens", "context_window", "temperature", "repetition_penalty", "seed")}
        settings["loop_ngram"], settings["whole_sentences"] = generator.guard.ngram, generator.guard.whole_sentences
        loras: dict[str, Path] = {}
        if generator.adapters:
            folder = Path(adapter_dir) if adapter_dir is not None else Path(tempfile.mkdtemp(prefix="layered-lora-"))
            for name, config in generator.adapters.items():
                source = generator.adapter_source(name)
                if source is not None and adapter_dir is not None:
                    # Exported once per weights file: the name carries the file's digest.
                    target = folder / f"{name}-{sha256_file(source)[:16]}.gguf"
                    loras[name] = target if target.is_file() else export_lora(generator.adapter_weights(name), config, path, target)
                else:
                    loras[name] = export_lora(generator.adapter_weights(name), config, path, folder / f"{name}.gguf")
        return cls(generator.model_name, **{**settings, "loras": loras, "default_adapter": generator.default_adapter, **options})

    @property
    def adapters(self) -> dict[str, dict[str, Any]]:
        """The adapters this generator serves, by name (``"base"`` is always available too)."""
        return {name: {"method": "lora", "file": str(file)} for name, file in self.loras.items()}

    # -- loading -----------------------------------------------------------------------------

    def _load(self) -> "BatchEngine":
        """The batching engine over the model and every adapter, loaded once."""
        with self._lock:
            if self._engine is None:
                path = models.resolve(self.model_name)
                with models.loading("the llama.cpp model", path, (OSError, ValueError, ImportError, RuntimeError)):
                    weights = widened(path) if self.precision == "f16" else path
                    self._engine = BatchEngine(
                        weights, slots=self.parallel, window=self.context_window, threads=self.threads or os.cpu_count() or 1,
                        flash_attn=self.flash_attn, loras=self.loras, lora_scale=self.lora_scale,
                    )
            return self._engine

    def warm_up(self) -> None:
        self._load()
        _ = self.tokenizer

    def close(self) -> None:
        """Free the model (requests still running end with an error); the next request loads it again."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (read from the GGUF, as transformers reads it)."""
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = gguf_tokenizer(models.resolve(self.model_name))
            return self._tokenizer

    @property
    def prompt_budget(self) -> int:
        return self.context_window - self.max_new_tokens

    # -- generation --------------------------------------------------------------------------

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of the prompt after the model's chat template (as the transformers generator)."""
        tokenizer = self.tokenizer
        with self._encode_lock:  # a fast tokenizer must not be used by two threads at once
            return list(tokenizer.apply_chat_template(chat_messages(prompt, tokenizer), add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"])

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode(prompt))

    def _sampling(self) -> Sampling:
        greedy = self.temperature <= 0
        return Sampling(temperature=0.0 if greedy else self.temperature, top_p=self.top_p, min_p=0.0,
                        repeat_penalty=self.repetition_penalty, seed=self.seed, ignore_eos=self.ignore_eos)

    def _resolve(self, adapter: str | None) -> str | None:
        """The adapter a request asking for ``adapter`` gets (None: the base model)."""
        return runtime.resolve(adapter, self.adapters, self.default_adapter)

    def submit(self, prompt: Prompt, *, adapter: str | None = None, max_new_tokens: int | None = None) -> Job:
        """Queue ``prompt`` on the batching engine; the raw token ids arrive on the returned job
        (for callers that detokenize themselves, e.g. benchmarks; ``stream`` is the text)."""
        n = min(max_new_tokens or self.max_new_tokens, self.max_new_tokens)
        ids = self.encode(prompt)
        check_fits(len(ids), self.context_window, n)
        return self._load().submit(ids, adapter=self._resolve(adapter), max_new_tokens=n, sampling=self._sampling())

    def generate(self, prompt: Prompt, *, adapter: str | None = None, max_new_tokens: int | None = None) -> Generation:
        """The guarded answer (see :class:`~layered.generation.guards.DecodingGuard`) with ``adapter``
        (None: the default adapter; ``"base"``: none); ``max_new_tokens`` lowers this request's budget.
        Safe to call from many threads: concurrent calls share decode steps."""
        job = self.submit(prompt, adapter=adapter, max_new_tokens=max_new_tokens)
        text = "".join(self._guard().stream(self._pieces(job), cut=lambda: job.finish_reason == "length"))
        finish: Literal["stop", "length"] = "length" if job.finish_reason == "length" else "stop"
        return Generation(text=text, prompt_tokens=job.stats.prompt_tokens, completion_tokens=job.stats.tokens, finish_reason=finish,
                          timing=job.stats.as_dict())

    def stream(self, prompt: Prompt, *, adapter: str | None = None, max_new_tokens: int | None = None) -> "TimedStream":
        """The answer in pieces (whole sentences, guarded): the same text as ``generate``.

        Closing the iterator early (a client that went away) frees the request's slot before
        the engine's next step; its ``timing`` is the request's, complete once it is exhausted.
        """
        job = self.submit(prompt, adapter=adapter, max_new_tokens=max_new_tokens)
        return TimedStream(self._guard().stream(self._pieces(job), cut=lambda: job.finish_reason == "length"), job)

    def _guard(self) -> DecodingGuard:
        """The answer guard; with ``ignore_eos`` a loop does not stop the answer either."""
        if self.ignore_eos and self.guard.ngram is not None:
            return DecodingGuard(ngram=None, whole_sentences=self.guard.whole_sentences)
        return self.guard

    def _pieces(self, job: Job) -> Iterator[str]:
        """The job's text, one piece per token (UTF-8 split across tokens held back until whole),
        cut before the first ``stop`` string."""
        engine = self._load()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held = ""  # text that might be the start of a stop string
        tokens = job.tokens()
        cancel = stop_signal()  # the caller's stop signal (a server whose client left)
        try:
            for token in tokens:
                if cancel.is_set():
                    return  # closing the token iterator below frees the job's slot before the next step
                held += decoder.decode(engine.piece(token))
                if self.stop:
                    cut = min((i for i in (held.find(s) for s in self.stop) if i >= 0), default=-1)
                    if cut >= 0:
                        if held[:cut]:
                            yield held[:cut]
                        job.finish_reason = "stop"
                        return
                    keep = _stop_prefix(held, self.stop)
                    ready, held = held[: len(held) - keep], held[len(held) - keep:]
                else:
                    ready, held = held, ""
                if ready:
                    yield ready
            held += decoder.decode(b"", final=True)
            if held:
                yield held
        finally:
            # Closing the token iterator cancels the job: a loop the guard saw, a client gone.
            tokens.close()

    # -- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            **self._decoding_config(), "top_p": self.top_p, "stop": self.stop,
            "loras": {name: f"{name}.gguf" for name in self.loras}, "default_adapter": self.default_adapter,
            "lora_scale": self.lora_scale, "flash_attn": self.flash_attn, "precision": self.precision, "parallel": self.parallel,
        }

    def save(self, folder: Path) -> None:
        """Copy the GGUF LoRA adapters into ``folder/generator``; the base model is not copied."""
        if self.loras:
            (folder / "generator").mkdir(parents=True, exist_ok=True)
            for name, file in self.loras.items():
                shutil.copyfile(file, folder / "generator" / f"{name}.gguf")

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "LlamaCppGenerator":
        options = {k: config[k] for k in (*DECODING_KEYS, "top_p", "stop", "lora_scale", "flash_attn", "precision", "default_adapter",
                                          "parallel") if k in config}
        loras = {name: _inside(folder, file) for name, file in (config.get("loras") or {}).items()}
        if config.get("lora"):  # format of layered <= 0.1.0 saves: one adapter
            loras[DEFAULT_NAME] = folder / "generator" / LORA_FILE
            options.setdefault("default_adapter", DEFAULT_NAME)
        return cls(config["model"], loras=loras, **options)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LlamaCppGenerator":
        if config.get("lora") or config.get("loras"):
            raise ConfigError("this llama.cpp config names LoRA files; load it with Pipeline.load(folder)")
        return cls.load(Path("."), config)


def _inside(folder: Path, name: str) -> Path:
    """``folder/generator/name``, refusing names that would leave that folder."""
    if Path(name).name != name or name in ("", ".", ".."):
        raise ConfigError(f"adapter file name {name!r} in the saved config is not a plain file name")
    return folder / "generator" / name



class TimedStream(PieceStream):
    """A streamed answer's pieces, with the request's ``timing`` (see ``Generation.timing``)."""

    def __init__(self, pieces: Iterator[str], job: Job) -> None:
        super().__init__(pieces)
        self._job = job

    @property
    def timing(self) -> dict[str, float]:
        return self._job.stats.as_dict()


def _stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could begin one of ``stops``."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
