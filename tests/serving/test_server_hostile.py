"""`layered serve` under hostile input, over real sockets: smuggling, bad framing, 5xx from
client input, abandoned streams (issue 18, items 1-4)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from layered import Pipeline
from layered.errors import ConfigError
from layered.serving.server import PipelineServer, ServeOptions
from layered.types import Document
from tests.helpers import pipe_with_secret, raw_exchange, request

SECRET = "Staff-only note about the thyroid drug trial schedule."


@pytest.fixture
def pipe(tiny_generator, docs):
    return pipe_with_secret(tiny_generator, docs, Document(id="secret", text=SECRET, source="memo", metadata={"access": ["group:staff"]}))


def exchange(srv, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes on one connection and read until the server closes it (or goes quiet)."""
    return raw_exchange(srv, data, timeout=timeout)[0]

def statuses(raw: bytes) -> list[int]:
    return [int(line.split()[1]) for line in raw.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def inner_ask() -> bytes:
    body = json.dumps({"question": "staff-only thyroid drug trial schedule", "k": 11}).encode()
    return (b"POST /ask HTTP/1.1\r\nHost: x\r\nX-User: alice\r\nX-Groups: staff\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def smuggle(request_line: bytes, framing: bytes) -> bytes:
    return request_line + b"\r\nHost: x\r\nX-User: bob\r\n" + framing


INNER = inner_ask()
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(INNER):x}".encode() + b"\r\n" + INNER + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("outer", [
    smuggle(b"POST /v1/nothing HTTP/1.1", b"Content-Length: %d\r\n\r\n" % len(INNER) + INNER),  # 404
    smuggle(b"PUT /ask HTTP/1.1", b"Content-Length: %d\r\n\r\n" % len(INNER) + INNER),  # 405
    smuggle(b"GET /ask HTTP/1.1", b"Content-Length: %d\r\n\r\n" % len(INNER) + INNER),  # 405 with a body
    smuggle(b"GET /health HTTP/1.1", b"Content-Length: %d\r\n\r\n" % len(INNER) + INNER),  # 200 that reads no body
    smuggle(b"POST /ask HTTP/1.1", b"Content-Length: abc\r\n\r\n" + INNER),  # 400 bad Content-Length
    smuggle(b"POST /ask HTTP/1.1", b"Content-Length: 0\r\n\r\n" + INNER),  # 400 (empty body), then the rest
    smuggle(b"POST /ask HTTP/1.1", CHUNKED),  # chunked: the request is body, not a request
    smuggle(b"POST /ask HTTP/1.1", b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(INNER) + INNER),
    smuggle(b"POST /ask HTTP/1.1", b"Content-Length: %d\r\n\r\n" % len(INNER) + INNER),  # 413 (limit below)
])
def test_an_early_error_never_parses_the_body_as_a_second_request(server, outer):
    srv = server(user_header="X-User", groups_header="X-Groups", max_body_bytes=64)
    raw = exchange(srv, outer)
    assert len(statuses(raw)) == 1, raw[:400]  # one request in, one answer out
    assert b"secret" not in raw and SECRET.encode() not in raw
    assert 200 <= statuses(raw)[0] < 500


@pytest.mark.parametrize("framing", [
    b"Content-Length: -1\r\n\r\n",
    b"Content-Length: 5\r\nContent-Length: 7\r\n\r\n",
    b"Content-Length: 1e3\r\n\r\n",
    b"Content-Length: +5\r\n\r\n",
    b"Content-Length: 0x10\r\n\r\n",
    b"Content-Length: 99999999999999999999999999\r\n\r\n",
])
def test_negative_duplicate_and_non_numeric_content_length_are_refused(server, framing):
    srv = server(max_body_bytes=100_000, public_only=True)
    t = time.monotonic()
    raw = exchange(srv, b"POST /ask HTTP/1.1\r\nHost: x\r\n" + framing + b"x" * 2_000_000, timeout=10)
    assert statuses(raw) and 400 <= statuses(raw)[0] < 500, raw[:300]
    assert len(statuses(raw)) == 1 and time.monotonic() - t < 8  # answered and closed, not read to the end



CHAT = "/v1/chat/completions"


def user(content):
    return {"messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize("path, body, raw", [
    *[("/ask", {"question": "hi", "variables": {name: "x"}}, None)
      for name in ("user", "k", "context", "question", "filters", "adapter", "embedder", "shots")],
    ("/ask", {"question": "hi", "variables": {"audience": {"nested": 1}}}, None),
    ("/ask", {"question": "hi", "variables": {"not an identifier": "x"}}, None),
    ("/ask", {"question": "hi", "adapter": ["x"]}, None),
    ("/ask", {"question": "hi", "adapter": 5}, None),
    ("/ask", {"question": "hi", "k": True}, None),
    ("/ask", {"question": "hi", "max_tokens": 1e12}, None),
    ("/ask", {"question": "hi", "max_tokens": -5}, None),
    ("/ask", {"question": "hi", "max_tokens": "abc"}, None),
    ("/ask", {"question": "hi", "max_tokens": True}, None),
    ("/ask", None, b"[" * 200_000 + b"]" * 200_000),
    ("/ask", None, b'{"question": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("/ask", None, b"\xff\xfe{}"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, None),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, None),
    (CHAT, {"messages": [{"role": "user", "content": None}]}, None),
    (CHAT, {"messages": [{"role": ["user"], "content": "x"}]}, None),
    (CHAT, {"messages": "hello"}, None),
    (CHAT, {**user("hi"), "stream": "yes"}, None),
    (CHAT, {**user("hi"), "max_tokens": 1e12}, None),
    (CHAT, {**user("hi"), "max_tokens": -5}, None),
    (CHAT, {**user("hi"), "max_tokens": "abc"}, None),
    (CHAT, {**user("hi"), "model": ["tiny"]}, None),
    (CHAT, None, b"[" * 200_000),
])
def test_client_input_never_gets_a_5xx(server, path, body, raw):
    srv = server(max_body_bytes=1 << 20, public_only=True)
    status, headers, payload = request(srv, "POST", path, body, {"Content-Type": "application/json"}, raw)
    assert 400 <= status < 500, payload[:300]
    assert headers["Content-Type"].startswith("application/json") and json.loads(payload)["error"]["message"]
    assert request(srv, "GET", "/health")[0] == 200


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_unknown_methods_get_a_json_405_or_404(server, method):
    srv = server(public_only=True)
    for path in ("/ask", CHAT, "/health", "/nowhere"):
        status, headers, payload = request(srv, method, path)
        assert status in (404, 405), (method, path, status)
        assert headers["Content-Type"].startswith("application/json") and json.loads(payload)["error"]["message"]


def test_max_tokens_is_honoured_up_to_the_models_limit(server, pipe):
    srv = server(public_only=True)
    limit = pipe.generator.max_new_tokens
    status, _, payload = request(srv, "POST", CHAT, {**user("What causes thyroid problems?"), "max_tokens": 2})
    assert status == 200 and json.loads(payload)["usage"]["completion_tokens"] <= 2
    assert pipe.generator.max_new_tokens == limit  # the override lasted one request
    status, _, payload = request(srv, "POST", "/ask", {"question": "What causes thyroid problems?", "max_tokens": 2})
    assert status == 200 and len(json.loads(payload)["answer"].split()) <= 2
    # OpenAI's max_tokens is an upper bound: above the server's answer length it gets that length...
    status, _, payload = request(srv, "POST", CHAT, {**user("hi"), "max_tokens": limit + 1})
    assert status == 200 and json.loads(payload)["usage"]["completion_tokens"] <= limit
    # ...and past the context window it is refused, naming the window.
    window = pipe.generator.context_window
    status, _, payload = request(srv, "POST", CHAT, {**user("hi"), "max_tokens": window + 1})
    assert status == 400 and str(window) in json.loads(payload)["error"]["message"]


def test_a_port_out_of_range_or_in_use_is_a_one_line_config_error(pipe):
    with pytest.raises(ConfigError, match="port"):
        PipelineServer(pipe, ("127.0.0.1", 70000), ServeOptions(public_only=True))
    first = PipelineServer(pipe, ("127.0.0.1", 0), ServeOptions(public_only=True))
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            PipelineServer(pipe, first.server_address[:2], ServeOptions(public_only=True))
    finally:
        first.server_close()


def _stream_request(question: str) -> bytes:
    body = json.dumps({**user(question), "stream": True}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def test_a_client_that_disconnects_stops_generation(server, pipe):
    """Abandoned streams free the model at once: the next request does not wait behind them."""
    pipe.generator.max_new_tokens = 400
    pipe.generator.warm_up()
    question = "What causes thyroid problems?"
    t = time.monotonic()
    full = pipe.generator.generate(pipe.build_prompt(question))
    full_seconds = time.monotonic() - t
    assert full.completion_tokens >= 300  # the tiny random model rarely stops by itself
    srv = server(public_only=True)
    for _ in range(5):  # abandon five streams at their first byte
        with socket.create_connection(srv.server_address[:2], timeout=30) as s:
            s.sendall(_stream_request(question))
            assert s.recv(1)
    pipe.generator.max_new_tokens = 400
    t = time.monotonic()
    status, _, payload = request(srv, "POST", CHAT, {**user(question), "max_tokens": 4})
    waited = time.monotonic() - t
    assert status == 200
    # Five abandoned full generations would take 5 x full_seconds; a freed slot answers at once.
    assert waited < full_seconds * 1.5, (waited, full_seconds)


def test_closing_a_transformers_stream_stops_decoding_within_a_step(tiny_generator, smol_tokenizer):
    """The generator's own loop stops: close() returns after about one decode step, not the whole answer."""
    from layered.types import Message, Prompt

    tiny_generator.max_new_tokens = 300
    tiny_generator.warm_up()
    prompt = Prompt(messages=(Message("user", "What causes thyroid problems?"),))
    t = time.monotonic()
    assert tiny_generator.generate(prompt).completion_tokens >= 200
    per_token = (time.monotonic() - t) / 300
    stream = tiny_generator.stream(prompt)
    next(stream)
    t = time.monotonic()
    stream.close()
    assert time.monotonic() - t < max(50 * per_token, 0.5)  # joined the decoding thread at once


def test_a_repeated_user_header_is_refused_not_guessed(server):
    """Two X-User headers (one from a proxy, one from the client) must not pick either silently."""
    srv = server(user_header="X-User", groups_header="X-Groups")
    body = json.dumps({"question": "staff-only thyroid drug trial schedule"}).encode()
    raw = exchange(srv, b"POST /ask HTTP/1.1\r\nHost: x\r\nX-User: bob\r\nX-User: alice\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert statuses(raw) == [400] and b"appears 2 times" in raw


@pytest.mark.slow
def test_closing_a_llamacpp_stream_stops_decoding_within_a_step():
    """llama.cpp decodes one token per step of its iterator: close() returns at once."""
    from layered.generation.llamacpp_generator import LlamaCppGenerator
    from layered.types import Message, Prompt

    gen = LlamaCppGenerator(max_new_tokens=200, stop=())
    prompt = Prompt(messages=(Message("user", "Write a long story about a thyroid."),))
    stream = gen.stream(prompt)
    next(stream)
    t = time.monotonic()
    stream.close()
    closed = time.monotonic() - t
    gen.generate(Prompt(messages=(Message("user", "Say hi."),)))
    assert closed < 0.5 and gen._lock.acquire(blocking=False)  # the lock is free again
    gen._lock.release()


@pytest.mark.slow
def test_a_client_that_leaves_mid_stream_frees_its_llamacpp_batch_slot_at_once():
    """With continuous batching the freed slot is the point: it must be free before the next decode step."""
    from layered.generation.llamacpp_generator import LlamaCppGenerator

    gen = LlamaCppGenerator(max_new_tokens=400, parallel=2, loop_ngram=None, whole_sentences=False, threads=2)
    srv = PipelineServer(Pipeline(generator=gen, retriever=None), ("127.0.0.1", 0))
    srv.start()
    try:
        engine = gen._load()
        with socket.create_connection(srv.server_address[:2], timeout=60) as s:
            s.sendall(_stream_request("Write a long story about a dragon and a knight."))
            received = b""
            while received.count(b'"content"') < 3:  # the role chunk, then streamed text
                received += s.recv(4096)
            assert engine.active == 1
        deadline = time.monotonic() + 2.0
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.active == 0  # the abandoned request left the batch
        status, _, body = request(srv, "POST", CHAT, {**user("Say hi."), "max_tokens": 8})
        assert status == 200, body
    finally:
        srv.shutdown()
        srv.server_close()
        gen.close()
