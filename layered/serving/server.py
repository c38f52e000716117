"""``layered serve``: a saved pipeline over HTTP (standard library server, no extra framework).

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (OpenAI
compatible, ``"stream": true`` for server-sent events) and ``POST /ask`` (the answer with its
citations). Every error is a JSON body ``{"error": {"message", "type"}}`` with a 4xx status
for bad requests (and a 5xx only for a failure of the server itself); a bad request never
stops the server.

Limits: request bodies over ``max_body_bytes`` get 413; at most ``max_queue`` requests wait
for the model (which answers one at a time) and the rest get 503 with ``Retry-After``.
When ``user_header`` is set, each request must carry the user's id in that header (and
optionally groups, comma-separated, in ``groups_header``); retrieval then returns only
passages that user may see.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

from layered.errors import ContextOverflowError, InputError, LayeredError
from layered.retrieval.filters import User
from layered.serving import openai_format as oai

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """How the server behaves; the defaults suit one CPU model behind a loopback port."""

    model_name: str = "layered"
    max_body_bytes: int = 1 << 20
    max_queue: int = 32
    user_header: str | None = None
    groups_header: str | None = None
    read_timeout: float = 30.0


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


class _Admission:
    """At most ``limit`` requests in the building at once (waiting or running); the rest are turned away."""

    def __init__(self, limit: int) -> None:
        self.limit, self.inside, self._lock = limit, 0, threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            if self.inside >= self.limit:
                raise HTTPError(503, f"the server is busy ({self.limit} requests queued); retry shortly", "server_busy", {"Retry-After": "1"})
            self.inside += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self.inside -= 1


class PipelineServer(ThreadingHTTPServer):
    """A threading HTTP server holding one pipeline. ``url`` is where it listens."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, pipeline: Any, address: tuple[str, int] = ("127.0.0.1", 8000), options: ServeOptions | None = None) -> None:
        self.pipeline = pipeline
        self.options = options or ServeOptions()
        self.admission = _Admission(self.options.max_queue)
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    def start(self) -> threading.Thread:
        """Serve on a background thread (for tests and embedding); stop with ``shutdown()``."""
        thread = threading.Thread(target=self.serve_forever, name="layered-serve", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: PipelineServer
    protocol_version = "HTTP/1.1"
    error_content_type = "application/json"

    # -- plumbing ----------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.options.read_timeout)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.info("%s %s", self.address_string(), format % args)

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: HTTPError) -> None:
        self._send_json(error.status, {"error": {"message": str(error), "type": error.kind}}, error.headers)

    def _body(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None:
            raise HTTPError(411, "a JSON body with a Content-Length header is required")
        try:
            n = int(length)
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number") from None
        if n > self.server.options.max_body_bytes:
            self.close_connection = True  # the unread body would poison the connection
            raise HTTPError(413, f"the request body is {n} bytes; the limit is {self.server.options.max_body_bytes}")
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HTTPError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    def _user(self) -> User | None:
        header = self.server.options.user_header
        if header is None:
            return None
        user_id = (self.headers.get(header) or "").strip()
        if not user_id:
            raise HTTPError(401, f"the {header} header naming the user is required", "authentication_error")
        groups_header = self.server.options.groups_header
        groups = [g.strip() for g in (self.headers.get(groups_header) or "").split(",") if g.strip()] if groups_header else []
        return User(user_id, groups=tuple(groups))

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        routes = {
            ("GET", "/health"): self._health, ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._chat, ("POST", "/ask"): self._ask,
        }
        try:
            handler = routes.get((method, path))
            if handler is None:
                known = {p for _, p in routes}
                raise HTTPError(405 if path in known else 404, f"{method} {path} is not served here", "not_found")
            handler()
        except HTTPError as e:
            self._send_error(e)
        except (InputError, ContextOverflowError) as e:
            self._send_error(HTTPError(400, str(e)))
        except LayeredError as e:  # a request the pipeline cannot serve (unknown adapter, ...)
            self._send_error(HTTPError(422, str(e)))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # the server must outlive any one request
            log.exception("request failed")
            try:
                self._send_error(HTTPError(500, f"internal error: {type(e).__name__}", "server_error"))
            except OSError:
                self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self._dispatch("POST")

    # -- endpoints ---------------------------------------------------------------------------

    def _health(self) -> None:
        self._send_json(200, {"status": "ok", "model": self.server.options.model_name})

    def _models(self) -> None:
        name = self.server.options.model_name
        adapters = list(getattr(self.server.pipeline.generator, "adapters", {}) or {})
        ids = [name, *(f"{name}:{a}" for a in adapters)]
        self._send_json(200, {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "layered"} for i in ids]})

    def _ask(self) -> None:
        body = self._body()
        question = body.get("question")
        if not isinstance(question, str):
            raise HTTPError(400, "'question' (a string) is required")
        variables = body.get("variables") or {}
        if not isinstance(variables, dict):
            raise HTTPError(400, "'variables' must be an object")
        k = body.get("k")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100):
            raise HTTPError(400, "'k' must be an integer from 1 to 100")
        user = self._user()
        with self.server.admission:
            answer = self.server.pipeline.ask(question, k=k, user=user, adapter=body.get("adapter"), **variables)
        self._send_json(200, oai.answer_json(answer))

    def _chat(self) -> None:
        body = self._body()
        name = self.server.options.model_name
        question = oai.question_of(body)
        adapter = oai.adapter_of(body.get("model"), name)
        user = self._user()
        model = body.get("model") or name
        with self.server.admission:
            if body.get("stream"):
                self._stream(self.server.pipeline.stream(question, user=user, adapter=adapter), model)
            else:
                answer = self.server.pipeline.ask(question, user=user, adapter=adapter)
                self._send_json(200, oai.completion(answer, model))

    def _stream(self, pieces: Iterator[str], model: str) -> None:
        completion_id = oai.new_id()
        first = next(pieces, None)  # errors before the first token still get a proper JSON status
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(oai.chunk(completion_id, model, {"role": "assistant", "content": ""}))
            if first is not None:
                self.wfile.write(oai.chunk(completion_id, model, {"content": first}))
            for piece in pieces:
                self.wfile.write(oai.chunk(completion_id, model, {"content": piece}))
                self.wfile.flush()
            self.wfile.write(oai.chunk(completion_id, model, {}, finish="stop"))
            self.wfile.write(oai.DONE)
            self.wfile.flush()
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # a client that went away stops the generation

