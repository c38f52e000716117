"""``layered serve``: a saved pipeline over HTTP, on uvicorn (h11) and Starlette.

Endpoints: ``GET /`` (the chat page; its files under ``/static/``), ``GET /health``,
``GET /v1/models``, ``POST /v1/chat/completions`` (OpenAI compatible, ``"stream": true`` for
server-sent events) and ``POST /ask`` (the answer with its citations). Every error is a JSON body ``{"error": {"message", "type"}}`` with a 4xx status
for bad requests (a 5xx only for a failure of the server itself); a bad request never stops
the server, and every error response closes its connection (RFC 9112 §6.3: a body left
unread must never be parsed as the next request).

HTTP framing (Content-Length and chunked rules, header limits, pipelining) is h11's job, a
maintained parser that refuses negative, duplicate or non-numeric Content-Length, made strict
where a front proxy could read a message differently (both Transfer-Encoding and
Content-Length, obs-folded headers, chunk sizes that overflow: 400 and close) and given header,
idle and keep-alive timeouts and a connection limit (:mod:`layered.serving.http11`); this
module only validates what the JSON says (:mod:`layered.serving.requests`).

Limits: request bodies over ``max_body_bytes`` get 413; at most ``max_queue`` requests wait
for the model and the rest get 503 with ``Retry-After``. A streamed answer runs on its own
thread. Work outlives no client: when the client of a stream or of a non-streamed request
disconnects (or half-closes its socket), the generator's decoding loop stops at its next
step (:mod:`layered.generation.cancel`) and the slot is freed. When ``user_header`` is set,
each request must carry the user's id in that header (and optionally groups,
comma-separated, in ``groups_header``), set by a trusted proxy (``trusted_proxies``; identity
headers from any other peer get 403); retrieval then returns only passages that user may
see. A pipeline holding restricted documents is served only with ``user_header`` or
``public_only`` (:mod:`layered.serving.access`).

:class:`PipelineServer` keeps the ``socketserver``-like facade (``url``,
``server_address``, ``serve_forever``, ``start``, ``shutdown``, ``server_close``): the
socket is bound at construction, so a bad or busy port fails there with one line.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import anyio
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from layered.errors import ConfigError, ContextOverflowError, InputError, LayeredError
from layered.generation.cancel import cancel_on
from layered.retrieval.filters import User
from layered.serving import access
from layered.serving import openai_format as oai
from layered.serving import requests as rq
from layered.serving.http11 import ConnectionLimits, protocol_class

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """How the server behaves; the defaults suit one CPU model behind a loopback port.

    ``read_timeout`` bounds how long a client may take to send its request body (408 after);
    ``header_timeout`` its request head, ``keep_alive_timeout`` an idle connection after a response;
    ``max_connections`` open connections at most (:class:`~layered.serving.http11.ConnectionLimits`).
    ``trusted_proxies``: the peers (IPs or CIDR ranges) whose identity headers count;
    ``public_only``: serve only documents whose access list includes ``"*"``
    (:mod:`layered.serving.access`).
    """

    model_name: str = "layered"
    max_body_bytes: int = 1 << 20
    max_queue: int = 32
    user_header: str | None = None
    groups_header: str | None = None
    read_timeout: float = 30.0
    trusted_proxies: tuple[str, ...] = access.LOOPBACK
    public_only: bool = False
    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 512

    def limits(self) -> ConnectionLimits:
        return ConnectionLimits(header_timeout=self.header_timeout, keep_alive_timeout=self.keep_alive_timeout,
                                max_connections=self.max_connections, max_chunk_bytes=self.max_body_bytes)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers or {}


class _Admission:
    """At most ``limit`` requests in the building at once (waiting or running); the rest are turned away.

    ``enter`` and ``leave`` may run on different threads (a stream leaves from its producer).
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.inside, self._lock = limit, 0, threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.inside >= self.limit:
                raise HTTPError(503, f"the server is busy ({self.limit} requests queued); retry shortly", "server_busy", {"Retry-After": "1"})
            self.inside += 1

    def leave(self) -> None:
        with self._lock:
            self.inside -= 1


def _error_response(error: HTTPError) -> JSONResponse:
    # Every error closes the connection: whatever the client sent after it is never read as a request.
    headers = {**error.headers, "Connection": "close"}
    return JSONResponse({"error": {"message": str(error), "type": error.kind}}, status_code=error.status, headers=headers)


def _as_http_error(e: BaseException) -> HTTPError:
    if isinstance(e, HTTPError):
        return e
    if isinstance(e, (InputError, ContextOverflowError)):
        return HTTPError(400, str(e))
    if isinstance(e, LayeredError):  # a request the pipeline cannot serve (unknown adapter, ...)
        return HTTPError(422, str(e))
    log.error("request failed", exc_info=e)
    return HTTPError(500, f"internal error: {type(e).__name__}", "server_error")


class _App:
    """The ASGI application: routes, body limits, admission, and the streaming bridge.

    Starlette supplies the request and response objects; routing is this small table, so
    every miss (unknown path, any other method) is a JSON 404/405 like every other error.
    """

    def __init__(self, pipeline: Any, options: ServeOptions, admission: _Admission) -> None:
        self.pipeline, self.options, self.admission = pipeline, options, admission
        self.trusted = access.networks(options.trusted_proxies)
        # A public-only server answers from public documents only, the filter inside the store query.
        self.scope: dict[str, Any] = {"filters": access.PUBLIC_ONLY} if options.public_only else {}
        routes = {"/health": ("GET", self._health), "/v1/models": ("GET", self._models),
                  "/v1/chat/completions": ("POST", self._chat), "/ask": ("POST", self._ask), "/": ("GET", self._page)}
        self.static = _static_files()
        for name in self.static:  # only the files shipped in the static folder, by exact name: no path is ever joined
            routes[f"/static/{name}"] = ("GET", self._asset)
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        request = Request(scope, receive)
        response = await self._dispatch(request)
        await response(scope, receive, send)

    async def _dispatch(self, request: Request) -> Response:
        path = request.url.path
        try:
            if path not in self.routes:
                raise HTTPError(404, f"{request.method} {path} is not served here", "not_found")
            method, handler = self.routes[path]
            if request.method != method and not (method == "GET" and request.method == "HEAD"):
                raise HTTPError(405, f"{request.method} {path} is not served here (use {method})", "not_found", {"Allow": method})
            return await handler(request)
        except Exception as e:  # the server must outlive any one request
            return _error_response(_as_http_error(e))

    # -- request parts -----------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")  # h11 has checked it is one non-negative integer
        if declared is not None and int(declared) > limit:
            raise HTTPError(413, f"the request body is {declared} bytes; the limit is {limit}")
        parts, size = [], 0
        try:
            with anyio.fail_after(self.options.read_timeout):
                async for part in request.stream():
                    size += len(part)
                    if size > limit:
                        raise HTTPError(413, f"the request body is over {limit} bytes; the limit is {limit}")
                    parts.append(part)
        except TimeoutError:
            raise HTTPError(408, f"the request body did not arrive within {self.options.read_timeout:g}s") from None
        return rq.parse_json_object(b"".join(parts))

    def _user(self, request: Request) -> User | None:
        header = self.options.user_header
        if header is None:
            return None
        groups_header = self.options.groups_header
        peer = request.client.host if request.client else None
        if not access.is_trusted(peer, self.trusted):
            sent = [name for name in (header, groups_header) if name and request.headers.getlist(name)]
            if sent:  # a client naming itself: never believed, never served as someone else
                raise HTTPError(403, f"identity headers ({', '.join(sent)}) are accepted only from a trusted proxy "
                                     f"(--trusted-proxy); {peer or 'this peer'} is not one", "permission_error")
            raise HTTPError(401, f"the {header} header naming the user is required, set by a trusted proxy", "authentication_error")
        values = request.headers.getlist(header)
        if len(values) > 1:
            raise HTTPError(400, f"the {header} header appears {len(values)} times; send it once")
        user_id = (values[0] if values else "").strip()
        if not user_id:
            raise HTTPError(401, f"the {header} header naming the user is required", "authentication_error")
        sent = request.headers.getlist(groups_header) if groups_header else []
        if len(sent) > 1:  # a proxy that appended its value to the client's: refuse, as for the user header
            raise HTTPError(400, f"the {groups_header} header appears {len(sent)} times; send it once")
        groups = [g.strip() for g in (sent[0] if sent else "").split(",") if g.strip()]
        return User(user_id, groups=tuple(groups))

    async def _run(self, work: Callable[[], Any], request: Request) -> Any:
        """Run blocking pipeline work on a worker thread, inside the admission limit; when the
        client disconnects first, its generation stops at the next decoding step (the slot is
        held until it has)."""
        self.admission.enter()
        stop = threading.Event()

        def cancellable() -> Any:
            with cancel_on(stop):
                return work()

        try:
            job = asyncio.ensure_future(anyio.to_thread.run_sync(cancellable))
            gone = asyncio.ensure_future(_disconnected(request.receive))
            try:
                await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not job.done():
                    stop.set()
                gone.cancel()
            return await job  # after a disconnect: what was decoded so far, answered to no one
        finally:
            self.admission.leave()

    # -- endpoints ---------------------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        prompt = self.pipeline.prompt
        audiences = getattr(prompt, "audiences", None)
        return JSONResponse({
            "status": "ok", "model": self.options.model_name,
            # What the chat page offers: the prompt's audiences, and the headers that name the user.
            "audiences": list(audiences) if isinstance(audiences, dict) else [],
            "default_audience": getattr(prompt, "default_audience", None) if isinstance(audiences, dict) else None,
            "user_header": self.options.user_header, "groups_header": self.options.groups_header,
            "public_only": self.options.public_only,
        })

    async def _page(self, request: Request) -> Response:
        return self._static_response("index.html")

    async def _asset(self, request: Request) -> Response:
        return self._static_response(request.url.path.removeprefix("/static/"))

    def _static_response(self, name: str) -> Response:
        if name not in self.static:  # an install without the page's files
            raise HTTPError(404, f"the chat page's {name} is not installed", "not_found")
        body, content_type = self.static[name]
        return Response(body, media_type=content_type, headers=_PAGE_HEADERS)

    async def _models(self, request: Request) -> Response:
        name = self.options.model_name
        adapters = list(getattr(self.pipeline.generator, "adapters", {}) or {})
        ids = [name, *(f"{name}:{a}" for a in adapters)]
        return JSONResponse({"object": "list", "data": [{"id": i, "object": "model", "owned_by": "layered"} for i in ids]})

    async def _ask(self, request: Request) -> Response:
        user = self._user(request)  # before the body: a refused identity costs no read
        body = await self._body(request)
        ask = rq.ask_request(body, max_tokens_limit=rq.token_limit(self.pipeline.generator))

        def work() -> Any:
            return self.pipeline.ask(ask.question, k=ask.k, user=user, adapter=ask.adapter, max_new_tokens=ask.max_tokens,
                                     **self.scope, **ask.variables)

        return JSONResponse(oai.answer_json(await self._run(work, request)))

    async def _chat(self, request: Request) -> Response:
        user = self._user(request)
        body = await self._body(request)
        name = self.options.model_name
        chat = rq.chat_request(body, served=name, max_tokens_limit=rq.token_limit(self.pipeline.generator))
        options = {"k": chat.k, "user": user, "adapter": chat.adapter, "max_new_tokens": chat.max_tokens, **self.scope,
                   **chat.variables}
        if chat.stream:
            self.admission.enter()  # left by the producer thread when generation has stopped
            producer = _Producer(lambda: self.pipeline.chat_stream(chat.messages, **options), self.admission)
            return await _EventStream.open(producer, request, chat.model)

        def work() -> Any:
            return self.pipeline.chat(chat.messages, **options)

        return JSONResponse(oai.completion(await self._run(work, request), chat.model))


_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
# The page runs offline: scripts, styles, images and requests from this origin only, nothing inline.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache",
}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The chat page's files (``layered/serving/static``), read once: name -> (bytes, content type)."""
    from importlib.resources import files

    folder = files("layered.serving") / "static"
    out: dict[str, tuple[bytes, str]] = {}
    if not folder.is_dir():
        return out
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _CONTENT_TYPES:
            out[entry.name] = (entry.read_bytes(), _CONTENT_TYPES[suffix])
    return out


_END = object()


class _Producer:
    """Pulls a blocking token iterator on its own thread and hands pieces to the event loop.

    The iterator is created, advanced and closed on that one thread (generators hold locks
    that must be released where they were taken). :meth:`cancel` makes the thread stop
    pulling and close the iterator, which stops the generator's decoding loop.
    """

    def __init__(self, make: Callable[[], Iterator[str]], admission: _Admission) -> None:
        self.make, self.admission = make, admission
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.metadata: dict[str, Any] = {}
        self.citations: tuple[Any, ...] = ()
        self.sources: tuple[Any, ...] = ()
        threading.Thread(target=self._run, name="layered-stream", daemon=True).start()

    def _put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancelled.set()

    def _run(self) -> None:
        try:
            with cancel_on(self.cancelled):  # cancel() stops the decoding loop at its next step, even mid-sentence
                self._pull()
            self._put(_END)
        except BaseException as e:  # surfaced on the event loop
            self._put(e)
        finally:
            self.done.set()
            self.admission.leave()

    def _pull(self) -> None:
        pieces = self.make()
        try:
            for piece in pieces:
                if self.cancelled.is_set():
                    break
                self._put(piece)
            self.metadata = dict(getattr(pieces, "metadata", None) or {})
            self.citations = tuple(getattr(pieces, "citations", ()) or ())
            self.sources = tuple(getattr(pieces, "sources", ()) or ())
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # stops the decoding loop when we broke out early

    def cancel(self) -> None:
        self.cancelled.set()


class _EventStream(Response):
    """A ``text/event-stream`` of chat-completion chunks that stops its producer on disconnect."""

    def __init__(self, producer: _Producer, first: Any, model: str, watcher: asyncio.Future[Any]) -> None:
        self.status_code, self.background = 200, None
        # No Content-Length: the body is streamed until the connection closes.
        self.raw_headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"connection", b"close")]
        self.producer, self.first, self.model, self.watcher = producer, first, model, watcher

    @classmethod
    async def open(cls, producer: _Producer, request: Request, model: str) -> Response:
        """Wait for the first piece, so errors before it still get a proper JSON status."""
        watcher = asyncio.ensure_future(_disconnected(request.receive))
        try:
            first = await _next(producer, watcher)
        except BaseException:
            producer.cancel()
            watcher.cancel()
            raise
        return cls(producer, first, model, watcher)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completion_id = oai.new_id()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

            async def body(data: bytes) -> None:
                await send({"type": "http.response.body", "body": data, "more_body": True})

            await body(oai.chunk(completion_id, self.model, {"role": "assistant", "content": ""}))
            item = self.first
            while item is not _END:
                await body(oai.chunk(completion_id, self.model, {"content": item}))
                item = await _next(self.producer, self.watcher)
            p = self.producer
            extra = {"layered": oai.layered_extra(p.citations, p.sources, p.metadata)} if p.metadata or p.sources else {}
            await body(oai.chunk(completion_id, self.model, {}, finish="stop", extra=extra))
            await send({"type": "http.response.body", "body": oai.DONE, "more_body": False})
        except _ClientGone:
            pass
        except Exception as e:  # after the 200 went out, an error can only end the stream
            log.error("stream failed", exc_info=e)
        finally:
            self.producer.cancel()
            self.watcher.cancel()


class _ClientGone(Exception):
    pass


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _next(producer: _Producer, watcher: asyncio.Future[Any]) -> Any:
    """The producer's next item; :class:`_ClientGone` when the client disconnected first."""
    if producer.queue.empty() and watcher.done():
        raise _ClientGone()
    getter = asyncio.ensure_future(producer.queue.get())
    await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if not getter.done():
        getter.cancel()
        raise _ClientGone()
    item = getter.result()
    if isinstance(item, BaseException):
        raise item
    return item


class PipelineServer:
    """An HTTP server holding one pipeline (uvicorn + h11 underneath). ``url`` is where it listens."""

    def __init__(self, pipeline: Any, address: tuple[str, int] = ("127.0.0.1", 8000), options: ServeOptions | None = None) -> None:
        self.pipeline = pipeline
        self.options = options or ServeOptions()
        access.check_identity_source(pipeline, user_header=self.options.user_header, public_only=self.options.public_only)
        limits = self.options.limits()  # checked before the port is taken
        self.admission = _Admission(self.options.max_queue)
        self.app = _App(pipeline, self.options, self.admission)
        self.socket = _bind(*address)
        self.server_address: tuple[Any, ...] = self.socket.getsockname()
        # proxy_headers off: the peer that trusted_proxies is checked against is the socket's, never X-Forwarded-For.
        config = uvicorn.Config(
            self.app, http=protocol_class(limits), lifespan="off", ws="none", interface="asgi3", log_config=None,
            log_level="warning", access_log=False, timeout_graceful_shutdown=2, proxy_headers=False,
        )
        self._server = uvicorn.Server(config)
        self._running = threading.Event()
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or Ctrl-C when run on the main thread)."""
        self._running.set()
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def start(self) -> threading.Thread:
        """Serve on a background thread (for tests and embedding); stop with ``shutdown()``."""
        thread = threading.Thread(target=self.serve_forever, name="layered-serve", daemon=True)
        thread.start()
        while not self._server.started and not self._stopped.is_set():
            self._stopped.wait(0.01)
        return thread

    def shutdown(self) -> None:
        """Stop serving and wait until :meth:`serve_forever` has returned."""
        self._server.should_exit = True
        if self._running.is_set():
            self._stopped.wait(30)

    def server_close(self) -> None:
        self.socket.close()


def _bind(host: str, port: int) -> socket.socket:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"port {port!r} is out of range; use 1-65535 (or 0 for a free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(f"cannot listen on {host}:{port}: unknown host ({e})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port or stop what holds it") from None
    sock.set_inheritable(True)
    return sock

