/* waconnect: shared helpers for the live pages (no framework, no build step).
 *
 * waconnect.liveSocket(path, handlers) keeps one WebSocket open: it reconnects
 * with backoff (0.5 s doubling to 10 s) after any unexpected close, pings every
 * 25 s (each ping makes the server re-check the user), sends users who are not
 * (or no longer) logged in to the login page (close code 4401) and gives up on
 * 4403 (no staff status or permission to see sessions) and 4404 (session gone).
 * Other closes (4413: a message too big) reconnect. See sessions_app/consumers.py.
 * It can send (JSON) and be handed to other handlers and a new path (retarget).
 * waconnect.enhanceActionForms(root) posts the action forms with fetch.
 */
(function () {
  "use strict";

  const waconnect = (window.waconnect = window.waconnect || {});

  /** Wall-clock milliseconds, with sub-millisecond resolution. */
  waconnect.now = function () {
    return performance.timeOrigin + performance.now();
  };

  const CLOSE_UNAUTHENTICATED = 4401;
  const CLOSE_FORBIDDEN = 4403;
  const CLOSE_NOT_FOUND = 4404;
  const BACKOFF_FIRST = 500;
  const BACKOFF_MAX = 10000;
  const PING_EVERY = 25000;

  function loginPath() {
    return (document.body && document.body.dataset.loginUrl) || "/accounts/login/";
  }

  waconnect.loginUrl = function () {
    // Encoded like Django's own redirect: slashes stay readable.
    const next = encodeURIComponent(location.pathname + location.search).replace(/%2F/g, "/");
    return loginPath() + "?next=" + next;
  };

  /**
   * handlers.onMessage(msg, receivedAt)  every message except pongs (receivedAt: wall-clock ms)
   * handlers.onStatus(bool)  true once the first message arrived, false when the socket dropped
   * handlers.onFatal(code)   4403 / 4404: the socket will not reconnect
   */
  waconnect.liveSocket = function (path, handlers) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = scheme + "//" + location.host + path;
    let ws = null;
    let delay = BACKOFF_FIRST;
    let retryTimer = null;
    let pingTimer = null;
    let stopped = false;
    let online = null;

    function setOnline(value) {
      if (online === value) return;
      online = value;
      if (handlers.onStatus) handlers.onStatus(value);
    }

    function connect() {
      retryTimer = null;
      let socket;
      try {
        socket = new WebSocket(url);
      } catch (err) {
        scheduleReconnect();
        return;
      }
      ws = socket;
      socket.onmessage = function (event) {
        if (socket !== ws) return;
        const receivedAt = waconnect.now();
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch (err) {
          return;
        }
        // Only a message proves the server accepted us (it accepts, then closes
        // with 4401/4403/4404 when it refuses), so reset the backoff here.
        delay = BACKOFF_FIRST;
        setOnline(true);
        if (msg && msg.type !== "pong" && handlers.onMessage) handlers.onMessage(msg, receivedAt);
      };
      socket.onopen = function () {
        clearInterval(pingTimer);
        pingTimer = setInterval(function () {
          if (socket.readyState === WebSocket.OPEN) socket.send('{"type":"ping"}');
        }, PING_EVERY);
      };
      socket.onclose = function (event) {
        if (socket !== ws) return;
        ws = null;
        clearInterval(pingTimer);
        pingTimer = null;
        if (stopped) return;
        if (event.code === CLOSE_UNAUTHENTICATED) {
          stopped = true;
          location.assign(waconnect.loginUrl());
          return;
        }
        if (event.code === CLOSE_FORBIDDEN || event.code === CLOSE_NOT_FOUND) {
          stopped = true;
          setOnline(false);
          if (handlers.onFatal) handlers.onFatal(event.code);
          return;
        }
        setOnline(false);
        scheduleReconnect();
      };
    }

    function scheduleReconnect() {
      if (stopped || retryTimer !== null) return;
      retryTimer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, BACKOFF_MAX);
    }

    // Leaving the page closes the socket on purpose: don't flash "offline".
    window.addEventListener("pagehide", function () {
      stopped = true;
      clearTimeout(retryTimer);
      if (ws) ws.close(1000);
    });
    // Back/forward cache restored the page: its socket is gone, start again.
    window.addEventListener("pageshow", function (event) {
      if (event.persisted && stopped) {
        stopped = false;
        delay = BACKOFF_FIRST;
        connect();
      }
    });

    connect();
    return {
      stop: function () {
        stopped = true;
        clearTimeout(retryTimer);
        clearInterval(pingTimer);
        if (ws) ws.close(1000);
        ws = null;
      },
      /** Send msg as JSON now; false when the socket is not open. */
      send: function (msg) {
        if (!ws || ws.readyState !== WebSocket.OPEN) return false;
        ws.send(JSON.stringify(msg));
        return true;
      },
      /**
       * Hand the open socket to other handlers (the create page's socket becomes
       * the new session's: sessions_app.consumers.SessionCreateConsumer); after a
       * drop it reconnects to newPath. The new handlers learn the current status.
       */
      retarget: function (newPath, newHandlers) {
        url = scheme + "//" + location.host + newPath;
        handlers = newHandlers;
        if (online !== null && handlers.onStatus) handlers.onStatus(online);
      },
    };
  };

  /** Reflect the socket state in a #socket-status element. */
  waconnect.showSocketStatus = function (el, online, text) {
    if (!el) return;
    el.dataset.online = online ? "true" : "false";
    const label = el.querySelector(".socket-status-text") || el;
    label.textContent = text || (online ? "live" : "offline — reconnecting…");
    el.title = online ? "Live: changes appear as they happen." : "The live connection dropped; reconnecting.";
  };

  let toastTimer = null;
  /** A short message at the bottom of the page (kind: "ok" | "error"), for messages
   * that belong to no form; an action's answer goes to its form's feedback line. */
  waconnect.toast = function (message, kind) {
    const el = document.getElementById("toast");
    if (!el || !message) return;
    el.textContent = message;
    el.dataset.kind = kind || "ok";
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () {
      el.hidden = true;
    }, kind === "error" ? 6000 : 3000);
  };

  /**
   * An action's answer, shown in the feedback line under its buttons: a line kept
   * free for it in the page's flow, so it never covers a button (a floating toast
   * covered the Simulated-phone buttons) and nothing moves when it appears.
   */
  waconnect.feedback = function (form, message, kind) {
    const card = form.closest(".card");
    const slot = form.querySelector("[data-feedback]") || (card && card.querySelector("[data-feedback]"));
    if (!slot) {
      waconnect.toast(message, kind);
      return;
    }
    if (!message) return;
    slot.textContent = message;
    slot.dataset.kind = kind || "ok";
    clearTimeout(slot._timer);
    slot._timer = setTimeout(function () {
      slot.textContent = "";
      delete slot.dataset.kind;
    }, kind === "error" ? 8000 : 4000);
  };

  /**
   * Post every <form data-action-form> under root with fetch instead of a page load.
   * The answer is {ok, message, redirect} (or {ok: false, error} with a 4xx status);
   * the new state arrives over the socket.
   */
  /** POST a form with fetch, asking for JSON, with its CSRF token (one place for both
   * the action buttons and the create form). */
  waconnect.postForm = function (form, url) {
    const token = form.elements.csrfmiddlewaretoken ? form.elements.csrfmiddlewaretoken.value : "";
    return fetch(url || form.action || location.href, {
      method: "POST",
      body: new FormData(form),
      headers: { "X-CSRFToken": token, Accept: "application/json" },
      credentials: "same-origin",
    });
  };

  waconnect.enhanceActionForms = function (root, options) {
    const opts = options || {};
    root.addEventListener("submit", function (event) {
      const form = event.target.closest("form[data-action-form]");
      if (!form) return;
      event.preventDefault();
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
      const button = form.querySelector("button");
      if (button) button.disabled = true;
      waconnect.postForm(form)
        .then(function (response) {
          const type = response.headers.get("Content-Type") || "";
          if (type.indexOf("application/json") !== -1) {
            return response.json().then(function (data) {
              if (!response.ok || data.ok === false) {
                waconnect.feedback(form, data.error || data.message || "HTTP " + response.status, "error");
                return;
              }
              if (opts.onResult) opts.onResult(form.dataset.action, data);
              if (form.dataset.action === "delete" && data.redirect) {
                location.assign(data.redirect);
                return;
              }
              waconnect.feedback(form, data.message, "ok");
            });
          }
          if (response.redirected && response.url.indexOf(loginPath()) !== -1) {
            location.assign(waconnect.loginUrl()); // the login session expired
            return;
          }
          const reason = response.status === 404 ? "the session no longer exists" : "HTTP " + response.status;
          const what = button ? button.textContent.trim().toLowerCase() : "do that";
          waconnect.feedback(form, "Could not " + what + ": " + reason + ".", "error");
        })
        .catch(function () {
          waconnect.feedback(form, "Network error: the request did not reach the server.", "error");
        })
        .finally(function () {
          // A session being deleted (or gone) keeps its buttons disabled.
          const frozen = root.classList.contains("is-deleting") || root.classList.contains("is-gone");
          if (button) button.disabled = frozen;
        });
    });
  };

  /** "12:34:56" in the browser's time zone; the full date in the tooltip.
   *
   * One Intl.DateTimeFormat each, made once: toLocaleTimeString / toLocaleString
   * with options build a new formatter on every call (~0.15 ms each in Chromium;
   * two per row of the events table, each time it is drawn). The options are
   * those toLocaleString fills in for "all" (ECMA-402 ToDateTimeOptions), so the
   * text is the same (tests/e2e/test_time_format.py). */
  const timeFormat = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  const dateTimeFormat = new Intl.DateTimeFormat([], {
    year: "numeric", month: "numeric", day: "numeric",
    hour: "numeric", minute: "numeric", second: "numeric", hour12: false,
  });
  // format() throws on an invalid date, where toLocale*String said "Invalid Date".
  function formatWith(format) {
    return function (ms) {
      const date = new Date(ms);
      return isNaN(date) ? String(date) : format.format(date);
    };
  }
  waconnect.formatTime = formatWith(timeFormat);
  waconnect.formatDateTime = formatWith(dateTimeFormat);
})();
