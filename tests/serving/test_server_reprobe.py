"""`layered serve` under the second probe, over real sockets: identity headers only from trusted
proxies (issue 39 item 2), TE+CL / obs-fold / overflowing chunks (39.3), header, idle and
keep-alive timeouts and a connection limit (40.4), work that outlives its client (40.5), and
serving a restricted index without an identity source (34.2)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time

import pytest

from layered.errors import ConfigError
from layered.serving.access import PUBLIC_ONLY
from layered.serving.server import PipelineServer, ServeOptions
from layered.types import Document
from tests.helpers import pipe_with_secret, raw_exchange, request

SECRET = "Board-only memo about the merger of the thyroid clinics."
QUESTION = {"question": "board-only memo merger thyroid clinics", "k": 11}


@pytest.fixture
def pipe(tiny_generator, docs):
    return pipe_with_secret(tiny_generator, docs, Document(id="merger", text=SECRET, source="memo", metadata={"access": ["group:exec"]}))


def ask_from(srv, source: str, headers: dict[str, str], body=QUESTION):
    """POST /ask from the local address ``source`` (127.0.0.0/8 is all loopback): (status, JSON body)."""
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60, source_address=(source, 0))
    conn.request("POST", "/ask", json.dumps(body), headers)
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, json.loads(payload)


def exchange(srv, data: bytes, *, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes on one connection; read until the server closes it (True) or goes quiet (False)."""
    return raw_exchange(srv, data, timeout=timeout)

def statuses(raw: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]  # pipelined answers follow a body directly


def error_of(raw: bytes) -> str:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]["message"]


# -- issue 39 item 2: identity headers only from trusted proxies -------------------------------------


def test_identity_headers_count_only_from_a_trusted_proxy(server):
    srv = server(user_header="X-User", groups_header="X-Groups", trusted_proxies=("127.0.0.1",))
    # The proxy (127.0.0.1) names an exec: the board memo is a source.
    status, body = ask_from(srv, "127.0.0.1", {"X-User": "carol", "X-Groups": "exec"})
    assert status == 200 and "merger" in [s["doc_id"] for s in body["sources"]]
    # bob, connecting directly from another address, names himself an exec: refused, in one JSON line.
    for headers in ({"X-User": "bob", "X-Groups": "exec"}, {"X-User": "bob", "X-Groups": "staff,exec"}, {"X-User": "carol"},
                    {"X-Groups": "exec"}):
        status, body = ask_from(srv, "127.0.0.2", headers)
        assert status == 403 and body["error"]["type"] == "permission_error", (headers, body)
        assert "trusted proxy" in body["error"]["message"] and "\n" not in body["error"]["message"]
        assert SECRET not in json.dumps(body)
    assert ask_from(srv, "127.0.0.2", {})[0] == 401  # and without them he is nobody


def test_forwarded_for_does_not_make_a_peer_trusted(server):
    """The peer is the socket's: X-Forwarded-For naming the proxy (uvicorn rewrites the client from it by default) is ignored."""
    srv = server(user_header="X-User", groups_header="X-Groups", trusted_proxies=("127.0.0.2",))
    status, body = ask_from(srv, "127.0.0.1", {"X-User": "bob", "X-Groups": "exec", "X-Forwarded-For": "127.0.0.2"})
    assert status == 403, body
    status, body = ask_from(srv, "127.0.0.2", {"X-User": "carol", "X-Groups": "exec"})
    assert status == 200 and "merger" in [s["doc_id"] for s in body["sources"]]


def test_a_repeated_groups_header_is_refused_even_from_the_proxy(server):
    """A proxy that appends its X-Groups to the client's would otherwise hand the client its groups."""
    srv = server(user_header="X-User", groups_header="X-Groups")  # loopback is trusted by default
    body = json.dumps(QUESTION).encode()
    raw, closed = exchange(srv, b"POST /ask HTTP/1.1\r\nHost: x\r\nX-User: bob\r\nX-Groups: exec\r\nX-Groups: staff\r\n"
                                b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert statuses(raw) == [400] and "appears 2 times" in error_of(raw) and closed
    assert SECRET.encode() not in raw


def test_trusted_proxies_must_be_addresses(pipe):
    with pytest.raises(ConfigError, match="not an IP address or CIDR"):
        PipelineServer(pipe, ("127.0.0.1", 0), ServeOptions(user_header="X-User", trusted_proxies=("proxy.local",)))


# -- issue 39 item 3: framing a front proxy could read differently -----------------------------------


def inner_ask() -> bytes:
    body = json.dumps(QUESTION).encode()
    return (b"POST /ask HTTP/1.1\r\nHost: x\r\nX-User: carol\r\nX-Groups: exec\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


INNER = inner_ask()


@pytest.mark.parametrize("name, data", [
    # CL.TE: a proxy reading Content-Length forwards it all; chunked framing ends at "0" and the rest is a second request.
    ("CL.TE", b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(INNER)) + INNER),
    # TE.CL: the reverse order of the same two headers.
    ("TE.CL", b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + INNER),
    # obs-folded Transfer-Encoding: chunked to h11, no framing at all to a proxy that does not unfold.
    ("obs-fold TE", b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + INNER),
    ("obs-fold other", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Note: a\r\n\tb\r\n\r\n" + INNER),
    # a chunk size no 64-bit parser holds (h11 reads up to 20 hex digits)
    ("overflow", b"POST /ask HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n" + INNER),
    ("overflow 17", b"POST /ask HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n" + INNER),
    # chunk data longer than its size: h11 discards the two bytes after a chunk unchecked
    ("size understated", b"POST /ask HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n" + INNER),
])
def test_ambiguous_framing_gets_400_and_a_closed_connection(server, name, data):
    srv = server(user_header="X-User", groups_header="X-Groups")
    raw, closed = exchange(srv, data)
    assert statuses(raw) == [400], (name, raw[:300])
    assert closed, name  # nothing after the error is read as a request
    assert error_of(raw) and SECRET.encode() not in raw
    assert request(srv, "GET", "/health")[0] == 200


def test_a_chunk_over_the_body_limit_gets_413_at_its_size_line(server):
    srv = server(public_only=True, max_body_bytes=1000)
    t = time.monotonic()
    raw, closed = exchange(srv, b"POST /ask HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n{", timeout=10)
    assert statuses(raw) == [413] and closed and "body limit" in error_of(raw)
    assert time.monotonic() - t < 5  # answered at the size line, not after the read timeout (30 s)


def test_well_formed_chunked_and_pipelined_requests_still_work(server, pipe):
    srv = server(public_only=True)
    body = json.dumps({"question": "What causes thyroid problems?"}).encode()
    chunked = (b"POST /ask HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % 10 + body[:10] + b"\r\n" + b"%x;ext=1\r\n" % (len(body) - 10) + body[10:] + b"\r\n0\r\n\r\n")
    raw, _ = exchange(srv, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + chunked, timeout=30)
    assert statuses(raw) == [200, 200], raw[:400]


# -- issue 40 item 4: connections that never time out ------------------------------------------------


def closed_after(sock: socket.socket, limit: float) -> tuple[float | None, bytes]:
    """Seconds until the server closed ``sock`` (None: still open after ``limit``), and what it sent."""
    t, out = time.monotonic(), b""
    sock.settimeout(limit)
    try:
        while True:
            block = sock.recv(4096)
            if not block:
                return time.monotonic() - t, out
            out += block
    except socket.timeout:
        return None, out
    except ConnectionResetError:
        return time.monotonic() - t, out


def test_slow_and_idle_clients_are_closed_while_a_normal_request_is_served(server):
    timeout = 1.5
    srv = server(public_only=True, header_timeout=timeout, keep_alive_timeout=timeout)
    address = srv.server_address[:2]
    idle = socket.create_connection(address)
    trickler = socket.create_connection(address)
    stop = threading.Event()

    def trickle() -> None:  # one header line every 0.2 s: a complete head never comes
        try:
            trickler.sendall(b"GET /health HTTP/1.1\r\n")
            while not stop.wait(0.2):
                trickler.sendall(b"X-Slow: 1\r\n")
        except OSError:
            pass

    threading.Thread(target=trickle, daemon=True).start()
    kept = socket.create_connection(address)
    try:
        t = time.monotonic()
        status, _, _ = request(srv, "GET", "/health")
        assert status == 200 and time.monotonic() - t < timeout  # served at once, beside the slow ones
        kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # a keep-alive connection, then silence
        bound = 6 * timeout  # generous: each must close after about `timeout`
        waited, out = closed_after(kept, bound)
        assert out.startswith(b"HTTP/1.1 200") and waited is not None, "idle keep-alive connection left open"
        waited, _ = closed_after(idle, bound)
        assert waited is not None, "idle connection left open"
        waited, out = closed_after(trickler, bound)
        assert waited is not None and statuses(out) == [408], ("trickling client held", out)
    finally:
        stop.set()
        for s in (idle, trickler, kept):
            s.close()
    assert request(srv, "GET", "/health")[0] == 200


def test_past_the_connection_limit_a_new_connection_gets_503_at_once(server):
    srv = server(public_only=True, max_connections=3, header_timeout=30)
    address = srv.server_address[:2]
    held = [socket.create_connection(address) for _ in range(3)]
    try:
        time.sleep(0.3)  # the server has accepted them
        extra = socket.create_connection(address)
        waited, out = closed_after(extra, 5)
        extra.close()
        assert waited is not None and statuses(out) == [503] and b"retry-after: 1" in out.lower()
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert request(srv, "GET", "/health")[0] == 200  # the slots came back


# -- issue 40 item 5: work that outlives its client --------------------------------------------------


def _long_answer_seconds(pipe, question: str) -> float:
    pipe.generator.max_new_tokens = 400
    pipe.generator.warm_up()
    t = time.monotonic()
    full = pipe.generator.generate(pipe.build_prompt(question, filters=PUBLIC_ONLY))
    assert full.completion_tokens >= 300  # the tiny random model rarely stops by itself
    return time.monotonic() - t


def _raw_post(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


@pytest.mark.parametrize("path, body", [
    ("/ask", {"question": "What causes thyroid problems?"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "What causes thyroid problems?"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "What causes thyroid problems?"}], "stream": True}),
])
def test_a_client_that_leaves_mid_answer_stops_its_decoding(server, pipe, path, body):
    """The client leaves while its (400-token) answer is being decoded: the model is free again at
    once, not after the answer (or its current sentence) is finished."""
    full_seconds = _long_answer_seconds(pipe, "What causes thyroid problems?")
    srv = server(public_only=True)
    with socket.create_connection(srv.server_address[:2], timeout=30) as s:
        s.sendall(_raw_post(path, body))
        time.sleep(0.25 * full_seconds)  # decoding is under way
    left = time.monotonic()
    status, _, payload = request(srv, "POST", "/v1/chat/completions",
                                 {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    waited = time.monotonic() - left
    assert status == 200, payload
    # Left running, the abandoned answer holds the model for its remaining ~0.75 x full_seconds.
    assert waited < 0.4 * full_seconds, (waited, full_seconds)


# -- issue 34 item 2: a restricted index is never served without an identity source -------------------


def test_a_restricted_index_without_an_identity_source_refuses_to_start(pipe):
    with pytest.raises(ConfigError) as refused:
        PipelineServer(pipe, ("127.0.0.1", 0), ServeOptions())
    message = str(refused.value)
    assert "\n" not in message and "restricted" in message and "--user-header" in message and "--public-only" in message
    with pytest.raises(ConfigError, match="contradict"):
        PipelineServer(pipe, ("127.0.0.1", 0), ServeOptions(user_header="X-User", public_only=True))


def test_public_only_serves_only_public_documents(server):
    srv = server(public_only=True)
    for headers in ({}, {"X-User": "carol", "X-Groups": "exec"}):  # identity headers mean nothing here
        status, body = ask_from(srv, "127.0.0.1", headers)
        assert status == 200 and body["sources"] and "merger" not in [s["doc_id"] for s in body["sources"]]
        assert SECRET not in json.dumps(body)
    _, _, raw = request(srv, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION["question"]}],
                                                              "stream": True, "layered": {"k": 11}})
    assert b"merger" not in raw and SECRET.encode() not in raw
    assert json.loads(request(srv, "GET", "/health")[2])["public_only"] is True


def test_layered_serve_of_a_restricted_index_exits_with_one_line(pipe, tmp_path):
    import subprocess
    import sys

    folder = pipe.save(tmp_path / "restricted")
    # A subprocess with a timeout: the code before the fix would serve forever.
    done = subprocess.run([sys.executable, "-m", "layered.cli", "-q", "serve", str(folder), "--port", "0"], capture_output=True,
                          text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("layered: error:") and "--user-header" in lines[0] and "--public-only" in lines[0]
