/* waconnect: the session detail page, kept live over /ws/sessions/<pk>/.
 *
 * waconnect.sessionPage(wsPath, adopt, onQueued) opens the session's socket at
 * once (or adopts `adopt`, an open waconnect.liveSocket already subscribed to the
 * session) and returns {mount, stop}; messages that arrive before mount() wait in
 * a queue, and each is also handed to `onQueued(msg)` if given (the create page
 * waits on them for the first code). mount() takes over the detail markup
 * (#detail, #session-snapshot, ...) that is in the document at that moment and
 * renders every snapshot into it, the queued ones first.
 *
 * On the detail page this script is loaded in <head>: the socket opens while the
 * page is still being parsed (its path comes from <meta name="waconnect-ws">) and
 * mount() runs at DOMContentLoaded. The create page (create.js) calls it as soon
 * as the session exists, then puts the detail page's markup into its <main> and
 * mounts. The page itself is rendered server-side from the same snapshot the
 * socket sends, so the QR code shows even without it (segno's SVG, drawn by the
 * server). Snapshots carry the code's text (qr_code); this script draws it with
 * waconnect.qrSvg (qr.mjs, a module that runs before DOMContentLoaded). Each
 * snapshot updates only what changed; a new QR code is one innerHTML swap of #qr.
 *
 * The Messages panel (messages.js), when the page has one, gets the messages the
 * first snapshot of each connection carries and every "message" push.
 *
 * window.waconnectMetrics (read by benchmarks/bench_qr_latency.py):
 *   firstQrShownAt   wall-clock ms when the first QR code was on screen
 *   firstQrIssuedAt  that code's qr_issued_at (server wall clock, ms)
 *   firstQrFrom      "page" (rendered server-side) or "socket"
 *   firstMessageAt   when the socket delivered its first message
 *   swaps            [{issuedAt, shownAt, receivedAt}] for every later QR code
 *                    (receivedAt: when its socket message arrived)
 */
(function () {
  "use strict";

  const waconnect = window.waconnect;
  const metrics = (window.waconnectMetrics = window.waconnectMetrics || { firstQrShownAt: null, swaps: [] });
  metrics.firstQrFrom = null;
  metrics.firstMessageAt = null;

  waconnect.sessionPage = function (wsPath, adopt, onQueued) {
    // -- the socket, opened at once; its callbacks wait for the DOM -------------------------

    let ready = false;
    const early = []; // [handler, args] received before DOMContentLoaded
    function whenReady(handler) {
      return function () {
        if (ready) handler.apply(null, arguments);
        else early.push([handler, arguments]);
      };
    }
    const handlers = {
      onMessage: function (msg, receivedAt) {
        if (ready) {
          onMessage(msg, receivedAt);
          return;
        }
        early.push([onMessage, [msg, receivedAt]]);
        if (onQueued) onQueued(msg);
      },
      onStatus: whenReady(function (online) {
        waconnect.showSocketStatus(el.status, online);
      }),
      onFatal: whenReady(function (code) {
        onFatal(code);
      }),
    };
    // An open socket already carrying this session (the create page's) is adopted.
    let socket = adopt;
    if (socket) socket.retarget(wsPath, handlers);
    else socket = waconnect.liveSocket(wsPath, handlers);

    // -- page state (set at DOMContentLoaded) -----------------------------------------------

    let root = null;
    let el = null;
    let current = null;
    let shownQrKey = null; // qr_issued_at (or the SVG itself) of the code on screen
    let eventsKey = null; // ids of the events in the table
    let lastReceivedAt = null; // when the snapshot being rendered arrived
    let messagesPanel = null; // messages.js's panel, when the page has one

    function $(id) {
      return document.getElementById(id);
    }

    const KIND_LABELS = { intent: "Intent", state: "State change", error: "Error", lease: "Lease", info: "Info" };

    // -- small DOM helpers: write only when the value differs ---------------------------

    function setText(node, text) {
      if (node && node.textContent !== text) node.textContent = text;
    }
    function setHidden(node, hidden) {
      if (node && node.hidden !== hidden) node.hidden = hidden;
    }
    function orDash(value) {
      return value === null || value === undefined || value === "" ? "—" : String(value);
    }

    // -- rendering ----------------------------------------------------------------------

    function setButtonsDisabled(disabled) {
      const buttons = root.querySelectorAll("#actions button, #simulated-phone button, #pair-phone-form button, #message-form button");
      for (const button of buttons) button.disabled = disabled;
    }

    function renderState(snap) {
      if (el.state.dataset.state !== snap.state) {
        el.state.dataset.state = snap.state;
        el.state.className = "state-badge state-" + snap.state;
        root.dataset.state = snap.state;
        for (const hint of el.hints) setHidden(hint, hint.dataset.forState !== snap.state);
      }
      // Deleting is an intent the supervisor carries out; until the row is gone the
      // session is shown as "Deleting…" and accepts no more actions.
      // A linked device is never paired again on top (it would keep a slot on the
      // phone): New QR code and the pairing form show only once it is logged out.
      for (const node of root.querySelectorAll("[data-unlinked-only]")) setHidden(node, !!snap.phone);
      for (const node of root.querySelectorAll("[data-linked-only]")) setHidden(node, !snap.phone);
      const deleting = snap.desired_state === "deleted";
      el.state.classList.toggle("is-deleting", deleting);
      setText(el.state, deleting ? "Deleting…" : snap.state_label);
      setHidden(el.deletingHint, !deleting);
      setHidden(el.hintsBox, deleting);
      if (deleting !== root.classList.contains("is-deleting")) {
        root.classList.toggle("is-deleting", deleting);
        setButtonsDisabled(deleting);
      }
    }

    function renderQr(snap) {
      const showing = snap.state === "qr_required" && !!snap.qr_code;
      const key = showing ? (snap.qr_issued_at !== null ? String(snap.qr_issued_at) : snap.qr_code) : null;
      if (key === shownQrKey) return;
      if (!showing) {
        setHidden(el.qrArea, true);
        el.qr.textContent = "";
        shownQrKey = null;
        return;
      }
      // qr.mjs not run yet (still loading, or it failed): the rest of the snapshot is
      // shown; the code is drawn when the module is ready ("waconnect:qr-ready").
      if (typeof waconnect.qrSvg !== "function") return;
      el.qr.innerHTML = waconnect.qrSvg(snap.qr_code); // uqr's SVG (qr.mjs): no text of the code in it
      setHidden(el.qrArea, false);
      const shownAt = waconnect.now();
      if (metrics.firstQrShownAt === null) {
        metrics.firstQrShownAt = shownAt;
        metrics.firstQrIssuedAt = snap.qr_issued_at;
        metrics.firstQrFrom = "socket";
      } else {
        metrics.swaps.push({ issuedAt: snap.qr_issued_at, shownAt: shownAt, receivedAt: lastReceivedAt });
      }
      shownQrKey = key;
    }

    function renderPairing(snap) {
      setText(el.pairingCode, snap.pairing_code || "");
      setHidden(el.pairing, !snap.pairing_code);
    }

    function renderFacts(snap) {
      setText(el.phone, orDash(snap.phone));
      setText(el.pushName, orDash(snap.push_name));
      setText(el.desired, orDash(snap.desired_state));
      setText(el.retryCount, String(snap.retry_count || 0));
      setText(el.leaseOwner, orDash(snap.lease_owner));
      el.nextRetry.dataset.at = snap.next_retry_at === null ? "" : String(snap.next_retry_at);
      el.bannedUntil.dataset.at = snap.banned_until === null ? "" : String(snap.banned_until);
      setText(el.bannedUntil, snap.banned_until ? waconnect.formatDateTime(snap.banned_until) : "—");
      setText(el.lastError, snap.last_error || "");
      setHidden(el.lastErrorBox, !snap.last_error);
    }

    function stateChip(state) {
      const chip = document.createElement("span");
      chip.className = "state-chip state-" + (state || "none");
      chip.textContent = state || "—";
      return chip;
    }

    function timeCell(ms) {
      const td = document.createElement("td");
      td.className = "col-time mono";
      const time = document.createElement("time");
      time.dateTime = new Date(ms).toISOString();
      time.dataset.ms = String(ms);
      time.title = waconnect.formatDateTime(ms);
      time.textContent = waconnect.formatTime(ms);
      td.appendChild(time);
      return td;
    }

    function eventRow(ev) {
      const tr = document.createElement("tr");
      tr.dataset.id = String(ev.id);
      tr.className = "event-" + ev.kind;
      tr.appendChild(timeCell(ev.at));
      const change = document.createElement("td");
      change.className = "col-change";
      if (ev.from || ev.to) {
        const wrap = document.createElement("span");
        wrap.className = "transition";
        wrap.appendChild(stateChip(ev.from));
        wrap.appendChild(document.createTextNode(" → "));
        wrap.appendChild(stateChip(ev.to));
        change.appendChild(wrap);
      } else {
        const kind = document.createElement("span");
        kind.className = "kind";
        kind.textContent = KIND_LABELS[ev.kind] || ev.kind;
        change.appendChild(kind);
      }
      tr.appendChild(change);
      const message = document.createElement("td");
      message.className = "col-message";
      message.textContent = ev.message;
      tr.appendChild(message);
      const actor = document.createElement("td");
      actor.className = "col-actor mono small";
      actor.textContent = ev.actor;
      tr.appendChild(actor);
      return tr;
    }

    function renderEvents(snap) {
      if (!Array.isArray(snap.events)) return;
      const key = snap.events.map(function (e) { return e.id; }).join(",");
      if (key === eventsKey) return;
      const known = new Set(
        Array.prototype.map.call(el.events.rows, function (tr) { return tr.dataset.id; })
      );
      const fragment = document.createDocumentFragment();
      for (const ev of snap.events) {
        const tr = eventRow(ev);
        if (eventsKey !== null && !known.has(String(ev.id))) tr.classList.add("is-new");
        fragment.appendChild(tr);
      }
      el.events.replaceChildren(fragment);
      eventsKey = key;
    }

    function render(snap) {
      renderQr(snap); // first: the QR swap is what the admin waits for
      renderState(snap);
      renderPairing(snap);
      renderFacts(snap);
      renderEvents(snap);
      tick();
    }

    // -- clocks: QR countdown and next retry, once a second ------------------------------

    function secondsLeft(ms) {
      return Math.max(0, Math.ceil((ms - Date.now()) / 1000));
    }

    function tick() {
      if (current.qr_expires_at && shownQrKey !== null) {
        const left = secondsLeft(current.qr_expires_at);
        setText(el.countdownLabel, "Expires in");
        setText(el.countdown, left > 0 ? left + " s" : "a moment (waiting for the next code)");
        el.countdown.dataset.expiresAt = String(current.qr_expires_at);
        el.countdown.classList.toggle("is-low", left <= 5);
      } else {
        setText(el.countdown, "");
        el.countdown.dataset.expiresAt = "";
      }
      if (current.next_retry_at) {
        const left = secondsLeft(current.next_retry_at);
        setText(el.nextRetry, left > 0 ? "in " + left + " s (" + waconnect.formatTime(current.next_retry_at) + ")" : "now");
      } else {
        setText(el.nextRetry, "—");
      }
    }

    // -- the socket -----------------------------------------------------------------------

    function showGone(text) {
      setText(el.goneText, text);
      setHidden(el.gone, false);
      root.classList.add("is-gone");
      setButtonsDisabled(true);
      waconnect.showSocketStatus(el.status, false, "closed");
    }

    function onMessage(msg, receivedAt) {
      if (metrics.firstMessageAt === null) metrics.firstMessageAt = receivedAt;
      if (msg.type === "snapshot" && msg.snapshot) {
        // The first snapshot of each (re)connect carries the last messages.
        if (Array.isArray(msg.messages) && messagesPanel) messagesPanel.onMessage(msg);
        if (msg.snapshot.version < current.version) return; // stale push, already superseded
        current = msg.snapshot;
        lastReceivedAt = receivedAt;
        render(current);
      } else if (msg.type === "message") {
        if (messagesPanel) messagesPanel.onMessage(msg);
      } else if (msg.type === "removed") {
        socket.stop();
        showGone("This session was deleted.");
      }
    }

    function onFatal(code) {
      if (code === 4404) showGone("This session no longer exists.");
      else waconnect.showSocketStatus(el.status, false, "no access to sessions");
    }

    // -- start --------------------------------------------------------------------------

    function start() {
      root = $("detail");
      const dataEl = $("session-snapshot");
      if (!root || !dataEl) {
        socket.stop();
        return;
      }
      el = {
        state: $("state"),
        qrArea: $("qr-area"),
        qr: $("qr"),
        countdown: $("qr-countdown"),
        countdownLabel: $("qr-countdown-label"),
        pairing: $("pairing"),
        pairingCode: $("pairing-code"),
        phone: $("phone"),
        pushName: $("push-name"),
        desired: $("desired-state"),
        retryCount: $("retry-count"),
        nextRetry: $("next-retry"),
        bannedUntil: $("banned-until"),
        leaseOwner: $("lease-owner"),
        lastErrorBox: $("last-error-box"),
        lastError: $("last-error"),
        events: $("events"),
        status: $("socket-status"),
        gone: $("gone"),
        goneText: $("gone-text"),
        hints: Array.prototype.slice.call(document.querySelectorAll("#hints [data-for-state]")),
        hintsBox: $("hints"),
        deletingHint: $("deleting-hint"),
      };
      current = JSON.parse(dataEl.textContent);
      el.status.hidden = false; // only meaningful with this script running

      // The server rendered the page from `current`: adopt its QR code and events.
      if (current.state === "qr_required" && current.qr_code && el.qr.querySelector("svg")) {
        shownQrKey = current.qr_issued_at !== null ? String(current.qr_issued_at) : current.qr_code;
        metrics.firstQrShownAt = waconnect.now();
        metrics.firstQrIssuedAt = current.qr_issued_at;
        metrics.firstQrFrom = "page";
      }
      eventsKey = Array.prototype.map.call(el.events.rows, function (tr) { return tr.dataset.id; }).join(",");
      for (const time of el.events.querySelectorAll("time[data-ms]")) {
        const ms = Number(time.dataset.ms);
        time.textContent = waconnect.formatTime(ms);
        time.title = waconnect.formatDateTime(ms);
      }
      render(current);
      setInterval(tick, 1000);
      document.addEventListener("waconnect:qr-ready", function () {
        renderQr(current);
      });

      // The create page turns into this page in place (create.js, history.pushState),
      // so this document can be shown for another history entry: back to
      // /sessions/new/, also after a reload (the reloaded document inherits the
      // pushed entries). Load what the address bar says.
      const ownPath = location.pathname;
      function leaveIfMoved(event) {
        if ((event.type === "popstate" || event.persisted) && location.pathname !== ownPath) location.reload();
      }
      window.addEventListener("popstate", leaveIfMoved);
      window.addEventListener("pageshow", leaveIfMoved);
      waconnect.enhanceActionForms(root, {
        onResult: function (action) {
          // The simulated phone's peer message went out: ready for the next one.
          if (action !== "simulate-message") return;
          const text = root.querySelector("#peer-message-form textarea");
          if (text) text.value = "";
        },
      });
      if (waconnect.messagesPanel) messagesPanel = waconnect.messagesPanel(root);

      ready = true;
      for (const [handler, args] of early.splice(0)) handler.apply(null, args);
    }

    return {
      mount: start,
      stop: function () {
        socket.stop();
      },
    };
  };

  const wsMeta = document.querySelector('meta[name="waconnect-ws"]');
  if (!wsMeta) return;
  const page = waconnect.sessionPage(wsMeta.content);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", page.mount);
  else page.mount();
})();
