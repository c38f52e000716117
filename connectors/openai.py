"""A generator for any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, TGI,
hosted APIs, or another ``layered serve``), over ``httpx``.

On vLLM serving LoRA adapters (``layered export-peft``, then ``--lora-modules NAME=FOLDER``),
``OpenAIGenerator("BASE", adapter_naming="model", default_adapter="NAME")`` answers with
adapter NAME by default, and a request for another adapter (a pipeline's router,
``ask(adapter=...)``) names it as the model (``"base"``: the served base model BASE).

Contract:

- explicit connect and read timeouts (a stalled stream fails after ``read_timeout``);
- retries with exponential backoff and jitter on connection errors and on 408, 429 and 5xx,
  honouring ``Retry-After`` (seconds or an HTTP date); a stream is retried only before its
  first token, never mid-answer;
- a malformed or truncated reply is one :class:`~layered.errors.RemoteError`;
- the answer passes through the same :class:`~layered.generation.guards.DecodingGuard` as the
  local backends' (a server such as vLLM returns what it decoded): an answer cut at
  ``max_tokens`` ends on its last whole sentence, a loop is cut before its first repeat (a
  stream stops reading, which closes the connection), and a stream yields whole sentences
  spelling exactly the non-streamed answer;
- message contents are sent with chat-template control tokens (``<|im_start|>``, ``[INST]``...)
  defused, as the local backends do before applying their template: the server tokenises the
  templated text, so a control token inside a question or passage would open or close a turn;
- the API key is read from the environment variable named by ``api_key_env`` at request
  time; it is never stored in the config, logged, or shown in ``repr``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping

from layered.adapters.names import BASE
from layered.errors import ConfigError, RemoteError
from layered.generation.common import AnswerBudget
from layered.generation.guards import DecodingGuard
from layered.prompts.injection import defuse_control_tokens
from layered.types import Generation, Prompt

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Wait ``base_delay * 2**attempt`` (at most ``max_delay``) plus up to ``jitter`` of it, random;
    a server's ``Retry-After`` replaces the computed wait (capped at ``max_delay``)."""

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.25

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        wait = min(self.base_delay * 2.0**attempt, self.max_delay)
        draw = rng.random() if rng is not None else random.random()
        return wait * (1 + self.jitter * draw)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(when - (time.time() if now is None else now), 0.0)


class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible server; the Generator role over HTTP."""

    kind = "openai"
    max_new_tokens = AnswerBudget(window=None)  # validated on every assignment (the server knows its window)
    #: Requests may name an adapter, but the server holds them: none is listed here.
    #: ``adapter_naming`` says how a request names one: ``"suffix"`` asks for model
    #: ``"<model>:<adapter>"`` (as ``layered serve`` names them), ``"model"`` asks for model
    #: ``"<adapter>"`` (as vLLM serves ``--lora-modules NAME=PATH``; ``"base"`` is then ``model``
    #: itself, the served base model). ``default_adapter`` answers requests naming none
    #: (None: ``model`` as served).
    default_adapter: str | None = None

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str | None = "OPENAI_API_KEY",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        adapter_naming: Literal["suffix", "model"] = "suffix",
        default_adapter: str | None = None,
        loop_ngram: int | None = 4,
        whole_sentences: bool = True,
    ) -> None:
        import httpx

        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        if adapter_naming not in ("suffix", "model"):
            raise ConfigError(f"adapter_naming must be 'suffix' or 'model', got {adapter_naming!r}")
        self.model = model
        self.adapter_naming = adapter_naming
        self.default_adapter = default_adapter
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self.guard = DecodingGuard(ngram=loop_ngram, whole_sentences=whole_sentences)
        self._rng = random.Random(seed)
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout)
        self._client = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=16, max_keepalive_connections=4))
        #: (attempts, seconds waited) of the most recent request, for logs and tests.
        self.last_attempts, self.last_wait = 0, 0.0

    @property
    def adapters(self) -> dict[str, dict[str, Any]]:
        """No adapters are known here (the server's are reached by name); see ``default_adapter``."""
        return {}

    def __repr__(self) -> str:
        return f"OpenAIGenerator(model={self.model!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    # -- requests ----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _model_for(self, adapter: str | None) -> str:
        adapter = adapter or self.default_adapter
        if not adapter:
            return self.model
        if self.adapter_naming == "model":
            return self.model if adapter == BASE else adapter
        return f"{self.model}:{adapter}"

    def _body(self, prompt: Prompt, stream: bool, adapter: str | None, max_new_tokens: int | None = None) -> dict[str, Any]:
        return {
            "model": self._model_for(adapter), "messages": [{"role": m.role, "content": defuse_control_tokens(m.content)} for m in prompt.messages],
            "max_tokens": min(max_new_tokens or self.max_new_tokens, self.max_new_tokens), "temperature": self.temperature, "stream": stream,
        }

    def _send(self, body: dict[str, Any], stream: bool) -> Any:
        """An open response with a 2xx status, after the retries the policy allows."""
        import httpx

        url = f"{self.base_url}/chat/completions"
        self.last_attempts, self.last_wait = 0, 0.0
        for attempt in range(self.retry.max_retries + 1):
            self.last_attempts = attempt + 1
            retry_after: float | None = None
            try:
                request = self._client.build_request("POST", url, json=body, headers=self._headers())
                response = self._client.send(request, stream=stream)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            else:
                if response.status_code < 300:
                    return response
                response.read()
                response.close()
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
                if response.status_code not in RETRY_STATUSES:
                    raise RemoteError(f"{url} refused the request ({problem})")
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if attempt == self.retry.max_retries:
                raise RemoteError(f"{url} failed after {attempt + 1} attempts ({problem})")
            wait = self.retry.delay(attempt, retry_after, self._rng)
            log.warning("%s: %s; retrying in %.2fs", url, problem, wait)
            self.sleep(wait)
            self.last_wait += wait
        raise AssertionError("unreachable")  # pragma: no cover

    def generate(self, prompt: Prompt, *, adapter: str | None = None, max_new_tokens: int | None = None) -> Generation:
        """One completion; ``adapter`` asks the server for it as ``adapter_naming`` says;
        ``max_new_tokens`` lowers this request's ``max_tokens`` (it never raises it)."""
        response = self._send(self._body(prompt, stream=False, adapter=adapter, max_new_tokens=max_new_tokens), stream=False)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RemoteError(f"malformed response from {self.base_url}: {type(e).__name__}: {e}") from None
        usage = data.get("usage") or {}
        finish: Literal["stop", "length"] = "length" if choice.get("finish_reason") == "length" else "stop"
        text, _ = self.guard.finish(text, cut=finish == "length")
        return Generation(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0), finish_reason=finish)

    def stream(self, prompt: Prompt, *, adapter: str | None = None, max_new_tokens: int | None = None) -> Iterator[str]:
        """Yield the guarded answer a sentence at a time (joined: :meth:`generate`'s text);
        closing the iterator closes the connection."""
        finish: list[str] = []
        pieces = self._events(self._body(prompt, stream=True, adapter=adapter, max_new_tokens=max_new_tokens), finish)
        return self.guard.stream(pieces, cut=lambda: finish[-1:] == ["length"])

    def _events(self, body: dict[str, Any], finish: list[str]) -> Iterator[str]:
        """Content pieces from the server-sent events; each ``finish_reason`` seen is appended to ``finish``."""
        import httpx

        response = self._send(body, stream=True)
        done = False
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # comments, event names, keep-alives
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                try:
                    choice = json.loads(payload)["choices"][0]
                    delta = choice.get("delta") or {}
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                    raise RemoteError(f"malformed stream event from {self.base_url}: {type(e).__name__}") from None
                if choice.get("finish_reason"):
                    finish.append(str(choice["finish_reason"]))
                piece = delta.get("content")
                if piece:
                    yield piece
        except httpx.ReadTimeout:
            raise RemoteError(f"the stream from {self.base_url} stalled for more than {self.read_timeout}s") from None
        except httpx.TransportError as e:
            raise RemoteError(f"the stream from {self.base_url} broke off: {type(e).__name__}") from None
        finally:
            response.close()
        if not done:
            raise RemoteError(f"the stream from {self.base_url} ended before [DONE] (truncated)")

    # -- config ------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "model": self.model, "base_url": self.base_url, "api_key_env": self.api_key_env,
            "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
            "connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout, "adapter_naming": self.adapter_naming,
            "default_adapter": self.default_adapter, "loop_ngram": self.guard.ngram, "whole_sentences": self.guard.whole_sentences,
            "retry": {"max_retries": self.retry.max_retries, "base_delay": self.retry.base_delay,
                      "max_delay": self.retry.max_delay, "jitter": self.retry.jitter},
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "OpenAIGenerator":
        options = {k: config[k] for k in ("base_url", "api_key_env", "max_new_tokens", "temperature", "connect_timeout", "read_timeout",
                                             "adapter_naming", "default_adapter", "loop_ngram", "whole_sentences") if k in config}
        retry = RetryPolicy(**config["retry"]) if config.get("retry") else None
        return cls(config["model"], retry=retry, **options)


def _error_message(response: Any) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return str(message)[:200] if message else response.reason_phrase
    except (ValueError, AttributeError):
        return response.reason_phrase or "error"
