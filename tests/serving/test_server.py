"""`layered serve` for real: a pipeline behind a loopback HTTP server, spoken to over sockets."""

from __future__ import annotations

import json

import pytest

from layered import Pipeline
from layered.retrieval.chunkers import TokenChunker
from layered.retrieval.dense import DenseRetriever
from layered.retrieval.embedders import HashingEmbedder
from layered.retrieval.filters import User
from layered.serving.access import PUBLIC_ONLY  # the view of a public-only server (its index holds a restricted memo)
from layered.types import Document
from tests.helpers import request


@pytest.fixture
def pipe(tiny_generator, docs):
    retriever = DenseRetriever(embedder=HashingEmbedder(128), chunker=TokenChunker(size=60, overlap=10))
    secret = Document(id="secret", text="Staff-only note about the thyroid drug trial schedule.", source="memo",
                      metadata={"access": ["group:staff"]})
    retriever.add_documents([*docs[:10], secret])
    return Pipeline(generator=tiny_generator, retriever=retriever, k=3)



def test_ask_and_chat_completions_return_the_pipelines_answer(server, pipe):
    srv = server(public_only=True)
    question = "What causes thyroid problems?"
    expected = pipe.ask(question, filters=PUBLIC_ONLY)
    status, _, body = request(srv, "POST", "/ask", {"question": question})
    data = json.loads(body)
    assert status == 200 and data["answer"] == expected.text
    assert [s["chunk_id"] for s in data["sources"]] == [s.chunk_id for s in expected.sources]
    status, _, body = request(srv, "POST", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": question}]})
    data = json.loads(body)
    assert status == 200 and data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == expected.text and data["usage"]["completion_tokens"] > 0
    status, _, body = request(srv, "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["tiny"]
    assert request(srv, "GET", "/health")[0] == 200


def test_streaming_sends_server_sent_events_ending_in_done(server, pipe):
    srv = server(public_only=True)
    question = "What causes thyroid problems?"
    status, headers, body = request(srv, "POST", "/v1/chat/completions",
                                    {"messages": [{"role": "user", "content": question}], "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == pipe.ask(question, filters=PUBLIC_ONLY).text


@pytest.mark.parametrize("method, path, body, raw, headers, status, message", [
    ("POST", "/ask", None, b"{not json", None, 400, "not valid JSON"),
    ("POST", "/ask", [1, 2], None, None, 400, "JSON object"),
    ("POST", "/ask", {"question": 3}, None, None, 400, "'question'"),
    ("POST", "/ask", {"question": "   "}, None, None, 400, "empty"),
    ("POST", "/ask", {"question": "hi", "k": 0}, None, None, 400, "'k'"),
    ("POST", "/ask", {"question": "hi", "adapter": "nope"}, None, None, 422, "no adapter named"),
    ("POST", "/ask", {"question": "word " * 5000}, None, None, 400, "shorten the question"),
    ("POST", "/v1/chat/completions", {"messages": []}, None, None, 400, "non-empty list"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "system", "content": "x"}]}, None, None, 400, "no user message"),
    ("POST", "/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, None, None, 400, "unknown model"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     None, None, 400, "last message must be the user's"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, None, None, 400, "not one of system"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "layered": [1]}, None, None, 400, "'layered'"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "layered": {"adapter": "a"}}, None, None, 400,
     "unknown field"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "layered": {"k": 0}}, None, None, 400, "'k'"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "layered": {"variables": {"messages": "x"}}},
     None, None, 400, "not a prompt variable"),
    ("GET", "/nowhere", None, None, None, 404, "not served"),
    ("GET", "/ask", None, None, None, 405, "not served"),
    ("POST", "/ask", None, b"x" * 200_000, None, 413, "limit is 100000"),
])
def test_bad_requests_get_a_json_4xx_and_the_server_lives_on(server, method, path, body, raw, headers, status, message):
    srv = server(max_body_bytes=100_000, public_only=True)
    got, _, payload = request(srv, method, path, body, headers, raw)
    assert got == status and message in json.loads(payload)["error"]["message"]
    assert request(srv, "GET", "/health")[0] == 200


def test_a_full_queue_gets_503_with_retry_after(server):
    srv = server(max_queue=0, public_only=True)
    status, headers, payload = request(srv, "POST", "/ask", {"question": "What causes thyroid problems?"})
    assert status == 503 and headers["Retry-After"] == "1" and "busy" in json.loads(payload)["error"]["message"]


def test_access_control_comes_from_the_configured_headers(server):
    srv = server(user_header="X-User", groups_header="X-Groups")
    question = {"question": "staff-only thyroid drug trial schedule", "k": 11}
    assert request(srv, "POST", "/ask", question)[0] == 401
    _, _, outsider = request(srv, "POST", "/ask", question, {"X-User": "ann"})
    _, _, insider = request(srv, "POST", "/ask", question, {"X-User": "bob", "X-Groups": "nurses, staff"})
    assert "secret" not in [s["doc_id"] for s in json.loads(outsider)["sources"]]
    assert "secret" in [s["doc_id"] for s in json.loads(insider)["sources"]]


def test_chat_completions_answer_the_whole_conversation(server, pipe):
    """The client sends the history; the follow-up is retrieved for as a standalone question."""
    srv = server(public_only=True)
    messages = [{"role": "user", "content": "What is Graves disease?"}, {"role": "assistant", "content": "A thyroid condition."},
                {"role": "user", "content": "How is it treated?"}]
    expected = pipe.chat(messages, filters=PUBLIC_ONLY)
    status, _, body = request(srv, "POST", "/v1/chat/completions", {"model": "tiny", "messages": messages})
    data = json.loads(body)
    assert status == 200 and data["choices"][0]["message"]["content"] == expected.text
    assert data["layered"]["metadata"]["query"] == "How is Graves disease treated?"
    status, _, body = request(srv, "POST", "/v1/chat/completions", {"messages": messages, "stream": True})
    chunks = [json.loads(line[6:]) for line in body.decode().split("\n\n") if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected.text
    assert chunks[-1]["layered"]["metadata"]["query"] == "How is Graves disease treated?"
    # The 'layered' object carries /ask's k and variables.
    narrow = pipe.chat(messages, k=1, filters=PUBLIC_ONLY)
    status, _, body = request(srv, "POST", "/v1/chat/completions", {"messages": messages, "layered": {"k": 1, "variables": {}}})
    data = json.loads(body)
    assert status == 200 and data["choices"][0]["message"]["content"] == narrow.text
    assert all(c["number"] == 1 for c in data["layered"]["citations"])


def test_the_chat_page_and_its_files_are_served_with_a_same_origin_policy(server):
    srv = server(public_only=True)
    status, headers, page = request(srv, "GET", "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8" and b"<title>layered chat</title>" in page
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert b"http://" not in page and b"https://" not in page  # nothing from another origin
    for name, kind in [("chat.js", "text/javascript; charset=utf-8"), ("chat.css", "text/css; charset=utf-8")]:
        status, headers, body = request(srv, "GET", f"/static/{name}")
        assert status == 200 and headers["Content-Type"] == kind and headers["X-Content-Type-Options"] == "nosniff"
        assert b"http://" not in body and b"https://" not in body and b"@import" not in body
    for path in ["/static/../server.py", "/static/%2e%2e/server.py", "/static/..%2fserver.py", "/static/", "/static/nope.js",
                 "/static//etc/passwd", "/static/chat.js/"]:
        assert request(srv, "GET", path)[0] == 404, path
    assert request(srv, "POST", "/")[0] == 405
    health = json.loads(request(srv, "GET", "/health")[2])
    assert health["audiences"] == [] and health["user_header"] is None


def test_the_streams_final_chunk_carries_sources_with_text_citations_and_grounding(server, pipe):
    srv = server(user_header="X-User")
    question = "What causes thyroid problems?"
    _, _, body = request(srv, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": question}], "stream": True},
                         {"X-User": "ann"})
    chunks = [json.loads(line[6:]) for line in body.decode().split("\n\n") if line.startswith("data: {")]
    final = chunks[-1]["layered"]
    expected = pipe.ask(question, user=User("ann"))
    assert [(s["number"], s["chunk_id"], s["text"]) for s in final["sources"]] == [(s.number, s.chunk_id, s.text) for s in expected.sources]
    assert "secret" not in {s["doc_id"] for s in final["sources"]}
    assert [c["chunk_id"] for c in final["citations"]] == [c.chunk_id for c in expected.citations]
    grounding = final["metadata"]["grounding"]
    assert grounding["mode"] == "mark" and grounding["unsupported"] == expected.metadata["grounding"]["unsupported"]
    _, _, body = request(srv, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": question}]}, {"X-User": "ann"})
    layered = json.loads(body)["layered"]
    assert layered["sources"] == final["sources"] and layered["metadata"]["grounding"] == grounding
