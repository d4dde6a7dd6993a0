// The open conversation's own controls: Rename (inline, in the header), Delete (after a
// confirmation dialog) and the Export links. The conversation list and its search are
// htmx (see the template's sidebar); this module only keeps the list fresh after a change.

const app = document.querySelector(".app");
const heading = document.querySelector(".chat__title");
const actions = document.getElementById("conversation-actions");
const renameForm = document.getElementById("rename-form");
const titleInput = document.getElementById("title-input");
const deleteDialog = document.getElementById("delete-dialog");
const dialogError = deleteDialog.querySelector(".dialog__error");
const exportMenu = actions.querySelector(".export-menu");
const stopButton = document.getElementById("stop-button");
const notice = document.getElementById("notice");

const csrfToken = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"];

function conversationId() {
  return app.dataset.conversationId || "";
}

// PATCH or DELETE the open conversation through the JSON API.
async function changeConversation(method, body) {
  const response = await fetch(`/api/conversations/${conversationId()}`, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(data?.error?.message || `The server answered ${response.status}.`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function refreshSidebar() {
  document.body.dispatchEvent(new CustomEvent("chat:refresh-sidebar"));
}

// A new chat gets its conversation with its first message (chat.js then sets the id):
// from then on it can be renamed, deleted and exported.
function showActions() {
  const id = conversationId();
  actions.hidden = !id || !renameForm.hidden;
  for (const link of actions.querySelectorAll("a[data-format]")) {
    if (id) link.href = `/c/${id}/export.${link.dataset.format}`;
  }
}
new MutationObserver(showActions).observe(app, {
  attributes: true,
  attributeFilter: ["data-conversation-id"],
});

// --- Rename ----------------------------------------------------------------------------

function startRename() {
  titleInput.value = heading.textContent.trim();
  heading.hidden = true;
  renameForm.hidden = false;
  showActions();
  titleInput.focus();
  titleInput.select();
}

function endRename() {
  renameForm.hidden = true;
  heading.hidden = false;
  showActions();
  actions.querySelector("[data-action=rename]").focus();
}

renameForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const title = titleInput.value.trim();
  const save = renameForm.querySelector("[type=submit]");
  if (!title || save.disabled) return;
  save.disabled = true;
  try {
    const conversation = await changeConversation("PATCH", { title });
    heading.textContent = conversation.title;
    document.title = `${conversation.title} · Chat`;
    notice.hidden = true;
    endRename();
    refreshSidebar();
  } catch (error) {
    // The form stays open with the text, to try again.
    notice.textContent = error.message;
    notice.hidden = false;
  } finally {
    save.disabled = false;
  }
});

renameForm.addEventListener("click", (event) => {
  if (event.target.closest("[data-action=cancel-rename]")) endRename();
});

renameForm.addEventListener("keydown", (event) => {
  // One Escape does one thing: while an answer is being written it is Stop (chat.js),
  // and the form stays open; otherwise it cancels the rename.
  if (event.key !== "Escape" || !stopButton.hidden) return;
  event.preventDefault();
  event.stopPropagation();
  endRename();
});

// --- Delete ----------------------------------------------------------------------------

function askDelete() {
  deleteDialog.querySelector("[data-role=title]").textContent = heading.textContent.trim();
  dialogError.hidden = true;
  deleteDialog.querySelector("[data-action=confirm-delete]").disabled = false;
  exportMenu.open = false;
  deleteDialog.showModal();
}

async function confirmDelete(button) {
  button.disabled = true;
  try {
    await changeConversation("DELETE");
  } catch (error) {
    if (error.status !== 404) {
      // Deleted already (in another tab) is deleted; anything else is said in the dialog.
      dialogError.textContent = error.message;
      dialogError.hidden = false;
      button.disabled = false;
      return;
    }
  }
  location.assign("/");
}

deleteDialog.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button?.dataset.action === "cancel-delete") deleteDialog.close();
  else if (button?.dataset.action === "confirm-delete") confirmDelete(button);
});

deleteDialog.addEventListener("keydown", (event) => {
  // The browser closes the dialog on Escape; that Escape must not also stop an answer.
  if (event.key === "Escape") event.stopPropagation();
});

deleteDialog.addEventListener("close", () => {
  if (!actions.hidden) actions.querySelector("[data-action=delete]").focus();
});

// --- The header's buttons and the Export menu ------------------------------------------

actions.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (button?.dataset.action === "rename") startRename();
  else if (button?.dataset.action === "delete") askDelete();
  else if (event.target.closest("a[data-format]")) exportMenu.open = false;
});

exportMenu.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || !exportMenu.open || !stopButton.hidden) return;
  event.stopPropagation();
  exportMenu.open = false;
  exportMenu.querySelector("summary").focus();
});
