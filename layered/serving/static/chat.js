// The layered chat page: plain JS, same-origin requests only, text always set as text (never HTML).
"use strict";

const state = {
  history: [],      // the conversation sent with every question: [{role, content}]
  busy: false,
  config: { audiences: [], default_audience: null, user_header: null, groups_header: null },
};

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text || "";
  status.classList.toggle("error", Boolean(isError));
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

async function loadConfig() {
  const [health, models] = await Promise.all([getJSON("/health"), getJSON("/v1/models")]);
  state.config = health;
  const served = health.model;
  const modelSelect = $("model");
  for (const model of models.data) {
    const label = model.id === served ? `${served} (default)` : `${served} · adapter ${model.id.slice(served.length + 1)}`;
    const option = el("option", "", label);
    option.value = model.id;
    modelSelect.append(option);
  }
  const audiences = health.audiences || [];
  if (audiences.length) {
    const audienceSelect = $("audience");
    for (const name of audiences) {
      const option = el("option", "", name);
      option.value = name;
      audienceSelect.append(option);
    }
    if (health.default_audience) audienceSelect.value = health.default_audience;
    $("audience-label").hidden = false;
  }
  $("user-label").hidden = !health.user_header;
  $("groups-label").hidden = !health.groups_header;
}

// -- rendering ------------------------------------------------------------------------------

function addTurn(role, text) {
  const item = el("li", `msg ${role}`);
  item.append(el("div", "who", role === "user" ? "You" : "Assistant"));
  const body = el("div", "answer", text);
  item.append(body);
  $("conversation").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

// Split `text` into runs: [{text, unsupported}] marking each unsupported sentence where it occurs.
function markRuns(text, unsupported) {
  const spans = [];
  for (const sentence of unsupported || []) {
    if (!sentence) continue;
    let from = 0;
    for (;;) {
      const at = text.indexOf(sentence, from);
      if (at < 0) break;
      if (!spans.some((s) => at < s.end && at + sentence.length > s.start)) {
        spans.push({ start: at, end: at + sentence.length });
        break;
      }
      from = at + 1;
    }
  }
  spans.sort((a, b) => a.start - b.start);
  const runs = [];
  let pos = 0;
  for (const span of spans) {
    if (span.start > pos) runs.push({ text: text.slice(pos, span.start), unsupported: false });
    runs.push({ text: text.slice(span.start, span.end), unsupported: true });
    pos = span.end;
  }
  if (pos < text.length) runs.push({ text: text.slice(pos), unsupported: false });
  return runs;
}

// Append `text` to `parent`, turning [n] and [n, m] into links to the passages in `byNumber`.
function appendWithCitations(parent, text, byNumber) {
  const pattern = /\[(\d+(?:\s*,\s*\d+)*)\]/g;
  let pos = 0;
  for (const match of text.matchAll(pattern)) {
    const numbers = match[1].split(",").map((n) => Number(n.trim()));
    if (!numbers.every((n) => byNumber.has(n))) continue; // not a passage of this answer: plain text
    parent.append(document.createTextNode(text.slice(pos, match.index)));
    parent.append(document.createTextNode("["));
    numbers.forEach((n, i) => {
      if (i) parent.append(document.createTextNode(", "));
      parent.append(citationLink(n, byNumber.get(n)));
    });
    parent.append(document.createTextNode("]"));
    pos = match.index + match[0].length;
  }
  parent.append(document.createTextNode(text.slice(pos)));
}

function citationLink(number, passage) {
  const link = el("a", "cite", String(number));
  link.href = `#passage-${number}`;
  link.dataset.n = String(number);
  link.title = `${passage.doc_id} — ${passage.source}`;
  link.addEventListener("click", (event) => {
    event.preventDefault();
    showPassage(passage);
  });
  return link;
}

function showPassage(passage) {
  $("passage-title").textContent = `[${passage.number}] ${passage.doc_id}`;
  $("passage-doc").textContent = passage.doc_id;
  $("passage-source").textContent = passage.source;
  $("passage-text").textContent = passage.text;
  $("passage").hidden = false;
}

function renderFinal(item, text, layered) {
  const metadata = (layered && layered.metadata) || {};
  const sources = (layered && layered.sources) || [];
  const byNumber = new Map(sources.map((s) => [s.number, s]));
  const body = item.querySelector(".answer");
  body.textContent = "";
  if (metadata.refused) {
    item.classList.add("refused");
    body.append(el("span", "badge refusal", "Refused"));
    body.append(document.createTextNode(" " + text));
    return;
  }
  const unsupported = (metadata.grounding && metadata.grounding.unsupported) || [];
  const runs = markRuns(text, unsupported);
  const marked = runs.filter((run) => run.unsupported).length; // sentences still in the text (a "drop" pipeline removed the rest)
  for (const run of runs) {
    if (run.unsupported) {
      const mark = el("mark", "unsupported");
      mark.title = "Not supported by the passages shown to the model";
      appendWithCitations(mark, run.text, byNumber);
      body.append(mark);
    } else {
      appendWithCitations(body, run.text, byNumber);
    }
  }
  const citations = (layered && layered.citations) || [];
  if (citations.length && !body.querySelector("a.cite")) {
    // The model cited no [n] itself: the passages its sentences were drawn from, as links.
    const cited = el("p", "cited", "Drawn from ");
    citations.forEach((c, i) => {
      if (i) cited.append(document.createTextNode(" "));
      cited.append(document.createTextNode("["), citationLink(c.number, byNumber.get(c.number) || c), document.createTextNode("]"));
    });
    item.append(cited);
  }
  if (marked) {
    item.append(el("p", "note", `${marked} sentence(s) marked: not supported by the sources.`));
  }
  if (sources.length) {
    const list = el("ol", "sources");
    for (const source of sources) {
      const entry = el("li", "source");
      entry.append(document.createTextNode("["), citationLink(source.number, source), document.createTextNode(`] ${source.doc_id}`));
      entry.append(el("span", "source-path", ` (${source.source})`));
      list.append(entry);
    }
    const details = el("details", "sources-box");
    details.append(el("summary", "", `Sources (${sources.length})`));
    details.append(list);
    item.append(details);
  }
}

// -- talking to the server ------------------------------------------------------------------

function requestHeaders() {
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
  const { user_header: userHeader, groups_header: groupsHeader } = state.config;
  const user = $("user").value.trim();
  const groups = $("groups").value.trim();
  if (userHeader && user) headers[userHeader] = user;
  if (groupsHeader && groups) headers[groupsHeader] = groups;
  return headers;
}

async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function ask(question) {
  state.busy = true;
  $("send").disabled = true;
  setStatus("Thinking…");
  const messages = [...state.history, { role: "user", content: question }];
  addTurn("user", question);
  const item = addTurn("assistant", "");
  item.classList.add("streaming");
  const body = { model: $("model").value, stream: true, messages };
  if ((state.config.audiences || []).length) body.layered = { variables: { audience: $("audience").value } };
  let text = "";
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: requestHeaders(), body: JSON.stringify(body) });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    let layered = null;
    const answer = item.querySelector(".answer");
    for await (const chunk of events(response)) {
      const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
      if (delta.content) {
        text += delta.content;
        answer.textContent = text;
      }
      if (chunk.layered) layered = chunk.layered;
    }
    item.classList.remove("streaming");
    renderFinal(item, text, layered);
    state.history = [...messages, { role: "assistant", content: text }];
    setStatus("");
  } catch (error) {
    item.classList.remove("streaming");
    item.classList.add("error");
    item.querySelector(".answer").textContent = `Error: ${error.message}`;
    setStatus(error.message, true);
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
}

function newConversation() {
  state.history = [];
  $("conversation").textContent = "";
  $("passage").hidden = true;
  setStatus("");
  $("question").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question || state.busy) return;
    $("question").value = "";
    ask(question);
  });
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("ask").requestSubmit();
    }
  });
  $("new").addEventListener("click", newConversation);
  $("passage-close").addEventListener("click", () => { $("passage").hidden = true; });
  loadConfig().then(() => {
    document.body.dataset.ready = "true";
  }, (error) => setStatus(`Cannot reach the server: ${error.message}`, true));
});
