"""Property tests (hypothesis) for issue 18: random bytes, headers and JSON at the real HTTP
server, random files at the loaders. Properties: no 5xx, no traceback (only LayeredError),
the server lives on, memory stays bounded."""

from __future__ import annotations

import http.client
import json
import socket
import string
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layered import Pipeline
from layered.errors import LayeredError
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.loaders import FileLoader, LoadLimits
from layered.serving.server import PipelineServer, ServeOptions
from layered.types import Document

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def live(tiny_model_dir):
    from layered.generation.transformers_generator import TransformersGenerator

    gen = TransformersGenerator(str(tiny_model_dir), max_new_tokens=3, context_window=1024)
    retriever = DenseRetriever(embedder=HashingEmbedder(64))
    retriever.add_documents([Document(id="d", text="Thyroid hormone controls metabolism.", source="s")])
    srv = PipelineServer(Pipeline(generator=gen, retriever=retriever, k=1), ("127.0.0.1", 0),
                         ServeOptions(model_name="tiny", max_body_bytes=64_000, user_header="X-User"))
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def alive(srv) -> bool:
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=30)
    conn.request("GET", "/health")
    ok = conn.getresponse().status == 200
    conn.close()
    return ok


def exchange(srv, data: bytes) -> bytes:
    with socket.create_connection(srv.server_address[:2], timeout=10) as s:
        s.sendall(data)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        out = b""
        while True:
            try:
                block = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not block:
                break
            out += block
        return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["question", "k", "variables", "adapter", "max_tokens", "messages", "stream", "model", "role", "content", "type", "text"]
requests_like = st.dictionaries(st.sampled_from(FIELDS), json_values | st.lists(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4), max_size=3), max_size=6)


@FUZZ
@given(body=requests_like | json_values, path=st.sampled_from(["/ask", "/v1/chat/completions"]))
def test_random_json_gets_no_5xx(live, body, path):
    conn = http.client.HTTPConnection(*live.server_address[:2], timeout=60)
    conn.request("POST", path, json.dumps(body), {"X-User": "ann", "Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    assert resp.status < 500, payload[:300]
    if resp.status >= 400:
        assert json.loads(payload)["error"]["message"]


header_names = st.text(alphabet=string.ascii_letters + "-_", min_size=1, max_size=20)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"), max_size=60)


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "X"]),
       path=st.text(alphabet=string.ascii_letters + string.digits + "/%?&=.-_~", max_size=40).map(lambda p: "/" + p),
       headers=st.dictionaries(header_names, header_values, max_size=6), body=st.binary(max_size=300))
def test_random_requests_and_headers_get_no_5xx(live, method, path, headers, body):
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items() if k.lower() not in ("host", "content-length", "transfer-encoding"))
    raw = exchange(live, head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    statuses = [int(line.split()[1]) for line in raw.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert len(statuses) <= 1 and all(s < 500 for s in statuses), raw[:300]


@FUZZ
@given(raw=st.binary(max_size=600) | st.builds(lambda a, b: a + b, st.sampled_from(
    [b"POST /ask HTTP/1.1\r\n", b"GET /health HTTP/1.1\r\nHost: x\r\n", b"POST /ask HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
     b"POST /ask HTTP/1.1\r\nHost: x\r\nContent-Length: "]), st.binary(max_size=400)))
def test_random_bytes_on_the_socket_get_no_5xx_and_the_server_lives(live, raw):
    out = exchange(live, raw)
    statuses = [int(line.split()[1]) for line in out.split(b"\r\n") if line.startswith(b"HTTP/1.1 ") and line.split()[1].isdigit()]
    assert all(s < 500 for s in statuses), out[:300]
    assert alive(live)


# -- loaders -------------------------------------------------------------------------------------

LIMITS = LoadLimits(max_file_bytes=1 << 20, max_document_bytes=64 << 10)
SUFFIXES = [".jsonl", ".jsonl.gz", ".csv", ".txt", ".md", ".html", ".pdf"]


def load_quietly(path) -> None:
    try:
        docs = list(FileLoader(limits=LIMITS).load(path))
    except LayeredError as e:
        assert "\n" not in str(e)  # one line
        return
    for d in docs:
        json.dumps([d.id, d.text, d.source])  # every loaded document is serialisable
        d.id.encode("utf-8")


def bounded(path, size: int) -> None:
    tracemalloc.start()
    try:
        load_quietly(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * size + (8 << 20)


@FUZZ
@given(suffix=st.sampled_from(SUFFIXES), data=st.binary(max_size=4000))
def test_random_bytes_in_any_file_type_load_or_fail_in_one_line(tmp_path_factory, suffix, data):
    path = tmp_path_factory.mktemp("fuzz") / f"f{suffix}"
    path.write_bytes(data)
    bounded(path, len(data))


@FUZZ
@given(rows=st.lists(json_values | requests_like, max_size=8), ending=st.sampled_from(["\n", "\r\n", "\u2028\n"]))
def test_random_json_structures_in_jsonl_load_or_fail_in_one_line(tmp_path_factory, rows, ending):
    path = tmp_path_factory.mktemp("fuzz") / "f.jsonl"
    data = ending.join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    bounded(path, len(data))


cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@FUZZ
@given(header=st.lists(cells, min_size=0, max_size=4), rows=st.lists(st.lists(cells, max_size=6), max_size=6))
def test_random_csv_loads_or_fails_in_one_line(tmp_path_factory, header, rows):
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path = tmp_path_factory.mktemp("fuzz") / "f.csv"
    data = buffer.getvalue().encode("utf-8")
    path.write_bytes(data)
    bounded(path, len(data))


@FUZZ
@given(tags=st.lists(st.sampled_from(["<head>", "</head>", "<body>", "<p>", "</p>", "<div style='display:none'>", "</div>",
                                      "<script>", "</script>", "<br>", "<span hidden>", "</span>", "<title>", "</title>",
                                      "<!--", "-->", "<![CDATA[", "&amp;", "&#0;", "<"]) | cells, max_size=30))
def test_random_html_loads_or_fails_in_one_line(tmp_path_factory, tags):
    path = tmp_path_factory.mktemp("fuzz") / "f.html"
    data = "".join(tags).encode("utf-8")
    path.write_bytes(data)
    bounded(path, len(data))
