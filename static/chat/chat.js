// The stream client: send a message, follow its answer (over SSE or the WebSocket), stop it,
// copy it.
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

async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
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
  stopButton.hidden = !streaming;
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
    const url = after === null ? follower.url : `${follower.url}?after=${after}`;
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
    if (follower.lastId !== null) frame.after = follower.lastId;
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
// fast stream costs one layout per frame, not one per token.
class Follower {
  constructor(article, { transport = currentTransport(), subscribed = false } = {}) {
    this.article = article;
    this.id = article.dataset.messageId;
    this.url = article.dataset.streamUrl;
    this.lastId = article.dataset.after ? Number(article.dataset.after) : null;
    this.body = article.querySelector(".message__body");
    this.status = article.querySelector("[data-role=status]");
    this.copyButton = article.querySelector("[data-action=copy]");
    this.text = this.body.querySelector(".stream-text");
    if (!this.text) {
      this.body.replaceChildren();
      this.text = document.createElement("div");
      this.text.className = "stream-text";
      this.body.append(this.text);
    }
    this.markdown = this.text.textContent;
    this.pending = "";
    this.frame = 0;
    this.finished = false;
    followers.set(this.id, this);
    updateStopButton();
    this.source =
      transport === "ws" ? pageSocket().follow(this, subscribed) : new EventSourceStream(this);
  }

  // One event of the stream (CONTRACT §5); unknown names are ignored.
  handle(name, id, data) {
    if (this.finished) return;
    if (id !== null && id !== undefined) this.lastId = id;
    if (name === "token") this.append(data.text);
    else if (name === "reset") this.reset(data.content);
    else if (name === "usage") this.usage = data;
    else if (name === "error") this.error = data;
    else if (name === "final") this.finish(data);
  }

  append(text) {
    this.markdown += text;
    this.pending += text;
    this.status.replaceChildren();
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    if (this.pending) {
      this.text.append(this.pending);
      this.pending = "";
    }
  }

  reset(content) {
    this.markdown = content;
    this.pending = "";
    this.text.textContent = content;
  }

  finish(data) {
    this.finished = true;
    this.source?.close();
    cancelAnimationFrame(this.frame);
    this.markdown = data.content;
    if (data.html !== null) {
      this.body.innerHTML = data.html; // sanitized by the server; hx-disable on the body
    } else {
      this.text.textContent = data.content;
    }
    this.article.dataset.status = data.status;
    this.article.dataset.markdown = data.content;
    this.article.setAttribute("aria-busy", "false");
    const labels = { stopped: "Stopped", interrupted: "Interrupted", error: "Error" };
    let label = labels[data.status] || "";
    if (data.status === "error" && this.error?.message) label = `Error: ${this.error.message}`;
    this.status.textContent = label;
    this.copyButton.disabled = false;
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

function messageArticle(message, role) {
  const article = document.createElement("article");
  article.className = `message message--${role}`;
  article.dataset.messageId = message.id;
  article.dataset.status = message.status;
  article.dataset.markdown = message.content;
  article.setAttribute("aria-label", role === "user" ? "You" : "Assistant");
  const roleLabel = document.createElement("div");
  roleLabel.className = "message__role";
  roleLabel.setAttribute("aria-hidden", "true");
  roleLabel.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "message__body";
  body.setAttribute("hx-disable", "");
  article.append(roleLabel, body);
  if (role === "user") {
    const paragraph = document.createElement("p");
    paragraph.className = "plain";
    paragraph.textContent = message.content;
    body.append(paragraph);
    article.setAttribute("aria-busy", "false");
  } else {
    article.setAttribute("aria-busy", "true");
    const status = document.createElement("p");
    status.className = "message__status";
    status.dataset.role = "status";
    status.innerHTML = '<span class="thinking">Thinking…</span>';
    const actions = document.createElement("div");
    actions.className = "message__actions";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.dataset.action = "copy";
    copy.disabled = true;
    copy.textContent = "Copy";
    actions.append(copy);
    article.append(status, actions);
  }
  return article;
}

async function ensureConversation() {
  if (app.dataset.conversationId) return app.dataset.conversationId;
  const conversation = await api("POST", "/api/conversations", { model: modelSelect?.value });
  app.dataset.conversationId = conversation.id;
  history.replaceState(null, "", `/c/${conversation.id}/${location.search}`);
  return conversation.id;
}

async function send() {
  const content = input.value;
  if (!content.trim() || sendButton.disabled) return;
  if (followers.size) {
    showNotice("Wait for the answer to finish, or stop it first.");
    return;
  }
  sendButton.disabled = true;
  showNotice("");
  const transport = currentTransport();
  try {
    const conversationId = await ensureConversation();
    const fields = { content, model: modelSelect?.value };
    // Over the WebSocket the answer's events follow `accepted` on the same socket, so the
    // Follower must exist before the next frame is read: no `await` between the two.
    const result =
      transport === "ws"
        ? await pageSocket().request({ type: "send", conversation_id: conversationId, ...fields })
        : await api("POST", `/api/conversations/${conversationId}/messages`, fields);
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

async function copy(button) {
  const article = button.closest(".message");
  const text = article.dataset.markdown || "";
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
  const button = event.target.closest("[data-action=copy]");
  if (button && !button.disabled) copy(button);
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
for (const article of transcript.querySelectorAll("article[data-stream-url]")) {
  new Follower(article);
}
transcript.lastElementChild?.scrollIntoView({ block: "end" });
input.focus();
