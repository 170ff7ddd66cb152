/* waconnect: the detail page's Messages panel, kept live over the session's socket.
 *
 * waconnect.messagesPanel(root) takes over #messages-panel under root (rendered
 * server-side by templates/sessions_app/_messages.html) and returns
 * {onMessage(msg)}; session.js hands it the socket's messages:
 *
 *   {"type": "snapshot", ..., "messages": [item, ...]}  each (re)connect: the last ones
 *   {"type": "message", "message": item}                one message, new or changed
 *
 * An item is sessions_app/messages_panel.py's panel_item(): {ref, direction ("in" |
 * "out"), status, status_label, tick, reason, kind, peer, text, at (ms), version}.
 * An item older (by version) than the one shown is dropped, so a push racing the
 * reconnect's list cannot move a tick backwards. At most data-shown items are kept,
 * newest first. Texts are set with textContent: a message is never markup.
 *
 * The send form (only there for users with the change permission) posts with
 * fetch; the answer {ok, message, item} shows the new message at once, queued.
 */
(function () {
  "use strict";

  const waconnect = (window.waconnect = window.waconnect || {});

  waconnect.messagesPanel = function (root) {
    const panel = root.querySelector("#messages-panel");
    if (!panel) return null;
    const list = panel.querySelector("#messages");
    const empty = panel.querySelector("#messages-empty");
    const form = panel.querySelector("#message-form");
    const shown = Number(panel.dataset.shown) || 20;

    // -- rendering ----------------------------------------------------------------------

    function setText(node, text) {
      if (node.textContent !== text) node.textContent = text;
    }

    function formatTimes(scope) {
      for (const time of scope.querySelectorAll("time[data-ms]")) {
        const ms = Number(time.dataset.ms);
        if (!ms) continue;
        time.dateTime = new Date(ms).toISOString();
        time.textContent = waconnect.formatTime(ms);
        time.title = waconnect.formatDateTime(ms);
      }
    }

    function element(tag, className, text) {
      const node = document.createElement(tag);
      if (className) node.className = className;
      if (text !== undefined) node.textContent = text;
      return node;
    }

    function build(item) {
      const li = element("li");
      const head = element("div", "msg-head");
      head.appendChild(element("span", "msg-peer"));
      const time = element("time", "msg-time mono small");
      head.appendChild(time);
      li.appendChild(head);
      li.appendChild(element("p", "msg-text"));
      if (item.direction === "out") {
        const status = element("p", "msg-status");
        status.appendChild(element("span", "msg-tick"));
        status.appendChild(element("span", "msg-reason"));
        li.appendChild(status);
      }
      fill(li, item);
      return li;
    }

    /** Write item into li (built by build() or by the template). */
    function fill(li, item) {
      li.className = "msg msg-" + item.direction;
      li.dataset.ref = item.ref;
      li.dataset.status = item.status;
      li.dataset.version = String(item.version);
      li.dataset.at = String(item.at);
      setText(li.querySelector(".msg-peer"), (item.direction === "out" ? "To " : "From ") + item.peer);
      const time = li.querySelector(".msg-time");
      time.dataset.ms = String(item.at);
      const text = li.querySelector(".msg-text");
      const kind = item.kind && item.kind !== "text" ? item.kind : "";
      const shownKind = text.querySelector(".msg-kind");
      if (kind || shownKind) {
        text.replaceChildren();
        if (kind) {
          text.appendChild(element("span", "msg-kind", kind));
          text.appendChild(document.createTextNode(" "));
        }
        text.appendChild(document.createTextNode(item.text));
      } else {
        setText(text, item.text);
      }
      const tick = li.querySelector(".msg-tick");
      if (tick) {
        tick.dataset.status = item.status;
        tick.title = item.status_label;
        tick.setAttribute("aria-label", item.status_label);
        setText(tick, item.tick);
        setText(li.querySelector(".msg-reason"), item.reason || "");
      }
      formatTimes(li);
    }

    function byRef(ref) {
      for (const li of list.children) if (li.dataset.ref === ref) return li;
      return null;
    }

    /** Insert or update one item; older versions of a shown message are dropped. */
    function upsert(item) {
      if (!item || typeof item.ref !== "string") return;
      const li = byRef(item.ref);
      if (li) {
        if (Number(li.dataset.version) > Number(item.version)) return;
        fill(li, item);
        return;
      }
      const node = build(item);
      node.classList.add("is-new");
      // Newest first, by time written; a later push of an older message goes below.
      let before = null;
      for (const other of list.children) {
        if (Number(other.dataset.at) <= Number(item.at)) {
          before = other;
          break;
        }
      }
      list.insertBefore(node, before);
      while (list.children.length > shown) list.removeChild(list.lastElementChild);
    }

    function refreshEmpty() {
      empty.hidden = list.children.length > 0;
    }

    function onMessage(msg) {
      if (Array.isArray(msg.messages)) {
        // Oldest first so each lands on top of the one before it.
        const items = msg.messages.slice().sort(function (a, b) { return a.at - b.at; });
        for (const item of items) upsert(item);
      } else if (msg.type === "message" && msg.message) {
        upsert(msg.message);
      }
      refreshEmpty();
    }

    // -- the send form --------------------------------------------------------------------

    if (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        const button = form.querySelector("button");
        if (button) button.disabled = true;
        waconnect.postForm(form)
          .then(function (response) {
            const type = response.headers.get("Content-Type") || "";
            if (type.indexOf("application/json") === -1) {
              const login = document.body.dataset.loginUrl || "/accounts/login/";
              if (response.redirected && response.url.indexOf(login) !== -1) {
                location.assign(waconnect.loginUrl());
                return;
              }
              waconnect.feedback(form, "Could not send: HTTP " + response.status + ".", "error");
              return;
            }
            return response.json().then(function (data) {
              if (!response.ok || data.ok === false) {
                waconnect.feedback(form, data.error || "HTTP " + response.status, "error");
                return;
              }
              if (data.item) upsert(data.item);
              refreshEmpty();
              form.elements.text.value = "";
              waconnect.feedback(form, data.message, "ok");
            });
          })
          .catch(function () {
            waconnect.feedback(form, "Network error: the message did not reach the server.", "error");
          })
          .finally(function () {
            const frozen = root.classList.contains("is-deleting") || root.classList.contains("is-gone");
            if (button) button.disabled = frozen;
          });
      });
    }

    formatTimes(list);
    refreshEmpty();
    return { onMessage: onMessage };
  };
})();
