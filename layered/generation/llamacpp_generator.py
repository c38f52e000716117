"""A llama.cpp generator for GGUF models (``llama-cpp-python``): the fast CPU serving path.

The prompt is rendered to token ids with the model's own chat template through the
transformers tokenizer read from the same GGUF, so llama.cpp sees exactly the tokens the
transformers generator (and ``Pipeline.fit``) would: train what you serve, serve it fast.
A LoRA adapter exported to GGUF (:mod:`layered.tuning.export`) is applied at load
time. Decoding is greedy unless ``temperature > 0``; ``stop`` sequences end the answer.

By default a quantized GGUF is served with its weights widened to F16
(:mod:`layered.generation.gguf_weights`): llama.cpp then computes what the transformers
backend (and the trainer) computes, instead of rounding activations to 8 bits.
``precision="native"`` serves the GGUF's own quantized blocks: faster, and the greedy
answers drift from the trained model's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

from layered import models
from layered.errors import ConfigError, ModelNotAvailableError
from layered.generation.common import chat_messages, check_budget, check_fits, check_saveable
from layered.generation.gguf_weights import widened
from layered.types import Generation, Prompt

LORA_FILE = "adapter.gguf"
PRECISIONS = ("f16", "native")


class LlamaCppGenerator:
    """Chat generation with llama.cpp on CPU; same prompt contract as the transformers generator.

    ``repetition_penalty`` is llama.cpp's: it applies to the last 64 tokens (prompt included),
    where transformers applies it to every token so far; 1.0 turns it off in both.
    ``flash_attn`` (on by default) measured 6-10% more tokens/s here. ``precision``: ``"f16"``
    (default) serves a quantized GGUF's weights widened to 16-bit floats, so the answers are
    the transformers backend's; ``"native"`` multiplies the quantized blocks as stored (llama.cpp
    then quantizes activations to 8 bits: 3-16% more tokens/s here, a third of the weight memory).
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
        flash_attn: bool = True,
        precision: Literal["f16", "native"] = "f16",
    ) -> None:
        check_budget(max_new_tokens, context_window)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if lora is not None and not Path(lora).is_file():
            raise ConfigError(f"the LoRA adapter {lora} does not exist")
        self.model_name = model
        self.max_new_tokens = max_new_tokens
        self.context_window = context_window
        self.temperature = temperature
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        self.stop = list(stop)
        self.seed = seed
        self.threads = threads
        self.lora = Path(lora) if lora is not None else None
        self.lora_scale = lora_scale
        self.flash_attn = flash_attn
        self.precision = precision
        self._llm: Any = None
        self._tokenizer: Any = None
        self._lock = threading.RLock()

    @classmethod
    def from_generator(cls, generator: Any, *, adapter_dir: str | Path | None = None, **options: Any) -> "LlamaCppGenerator":
        """The llama.cpp twin of a transformers generator: same GGUF, same decoding settings,
        and its default LoRA adapter exported to GGUF (into ``adapter_dir``, else a temp folder).
        """
        from layered.tuning.export import export_lora

        path = models.resolve(generator.model_name)
        if not path.is_file() or path.suffix != ".gguf":
            raise ConfigError(f"llama.cpp serves GGUF files; the generator's model is {path}")
        settings = {k: getattr(generator, k) for k in ("max_new_tokens", "context_window", "temperature", "repetition_penalty", "seed")}
        lora = None
        if getattr(generator, "default_adapter", None) is not None:
            name = generator.default_adapter
            folder = Path(adapter_dir) if adapter_dir is not None else Path(tempfile.mkdtemp(prefix="layered-lora-"))
            lora = export_lora(generator.adapter_weights(name), generator.adapters[name], path, folder / f"{name}.gguf")
        return cls(generator.model_name, **{**settings, "lora": lora, **options})

    # -- loading -----------------------------------------------------------------------------

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._llm is None:
                models.force_offline()
                path = models.resolve(self.model_name)
                try:
                    from llama_cpp import Llama
                    from transformers import AutoTokenizer

                    weights = widened(path) if self.precision == "f16" else path
                    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
                    llm = Llama(
                        model_path=str(weights), n_ctx=self.context_window, n_threads=self.threads or os.cpu_count() or 1,
                        seed=self.seed, lora_path=str(self.lora) if self.lora else None, lora_scale=self.lora_scale,
                        flash_attn=self.flash_attn, verbose=False,
                    )
                except ModelNotAvailableError:
                    raise
                except (OSError, ValueError, ImportError, RuntimeError) as e:
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise ModelNotAvailableError(f"llama.cpp could not load {path}: {first}") from e
                self._llm, self._tokenizer = llm, tokenizer
            return self._llm, self._tokenizer

    def warm_up(self) -> None:
        self._load()

    @property
    def tokenizer(self) -> Any:
        return self._load()[1]

    @property
    def prompt_budget(self) -> int:
        return self.context_window - self.max_new_tokens

    # -- generation --------------------------------------------------------------------------

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of the prompt after the model's chat template (as the transformers generator)."""
        tokenizer = self._load()[1]
        return list(tokenizer.apply_chat_template(chat_messages(prompt, tokenizer), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode(prompt))

    def _ids(self, prompt: Prompt) -> list[int]:
        ids = self.encode(prompt)
        check_fits(len(ids), self.context_window, self.max_new_tokens)
        return ids

    def _options(self) -> dict[str, Any]:
        greedy = self.temperature <= 0
        return {
            "max_tokens": self.max_new_tokens, "temperature": 0.0 if greedy else self.temperature,
            "top_p": 1.0 if greedy else self.top_p, "top_k": 1 if greedy else 40, "min_p": 0.0,
            "repeat_penalty": self.repetition_penalty, "stop": self.stop or None, "seed": self.seed,
        }

    def _fresh(self) -> Any:
        """The model with its KV cache cleared: llama-cpp-python reuses a cached prefix otherwise,
        and evaluating the prompt in different batch splits can flip a greedy near-tie."""
        llm = self._load()[0]
        llm.reset()
        return llm

    def generate(self, prompt: Prompt) -> Generation:
        with self._lock:
            ids = self._ids(prompt)
            out = self._fresh().create_completion(prompt=ids, **self._options())
            choice, usage = out["choices"][0], out["usage"]
            finish: Literal["stop", "length"] = "length" if choice.get("finish_reason") == "length" else "stop"
            return Generation(
                text=choice["text"].strip(), prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage["completion_tokens"]), finish_reason=finish,
            )

    def stream(self, prompt: Prompt) -> Iterator[str]:
        """Yield the answer in text pieces as llama.cpp produces them (same text as ``generate``)."""
        with self._lock:
            ids = self._ids(prompt)
            first = True
            chunks = self._fresh().create_completion(prompt=ids, stream=True, **self._options())
            try:
                for chunk in chunks:
                    piece = chunk["choices"][0]["text"]
                    if first:
                        piece, first = piece.lstrip(), not piece.strip()
                    if piece:
                        yield piece
            finally:
                # llama.cpp decodes one token per step of this iterator: closing it (a client
                # that went away closes us) stops decoding before the next token.
                chunks.close()

    # -- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        check_saveable(self.model_name)
        return {
            "kind": self.kind, "model": self.model_name, "max_new_tokens": self.max_new_tokens,
            "context_window": self.context_window, "temperature": self.temperature, "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty, "stop": self.stop, "seed": self.seed,
            "lora": LORA_FILE if self.lora else None, "lora_scale": self.lora_scale, "flash_attn": self.flash_attn,
            "precision": self.precision,
        }

    def save(self, folder: Path) -> None:
        """Copy the GGUF LoRA adapter (if any) into ``folder/generator``; the base model is not copied."""
        if self.lora is not None:
            (folder / "generator").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.lora, folder / "generator" / LORA_FILE)

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "LlamaCppGenerator":
        options = {k: config[k] for k in ("max_new_tokens", "context_window", "temperature", "top_p", "repetition_penalty",
                                          "stop", "seed", "lora_scale", "flash_attn", "precision") if k in config}
        lora = folder / "generator" / LORA_FILE if config.get("lora") else None
        return cls(config["model"], lora=lora, **options)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LlamaCppGenerator":
        if config.get("lora"):
            raise ConfigError("this llama.cpp config names a LoRA file; load it with Pipeline.load(folder)")
        return cls.load(Path("."), config)
