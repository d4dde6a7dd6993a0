// The stream client: send a message, follow its answer (over SSE or the WebSocket), stop it,
// copy it; edit a question, regenerate an answer, and switch between versions.
// Everything else on the page is server-rendered HTML (and htmx).

const transcript = document.getElementById("transcript");
const composer = document.getElementById("composer");
const input = document.getElementById("message-input");
const sendButton = document.getElementById("send-button");
const stopButton = document.getElementById("stop-button");
const notice = document.getElementById("notice");
const modelSelect = document.getElementById("model");
const app = document.querySelector(".app");

const csrfToken = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"];

// message id -> Follower, for every answer this page is following.
const followers = new Map();

function showNotice(text) {
  notice.textContent = text;
  notice.hidden = !text;
}

async function api(method, url, body, headers = {}) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken, ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const message = data?.error?.message || `The server answered ${response.status}.`;
    const error = new Error(message);
    error.status = response.status;
    error.retryAfter = response.headers.get("Retry-After");
    throw error;
  }
  return data;
}

function updateStopButton() {
  const streaming = followers.size > 0;
  // Stop disappears with the answer: its keyboard user goes back to the composer.
  if (!streaming && document.activeElement === stopButton) input.focus();
  stopButton.hidden = !streaming;
}

// The page follows one answer at a time: a send, edit, regenerate or version switch waits
// for the answer being written (or its Stop).
function refuseWhileStreaming() {
  if (!followers.size) return false;
  showNotice("Wait for the answer to finish, or stop it first.");
  return true;
}

// --- Transports ------------------------------------------------------------------------
// A Follower gets its events from a source: an EventSource of its own (SSE, the default)
// or its subscription on the page's one WebSocket. Both hand each event to
// `follower.handle(name, id, data)`; a source also knows how to Stop and to close.

const STREAM_EVENTS = ["start", "token", "reset", "usage", "error", "final"];

function backoff(retries) {
  return Math.min(10000, 500 * 2 ** retries);
}

class EventSourceStream {
  constructor(follower) {
    this.follower = follower;
    this.retries = 0;
    this.open();
  }

  open() {
    const follower = this.follower;
    const after = follower.lastId;
    const url =
      after === null ? follower.url : `${follower.url}?after=${after}&rendered=${follower.rendered}`;
    const source = new EventSource(url);
    this.source = source;
    for (const name of STREAM_EVENTS) {
      source.addEventListener(name, (event) => {
        if (!(event instanceof MessageEvent)) return; // a connection error, not the event
        const id = event.lastEventId ? Number(event.lastEventId) : null;
        follower.handle(name, id, JSON.parse(event.data));
      });
    }
    source.addEventListener("open", () => (this.retries = 0));
    // EventSource retries network drops by itself (resending Last-Event-ID); it gives up
    // on an HTTP error or a 204. Then we decide: done, or reopen from the last id.
    source.onerror = () => {
      if (follower.finished || source.readyState !== EventSource.CLOSED) return;
      this.recover();
    };
  }

  async recover() {
    const follower = this.follower;
    this.source.close();
    try {
      const message = await api("GET", `/api/messages/${follower.id}`);
      const last = follower.lastId;
      if (message.status !== "streaming" && last !== null && last > message.content.length) {
        // We already saw the end (the server answered 204).
        follower.finish({ status: message.status, content: message.content, html: null });
        return;
      }
    } catch (error) {
      if (error.status === 401 || error.status === 404) {
        follower.fail(error.message);
        return;
      }
    }
    setTimeout(() => follower.finished || this.open(), backoff(this.retries++));
  }

  stop() {
    return stopOverHttp(this.follower);
  }

  close() {
    this.source.close();
  }
}

function stopOverHttp(follower) {
  return api("POST", `/api/messages/${follower.id}/stop`, { seen: follower.lastId ?? 0 });
}

// Close code of a socket whose session logged out: reconnecting would be refused.
const SIGNED_OUT = 4401;

// The page's one WebSocket: sends, Stops, and the streams of every answer followed over
// it. After a drop it reconnects with exponential backoff and subscribes again to every
// unfinished answer from the last event id seen, so nothing is lost or repeated.
class ChatSocket {
  constructor() {
    this.followers = new Map(); // message id -> Follower
    this.pending = new Map(); // ref -> {resolve, reject} of a frame awaiting its answer
    this.waiters = [];
    this.refs = 0;
    this.retries = 0;
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/chat/`);
    this.ws = ws;
    ws.onopen = () => {
      this.retries = 0;
      for (const follower of this.followers.values()) this.subscribe(follower);
      for (const resolve of this.waiters.splice(0)) resolve();
    };
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = (event) => {
      this.ws = null;
      for (const { reject } of this.pending.values()) {
        reject(new Error("The connection to the server was lost; try again."));
      }
      this.pending.clear();
      if (event.code === SIGNED_OUT) {
        for (const follower of [...this.followers.values()]) follower.fail("Signed out.");
        return;
      }
      setTimeout(() => this.connect(), backoff(this.retries++));
    };
  }

  get open() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  ready(timeout = 5000) {
    if (this.open) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const fail = () => reject(new Error("Not connected to the server; try again."));
      const timer = setTimeout(fail, timeout);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  // Sends a frame and resolves with its answer (`accepted`), or rejects with its error.
  async request(frame) {
    await this.ready();
    const ref = String(++this.refs);
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      this.ws.send(JSON.stringify({ ...frame, ref }));
    });
  }

  receive(frame) {
    if (frame.type === "accepted" || (frame.type === "error" && frame.id === undefined)) {
      // The answer to one of our frames (an error without an id refuses a frame).
      const waiting = this.pending.get(frame.ref);
      this.pending.delete(frame.ref);
      if (frame.type === "accepted") {
        waiting?.resolve(frame);
      } else if (waiting) {
        waiting.reject(Object.assign(new Error(frame.message), { retryAfter: frame.retry_after }));
      } else {
        this.followers.get(frame.ref)?.fail(frame.message); // a refused subscribe or cancel
      }
      return;
    }
    this.followers.get(frame.message_id)?.handle(frame.type, frame.id, frame);
  }

  // `subscribed`: the server already streams this answer here (it followed our `send`).
  follow(follower, subscribed) {
    this.followers.set(follower.id, follower);
    if (!subscribed) this.subscribe(follower);
    return {
      stop: () => this.cancel(follower),
      close: () => this.followers.delete(follower.id),
    };
  }

  subscribe(follower) {
    if (!this.open) return; // done on (re)connection
    const frame = { type: "subscribe", message_id: follower.id, ref: follower.id };
    if (follower.lastId !== null) {
      frame.after = follower.lastId;
      frame.rendered = follower.rendered;
    }
    this.ws.send(JSON.stringify(frame));
  }

  async cancel(follower) {
    if (!this.open) return stopOverHttp(follower); // Stop works while reconnecting too
    this.ws.send(JSON.stringify({ type: "cancel", message_id: follower.id, ref: follower.id }));
  }
}

let chatSocket = null;
function pageSocket() {
  chatSocket ??= new ChatSocket();
  return chatSocket;
}

function currentTransport() {
  return app.dataset.transport === "ws" ? "ws" : "sse";
}

// Follows one answer's stream. Text is appended in batches on animation frames so a
// fast stream costs one layout per frame, not one per token. Markdown blocks the server
// reports finished are shown formatted as they arrive; only the unfinished tail is plain
// text, so formatting appears progressively and finished blocks never change again.
class Follower {
  constructor(article, { transport = currentTransport(), subscribed = false } = {}) {
    this.article = article;
    this.id = article.dataset.messageId;
    this.url = article.dataset.streamUrl;
    this.lastId = article.dataset.after ? Number(article.dataset.after) : null;
    this.body = article.querySelector(".message__body");
    this.status = article.querySelector("[data-role=status]");
    this.footnote = article.querySelector("[data-role=footnote]");
    this.copyButton = article.querySelector("[data-action=copy]");
    this.blocks = this.body.querySelector(".stream-blocks");
    this.text = this.body.querySelector(".stream-text");
    if (!this.blocks || !this.text) {
      this.blocks = document.createElement("div");
      this.blocks.className = "stream-blocks";
      this.text = document.createElement("div");
      this.text.className = "stream-text";
      this.body.replaceChildren(this.blocks, this.text);
    }
    // Where the formatted blocks end in the answer, in code points (as the server counts).
    this.rendered = Number(this.blocks.dataset.rendered || 0);
    this.tail = this.text.textContent; // the answer after `rendered`, shown as text
    this.markdown = this.article.dataset.markdown ?? this.tail;
    this.pending = ""; // text not on the page yet
    this.newBlocks = []; // HTML of blocks not on the page yet
    this.frame = 0;
    this.finished = false;
    this.speaker = new Speaker(this.markdown.length);
    this.model = article.dataset.model || "";
    followers.set(this.id, this);
    updateStopButton();
    this.source =
      transport === "ws" ? pageSocket().follow(this, subscribed) : new EventSourceStream(this);
  }

  // One event of the stream (CONTRACT §5); unknown names are ignored.
  handle(name, id, data) {
    if (this.finished) return;
    if (id !== null && id !== undefined) this.lastId = id;
    if (name === "start") this.model = data.model;
    else if (name === "token") this.append(data.text, data.blocks);
    else if (name === "reset") this.reset(data.content, data.blocks);
    else if (name === "usage") this.usage = data;
    else if (name === "error") this.error = data;
    else if (name === "final") this.finish(data);
  }

  append(text, blocks) {
    this.markdown += text;
    this.tail += text;
    this.pending += text;
    this.takeBlocks(blocks);
    this.status.replaceChildren();
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  // Blocks are contiguous: each starts where the formatted part ends. One that ends at or
  // before it is a repeat after a resume; one that does not fit waits for `final`.
  takeBlocks(blocks) {
    for (const block of blocks || []) {
      if (block.end <= this.rendered || block.start !== this.rendered) continue;
      this.newBlocks.push(block.html);
      this.tail = dropCodePoints(this.tail, block.end - block.start);
      this.rendered = block.end;
    }
  }

  flush() {
    this.frame = 0;
    if (this.newBlocks.length) {
      // Sanitized by the server; the message body carries hx-disable.
      this.blocks.insertAdjacentHTML("beforeend", this.newBlocks.join(""));
      this.blocks.dataset.rendered = this.rendered;
      addCodeButtons(this.blocks);
      this.newBlocks = [];
      this.text.textContent = this.tail;
    } else if (this.pending) {
      this.text.append(this.pending);
    }
    this.pending = "";
    this.speaker.heard(this.markdown, false);
  }

  reset(content, blocks) {
    this.markdown = content;
    this.tail = content;
    this.rendered = 0;
    this.pending = "";
    this.newBlocks = [];
    this.blocks.replaceChildren();
    this.blocks.dataset.rendered = 0;
    this.takeBlocks(blocks);
    this.speaker = new Speaker(content.length);
    this.flush();
  }

  finish(data) {
    this.finished = true;
    this.source?.close();
    cancelAnimationFrame(this.frame);
    this.markdown = data.content;
    if (data.html !== null) {
      this.body.innerHTML = data.html; // sanitized by the server; hx-disable on the body
      addCodeButtons(this.body);
    } else {
      // The end came without its rendering (see recover()): show the text as text.
      this.blocks.replaceChildren();
      this.text.textContent = data.content;
    }
    this.article.dataset.status = data.status;
    this.article.dataset.markdown = data.content;
    this.article.setAttribute("aria-busy", "false");
    const labels = { stopped: "Stopped", interrupted: "Interrupted", error: "Error" };
    let label = labels[data.status] || "";
    if (data.status === "error" && this.error?.message) label = `Error: ${this.error.message}`;
    this.status.textContent = label;
    if (this.footnote) this.footnote.textContent = footnoteText(this.model, data, this.usage);
    this.speaker.heard(data.content, true);
    this.speaker.say(ENDINGS[data.status] || "Answer finished.");
    this.copyButton.disabled = false;
    for (const button of this.article.querySelectorAll("[data-action=regenerate]")) {
      button.disabled = false;
    }
    if (RETRYABLE.has(data.status) && !this.article.querySelector(".retry")) {
      const retry = actionButton("Retry", "regenerate");
      retry.classList.add("retry");
      this.article.querySelector("[data-action=regenerate]").after(retry);
    }
    followers.delete(this.id);
    updateStopButton();
    document.dispatchEvent(new CustomEvent("chat:final", { detail: { messageId: this.id } }));
  }

  // The article left the page (another version replaced it): stop listening, quietly.
  close() {
    this.finished = true;
    this.source?.close();
    cancelAnimationFrame(this.frame);
    followers.delete(this.id);
    updateStopButton();
  }

  fail(text) {
    this.finished = true;
    this.source?.close();
    this.article.setAttribute("aria-busy", "false");
    this.status.textContent = text;
    followers.delete(this.id);
    updateStopButton();
  }

  async stop() {
    try {
      await this.source.stop();
    } catch (error) {
      showNotice(error.message);
    }
  }
}

// Answers that ended this way get a Retry button (a Regenerate by another name).
const RETRYABLE = new Set(["error", "interrupted"]);

function actionButton(label, action, disabled = false) {
  const button = document.createElement("button");
  button.type = "button";
  button.dataset.action = action;
  button.disabled = disabled;
  button.textContent = label;
  return button;
}

// A message the page just sent, built as the server's `message` partial builds it. A new
// message is the only version at its place, so it has no version switcher.
function messageArticle(message, role) {
  const article = document.createElement("article");
  article.className = `message message--${role}`;
  article.dataset.messageId = message.id;
  article.dataset.status = message.status;
  article.dataset.markdown = message.content;
  article.dataset.model = message.model;
  article.setAttribute("aria-label", role === "user" ? "You" : "Assistant");
  const roleLabel = document.createElement("div");
  roleLabel.className = "message__role";
  roleLabel.setAttribute("aria-hidden", "true");
  roleLabel.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "message__body";
  body.setAttribute("hx-disable", "");
  article.append(roleLabel, body);
  const actions = document.createElement("div");
  actions.className = "message__actions";
  if (role === "user") {
    const paragraph = document.createElement("p");
    paragraph.className = "plain";
    paragraph.textContent = message.content;
    body.append(paragraph);
    article.setAttribute("aria-busy", "false");
    actions.append(actionButton("Edit", "edit"));
    article.append(actions);
  } else {
    article.setAttribute("aria-busy", "true");
    const status = document.createElement("p");
    status.className = "message__status";
    status.dataset.role = "status";
    status.innerHTML = '<span class="thinking">Thinking…</span>';
    const footnote = document.createElement("p");
    footnote.className = "message__footnote";
    footnote.dataset.role = "footnote";
    const copy = actionButton("Copy", "copy", true);
    copy.className = "copy";
    actions.append(copy, actionButton("Regenerate", "regenerate", true));
    article.append(status, footnote, actions);
  }
  return article;
}

async function ensureConversation() {
  if (app.dataset.conversationId) return app.dataset.conversationId;
  const conversation = await api("POST", "/api/conversations", {
    model: modelSelect?.value,
    system_prompt: systemPrompt.value,
  });
  app.dataset.conversationId = conversation.id;
  history.replaceState(null, "", `/c/${conversation.id}/${location.search}`);
  return conversation.id;
}

// The idempotency key of the message being sent. Sending the same text again after a
// failure (say, a dropped connection) reuses it, so the server starts its answer once.
let pendingSend = null;

function sendKey(content) {
  if (pendingSend?.content !== content) {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    const key = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
    pendingSend = { content, key };
  }
  return pendingSend.key;
}

async function send() {
  const content = input.value;
  if (!content.trim() || sendButton.disabled || refuseWhileStreaming()) return;
  sendButton.disabled = true;
  showNotice("");
  const transport = currentTransport();
  try {
    const conversationId = await ensureConversation();
    const fields = { content, model: modelSelect?.value };
    const key = sendKey(content);
    // Over the WebSocket the answer's events follow `accepted` on the same socket, so the
    // Follower must exist before the next frame is read: no `await` between the two.
    const result =
      transport === "ws"
        ? await pageSocket().request({
            type: "send",
            conversation_id: conversationId,
            client_key: key,
            ...fields,
          })
        : await api("POST", `/api/conversations/${conversationId}/messages`, fields, {
            "Idempotency-Key": key,
          });
    pendingSend = null;
    input.value = "";
    autoGrow();
    transcript.querySelector(".empty-state")?.remove();
    const userArticle = messageArticle(result.user_message, "user");
    const answer = messageArticle(result.assistant_message, "assistant");
    answer.dataset.streamUrl = `/api/messages/${result.assistant_message.id}/stream`;
    transcript.append(userArticle, answer);
    answer.scrollIntoView({ block: "end" });
    new Follower(answer, { transport, subscribed: transport === "ws" });
    document.body.dispatchEvent(new CustomEvent("chat:refresh-sidebar"));
  } catch (error) {
    const wait = error.retryAfter ? ` (try again in ${error.retryAfter} s)` : "";
    showNotice(error.message + wait);
  } finally {
    sendButton.disabled = false;
    input.focus();
  }
}

function stopAll() {
  for (const follower of followers.values()) follower.stop();
}

// --- Formatting helpers ------------------------------------------------------------------

// `text` without its first `count` code points (the server counts positions in code points,
// JavaScript strings in UTF-16 units).
function dropCodePoints(text, count) {
  let index = 0;
  for (let left = count; left > 0 && index < text.length; left--) {
    index += text.codePointAt(index) > 0xffff ? 2 : 1;
  }
  return text.slice(index);
}

// A button on each code block that puts its code on the clipboard. Named so that it is
// never mistaken for the message's own Copy button.
function addCodeButtons(root) {
  for (const pre of root.querySelectorAll("pre:not([data-has-button])")) {
    pre.dataset.hasButton = "";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "code-button";
    button.dataset.action = "copy-code";
    button.textContent = "Code to clipboard";
    pre.before(button);
  }
}

function footnoteText(model, final, usage) {
  const parts = [model];
  if (final.ttft_ms !== null && final.ttft_ms !== undefined) {
    parts.push(`${(final.ttft_ms / 1000).toFixed(2)} s to first token`);
  }
  const writingMs = (final.duration_ms || 0) - (final.ttft_ms || 0);
  if (usage?.completion_tokens && writingMs > 0) {
    parts.push(`${((usage.completion_tokens / writingMs) * 1000).toFixed(1)} tokens/s`);
  }
  return parts.filter(Boolean).join(" · ");
}

// What a screen reader hears at the end of an answer.
const ENDINGS = {
  complete: "Answer finished.",
  stopped: "Answer stopped.",
  interrupted: "Answer interrupted.",
  error: "Answer failed.",
};

const announcer = document.getElementById("announcer");

// Hands an answer to screen readers a sentence or a paragraph at a time, through a polite
// live region, instead of token by token. Markdown punctuation and code are not read out.
class Speaker {
  constructor(alreadySaid) {
    this.said = alreadySaid; // length of the answer already announced (or shown before)
  }

  heard(markdown, ended) {
    const fresh = markdown.slice(this.said);
    // The last sentence end (., !, ? or … before a space) or paragraph break in the text.
    let cut = ended ? fresh.length : -1;
    if (!ended) {
      for (const match of fresh.matchAll(/[.!?…](?=\s)|\n\s*\n/g)) {
        cut = match.index + match[0].length;
      }
    }
    // Inside an unfinished code block: wait, and say "Code block" once it is closed.
    const fences = markdown.slice(0, this.said + cut).split("```").length - 1;
    if (!ended && fences % 2 === 1) cut = fresh.lastIndexOf("```", cut);
    if (cut <= 0) return;
    this.said += cut;
    const speech = speakable(fresh.slice(0, cut));
    if (speech) this.say(speech);
  }

  say(text) {
    if (!announcer) return;
    const line = document.createElement("p");
    line.textContent = text;
    announcer.append(line);
    // Keep the region short: what was read needs no keeping.
    while (announcer.childElementCount > 20) announcer.firstElementChild.remove();
  }
}

function speakable(markdown) {
  return markdown
    .replace(/```[\s\S]*?(```|$)/g, " Code block. ")
    .replace(/^\s*\|?[\s:|-]+\|[\s:|-]*$/gm, " ")
    .replace(/[#*_`>|~]+/g, " ")
    .replace(/\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/\s+/g, " ")
    .trim();
}

// --- Versions ------------------------------------------------------------------------
// The server knows the tree of versions; the page shows its current branch. After an
// edit, a regenerate or a version switch the page fetches that branch again as HTML (the
// template's `transcript` partial) instead of patching the transcript itself.

async function refreshTranscript() {
  const response = await fetch(`/c/${app.dataset.conversationId}/transcript`, {
    credentials: "same-origin",
    headers: { Accept: "text/html" },
  });
  if (response.redirected) throw new Error("Signed out: reload the page to sign in again.");
  if (!response.ok) throw new Error(`The server answered ${response.status}.`);
  const html = await response.text();
  // Server-rendered: user text escaped, model text sanitized, each inside `hx-disable`.
  transcript.innerHTML = html;
  addCodeButtons(transcript);
  for (const follower of [...followers.values()]) {
    if (!follower.article.isConnected) follower.close();
  }
  followStreaming();
}

// Follows every answer on the page that is still being written and not followed yet.
function followStreaming() {
  for (const article of transcript.querySelectorAll("article[data-stream-url]")) {
    if (!followers.has(article.dataset.messageId)) new Follower(article);
  }
}

// Set while a version change is on its way, so that a double click makes one version.
let changing = false;

// Runs a version change (a POST), then shows the resulting branch. False when it failed.
async function changeVersions(url, body) {
  if (changing || refuseWhileStreaming()) return false;
  changing = true;
  showNotice("");
  try {
    await api("POST", url, body);
    await refreshTranscript();
    return true;
  } catch (error) {
    const wait = error.retryAfter ? ` (try again in ${error.retryAfter} s)` : "";
    showNotice(error.message + wait);
    return false;
  } finally {
    changing = false;
  }
}

// After an edit or a regenerate: the new answer streams at the end; back to the composer.
function showNewAnswer() {
  transcript.lastElementChild?.scrollIntoView({ block: "end" });
  input.focus();
  document.body.dispatchEvent(new CustomEvent("chat:refresh-sidebar"));
}

function openEditor(article) {
  if (article.querySelector(".editor")) return;
  const form = document.createElement("form");
  form.className = "editor";
  const area = document.createElement("textarea");
  area.setAttribute("aria-label", "Edit message");
  area.required = true;
  area.maxLength = input.maxLength;
  area.rows = 3;
  area.value = article.dataset.markdown;
  const buttons = document.createElement("div");
  buttons.className = "editor__buttons";
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "primary";
  save.textContent = "Save and send";
  buttons.append(save, actionButton("Cancel", "cancel-edit"));
  form.append(area, buttons);
  article.classList.add("message--editing");
  article.append(form);
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}

function closeEditor(article) {
  article.querySelector(".editor")?.remove();
  article.classList.remove("message--editing");
  article.querySelector("[data-action=edit]")?.focus();
}

async function saveEdit(article, form) {
  const content = form.querySelector("textarea").value;
  const save = form.querySelector("[type=submit]");
  if (!content.trim() || save.disabled) return;
  save.disabled = true;
  const url = `/api/messages/${article.dataset.messageId}/edit`;
  if (await changeVersions(url, { content })) showNewAnswer();
  else save.disabled = false; // the editor stays, with the text, to try again
}

async function regenerate(article) {
  const url = `/api/messages/${article.dataset.messageId}/regenerate`;
  if (await changeVersions(url)) showNewAnswer();
}

async function showVersion(button) {
  const { target, direction } = button.dataset;
  if (!(await changeVersions(`/api/messages/${target}/select`))) return;
  // The clicked button was replaced: focus its successor, or its partner at either end.
  const group = transcript.querySelector(`article[data-message-id="${target}"] .versions`);
  const again = group?.querySelector(`[data-direction=${direction}]`);
  (again && !again.disabled ? again : group?.querySelector("button:enabled"))?.focus();
}

// Puts `text` on the clipboard and says so on the button for a moment.
async function copy(button, text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = label), 1500);
}

function autoGrow() {
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
}

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
input.addEventListener("input", autoGrow);
stopButton.addEventListener("click", stopAll);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && followers.size) {
    event.preventDefault();
    stopAll();
  }
});
transcript.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button || button.disabled) return;
  const article = button.closest(".message");
  const action = button.dataset.action;
  if (action === "copy") copy(button, article.dataset.markdown || "");
  else if (action === "copy-code") copy(button, button.nextElementSibling?.textContent || "");
  else if (action === "edit") openEditor(article);
  else if (action === "cancel-edit") closeEditor(article);
  else if (action === "regenerate") regenerate(article);
  else if (action === "version") showVersion(button);
});
transcript.addEventListener("submit", (event) => {
  const form = event.target.closest(".editor");
  if (!form) return;
  event.preventDefault();
  saveEdit(form.closest(".message"), form);
});
transcript.addEventListener("keydown", (event) => {
  const form = event.target.closest(".editor");
  if (!form) return;
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  } else if (event.key === "Escape" && !followers.size) {
    // One Escape does one thing. While an answer streams it is Stop, as everywhere on the
    // page (the document's handler), and the editor stays open so that the edit can be
    // sent once the answer has stopped; otherwise it cancels the editor.
    event.preventDefault();
    closeEditor(form.closest(".message"));
  }
});
const transportSelect = document.getElementById("transport");
transportSelect?.addEventListener("change", async () => {
  try {
    const saved = await api("PATCH", "/api/settings", { transport: transportSelect.value });
    app.dataset.transport = saved.transport; // answers from now on; those streaming go on
    if (saved.transport === "ws") pageSocket();
    // A `?transport=` in the address would override the choice on the next load.
    const url = new URL(location.href);
    url.searchParams.delete("transport");
    history.replaceState(null, "", url);
  } catch (error) {
    showNotice(error.message);
  }
});
// The system prompt of this conversation; a new chat sends it when it is created.
const systemPrompt = document.getElementById("system-prompt");
const systemPromptStatus = document.getElementById("system-prompt-status");
document.getElementById("system-prompt-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = app.dataset.conversationId;
  try {
    if (id) await api("PATCH", `/api/conversations/${id}`, { system_prompt: systemPrompt.value });
    systemPromptStatus.textContent = id ? "Saved." : "Saved for this new chat.";
  } catch (error) {
    systemPromptStatus.textContent = error.message;
  }
});
systemPrompt.addEventListener("input", () => (systemPromptStatus.textContent = ""));

modelSelect?.addEventListener("change", async () => {
  const id = app.dataset.conversationId;
  if (!id) return;
  try {
    await api("PATCH", `/api/conversations/${id}`, { model: modelSelect.value });
  } catch (error) {
    showNotice(error.message);
  }
});
// A new chat gets its title from its first message, on the server: once the refreshed
// sidebar marks the current conversation, show that title in the header and the tab.
const chatTitle = document.querySelector(".chat__title");
document.body.addEventListener("htmx:afterSettle", () => {
  const current = document.querySelector("#sidebar a[aria-current=page]");
  if (!current || !chatTitle || chatTitle.textContent === current.textContent) return;
  chatTitle.textContent = current.textContent;
  document.title = `${current.textContent} · Chat`;
});
const menuToggle = document.querySelector(".menu-toggle");
function setSidebarOpen(open) {
  app.classList.toggle("sidebar-open", open);
  menuToggle?.setAttribute("aria-expanded", String(open));
}
menuToggle?.addEventListener("click", () =>
  setSidebarOpen(!app.classList.contains("sidebar-open")),
);
// On a small screen the open sidebar covers the Menu button: a click beside it (on the
// dimmed page, which it must not activate) or Escape closes it.
document.addEventListener(
  "click",
  (event) => {
    if (!app.classList.contains("sidebar-open") || event.target.closest(".sidebar")) return;
    if (getComputedStyle(menuToggle).display === "none") return; // wide screen: no overlay
    event.preventDefault();
    event.stopPropagation();
    setSidebarOpen(false);
    menuToggle.focus();
  },
  true,
);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && app.classList.contains("sidebar-open")) {
    setSidebarOpen(false);
    menuToggle?.focus();
  }
});

// Over the WebSocket, connect now, so that the first Send does not wait for it.
if (currentTransport() === "ws") pageSocket();
// Answers still being written when the page loaded (a reload mid-answer): follow them
// from where the server-rendered text ends.
followStreaming();
addCodeButtons(transcript);
transcript.lastElementChild?.scrollIntoView({ block: "end" });
sendButton.disabled = false; // rendered disabled until this script can send
input.focus();
