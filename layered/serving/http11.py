"""The server's HTTP/1.1 connections: h11's parser made strict where a front proxy could disagree
with it, plus header, idle and keep-alive timeouts and a connection limit (on uvicorn's h11 protocol).

Framing refused with 400 and a closed connection (RFC 9112 §6.3, §5.2), before the application
sees the request, so a proxy that frames the message differently cannot smuggle a second one:

- a request with both ``Transfer-Encoding`` and ``Content-Length`` (h11 would silently prefer
  the chunked framing, a proxy may prefer the length);
- an obsolete line fold (a header line starting with a space or tab) anywhere in the head
  (h11 joins it to the line before; ``Transfer-Encoding:\\r\\n chunked`` is chunked to h11
  and not to many proxies);
- a chunk size that does not fit a signed 64-bit integer (more than 16 significant hex digits:
  h11 reads up to 20, a proxy may wrap around); a chunk larger than the body limit gets 413;
- chunk data not followed by CRLF (h11 discards those two bytes unchecked, so a chunk whose
  size understates its data would be read differently by a strict proxy).

The checks wrap h11's own readers (the parser is still h11's); they hook ``Connection._get_io_object``,
h11's one place that picks a reader for a state. Tests over raw sockets pin the behaviour, so an
h11 that changed that hook fails them rather than silently dropping the checks.

Timeouts and limits (:class:`ConnectionLimits`): a connection must deliver a complete request
head within ``header_timeout`` seconds of opening (or of its previous response), however slowly
it trickles (408 and close; an idle one is closed silently); after a response an idle keep-alive
connection is closed after ``keep_alive_timeout``; past ``max_connections`` open connections a new
one gets 503 with ``Retry-After`` and is closed at once. The body has its own limit
(``ServeOptions.read_timeout``, 408 from the application).
"""

from __future__ import annotations

import asyncio
import json
import re
from http import HTTPStatus
from dataclasses import dataclass
from typing import Any, Callable

import h11
from h11._readers import READERS, ChunkedReader, maybe_read_from_IDLE_client
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from layered.errors import ConfigError

#: The largest chunk size a signed 64-bit parser can hold (proxies in C, Java, Go read it so).
MAX_CHUNK_SIZE = 2**63 - 1
_CHUNK_SIZE = re.compile(rb"[ \t]*([0-9A-Fa-f]+)")


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a connection may take and how many may be open (see the module docstring)."""

    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 512
    max_chunk_bytes: int = 1 << 20
    max_head_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("header_timeout", "keep_alive_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 86400:
                raise ConfigError(f"{name} must be a number of seconds above 0, got {value!r}")
        for name in ("max_connections", "max_chunk_bytes", "max_head_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")


class _Refused(h11.LocalProtocolError):
    """A request this server refuses although h11 would parse it (h11 re-raises it as its own
    ``RemoteProtocolError``, keeping ``error_status_hint``: the status it gets)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, error_status_hint=status)


class _Seen:
    """h11's receive buffer, recording the lines its readers take out of it (h11 consumes them);
    ``crlf``: the bytes that must end the chunk just read (h11 discards two bytes unchecked)."""

    def __init__(self, buf: Any, crlf: bytes = b"") -> None:
        self.buf, self.crlf = buf, crlf
        self.lines: list[bytearray] | None = None
        self.line: bytearray | None = None

    def maybe_extract_lines(self) -> list[bytearray] | None:
        self.lines = self.buf.maybe_extract_lines()
        return self.lines

    def maybe_extract_next_line(self) -> bytearray | None:
        self.line = self.buf.maybe_extract_next_line()
        return self.line

    def maybe_extract_at_most(self, count: int) -> bytearray | None:
        data: bytearray | None = self.buf.maybe_extract_at_most(count)
        if self.crlf and data is not None:  # the reader discards the end of a chunk first
            if bytes(data) != self.crlf[:len(data)]:
                raise _Refused("a chunk's data is not followed by CRLF: its size does not match its data")
            self.crlf = self.crlf[len(data):]
        return data

    def is_next_line_obviously_invalid_request_line(self) -> bool:
        return self.buf.is_next_line_obviously_invalid_request_line()  # type: ignore[no-any-return]


def _read_head(buf: Any) -> Any:
    """h11's request-head reader, then the checks h11 does not make."""
    seen = _Seen(buf)
    event = maybe_read_from_IDLE_client(seen)  # type: ignore[arg-type]  # the buffer's interface
    if event is None:
        return None
    if any(line[:1] in (b" ", b"\t") for line in (seen.lines or [])[1:]):
        raise _Refused("a header line starts with a space or tab (obsolete line folding); send each header on one line")
    names = {name for name, _ in event.headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        raise _Refused("the request has both Transfer-Encoding and Content-Length; send one of them (RFC 9112 §6.3)")
    return event


class _BoundedChunks:
    """h11's chunked-body reader, refusing chunk sizes that overflow or exceed the body limit and
    chunks whose data is not followed by CRLF."""

    def __init__(self, reader: ChunkedReader, limit: int) -> None:
        self.reader, self.limit = reader, limit
        self.crlf = b""

    def __call__(self, buf: Any) -> Any:
        seen = _Seen(buf, self.crlf)
        event = self.reader(seen)  # type: ignore[arg-type]
        self.crlf = seen.crlf
        if seen.line is not None:  # a chunk-size line (only those are read one line at a time; h11 has checked its syntax)
            match = _CHUNK_SIZE.match(seen.line)
            digits = match.group(1).lstrip(b"0") if match else b""
            if len(digits) > 16 or int(digits or b"0", 16) > MAX_CHUNK_SIZE:
                raise _Refused(f"chunk size {bytes(digits[:24]).decode('ascii')} overflows a 64-bit length")
            if int(digits or b"0", 16) > self.limit:
                raise _Refused(f"a chunk of {int(digits, 16)} bytes is over the body limit of {self.limit}", 413)
        if isinstance(event, h11.Data) and event.chunk_end:
            self.crlf = b"\r\n"
        return event

    def read_eof(self) -> Any:
        return self.reader.read_eof()


class StrictConnection(h11.Connection):
    """An ``h11.Connection`` (server side) whose readers make the checks of the module docstring."""

    def __init__(self, *, max_chunk_bytes: int, max_incomplete_event_size: int) -> None:
        self.max_chunk_bytes = max_chunk_bytes
        #: The last error the client's bytes caused (h11's or ours): what the 400 response says.
        self.refused: h11.RemoteProtocolError | None = None
        super().__init__(h11.SERVER, max_incomplete_event_size)

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            self.refused = e
            raise

    def _get_io_object(self, role: Any, event: Any, io_dict: Any) -> Callable[..., Any] | None:
        io = super()._get_io_object(role, event, io_dict)
        if io_dict is not READERS:
            return io
        if io is maybe_read_from_IDLE_client:
            return _read_head
        if isinstance(io, ChunkedReader):
            return _BoundedChunks(io, self.max_chunk_bytes)
        return io


if not callable(getattr(h11.Connection, "_get_io_object", None)):  # pragma: no cover - an h11 without the hook
    raise ImportError(f"h11 {h11.__version__} has no Connection._get_io_object; layered's strict framing needs h11 0.16-style readers")


def raw_response(status: int, message: str, kind: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete ``Connection: close`` JSON error response, for when h11 cannot send one (no request yet)."""
    body = json.dumps({"error": {"message": message, "type": kind}}).encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json", f"content-length: {len(body)}", "connection: close",
            *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class StrictH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with :class:`StrictConnection`, the head timeout and the connection limit."""

    limits: ConnectionLimits = ConnectionLimits()

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn = StrictConnection(max_chunk_bytes=self.limits.max_chunk_bytes, max_incomplete_event_size=self.limits.max_head_bytes)
        self.timeout_keep_alive = self.limits.keep_alive_timeout  # type: ignore[assignment]  # uvicorn takes whole seconds
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(raw_response(503, f"the server has {self.limits.max_connections} connections open; retry shortly",
                                         "server_busy", (("retry-after", "1"),)))
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and self.conn.their_state is not h11.IDLE:  # the head is complete
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:  # waiting for the next request's head
            self._arm_head_timer()

    def send_400_response(self, msg: str) -> None:
        """The JSON error for a request h11 (or :class:`StrictConnection`) refused; the connection closes."""
        refused = self.conn.refused if isinstance(self.conn, StrictConnection) else None
        hint = refused.error_status_hint if refused is not None else 400
        status = hint if 400 <= hint < 500 else 400  # h11 hints 501 for unknown transfer codings: still the client's error
        message = f"malformed HTTP request: {str(refused)[:200] if refused is not None else msg}"
        kind = "request_too_large" if status == 413 else "invalid_request_error"
        body = json.dumps({"error": {"message": message, "type": kind}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        response = h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase.encode())
        try:
            for event in (response, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:  # a response had already started: nothing more can be said
            pass
        self.transport.close()

    # -- the head timeout --------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a head arrived: say why before closing
            self.transport.write(raw_response(408, f"the request head did not arrive within {self.limits.header_timeout:g}s",
                                              "timeout"))
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[StrictH11Protocol]:
    """A :class:`StrictH11Protocol` bound to ``limits`` (uvicorn builds one instance per connection)."""
    return type("LayeredH11Protocol", (StrictH11Protocol,), {"limits": limits})
