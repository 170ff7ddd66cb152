/* waconnect: the create page.
 *
 * Records when the admin pressed "create" (sessionStorage
 * waconnect.createClickedAt), so the QR timing can be measured
 * (benchmarks/bench_qr_latency.py).
 *
 * With this script the page opens /ws/sessions/new/ at once (before "create" is
 * pressed) and creates over it: {"type": "create", name} is answered {"type":
 * "created", id, url, ws, html} or {"type": "invalid", errors}, and the same socket
 * then carries the new session's snapshots (sessions_app.consumers.
 * SessionCreateConsumer): no POST and no new socket handshake between the click
 * and the QR code. While that socket is not ready (still opening, refused,
 * dropped), the form is posted with fetch (Accept: application/json). The
 * view answers {ok, id, url, ws, html} or {ok: false, errors} (400). On success
 * the page opens the new session's socket at once (waconnect.sessionPage, the
 * same code as the detail page), parses the detail page (html, rendered by the
 * view; fetched from url if absent), and puts its <main> in place of this one and
 * mounts once the session's first code is there — or a snapshot that says none is
 * coming (any state but "stopped" to be started, or "connecting") — or at the
 * latest data-hold-for-code-ms (the form's attribute, ms; 0 or absent: at once)
 * after the answer. So the page and its code are laid out and painted together:
 * in Chromium, a socket message that arrives after the page's markup changed waits
 * for the next frame to be painted (up to a vsync interval, then the whole page's
 * style, layout and paint), which kept the first code ~11 ms p50 / 20 ms p99
 * longer off the screen (docs/benchmarks.md, eleventh stop). A code later than
 * the hold would have found the page painted anyway. No second full page load;
 * the URL becomes the detail page's (history.pushState), so reload, bookmarks and
 * back behave as after the plain form post. Without the script, or when something
 * unexpected comes back, the form posts the ordinary way (redirect, or the page
 * with its errors).
 *
 * The form carries data-socket="ready" while the socket can take a create.
 *
 * window.waconnectMetrics gets, on this path (wall-clock ms):
 *   createdVia         "socket" or "post": how the session was created
 *   createRespondedAt  the create's answer ("created", or the POST's) arrived
 *   detailShownAt      the detail page's markup replaced the form (then mounted)
 *   detailShownOn      "snapshot" (the code, or a state without one) or "hold"
 *                      (data-hold-for-code-ms passed first)
 */
(function () {
  "use strict";
  const form = document.getElementById("create-form");
  if (!form) return;

  const waconnect = window.waconnect || {};

  // This page may be reloaded at /sessions/new/ after it turned into a detail page:
  // the reloaded document then also stands for the detail page's history entry.
  // Forward to that entry loads what the address bar says.
  // A move in the history while a created session's page waits for its code (its
  // address already pushed) loads what the address bar says, too.
  const ownPath = location.pathname;
  let abandonHeldDetail = null; // set while a created session's page waits for its code
  window.addEventListener("popstate", function () {
    if (abandonHeldDetail) {
      abandonHeldDetail();
      location.reload();
    } else if (location.pathname !== ownPath && !document.getElementById("detail")) {
      location.reload();
    }
  });
  const metrics = window.waconnectMetrics;
  const enhanced =
    typeof window.fetch === "function" &&
    typeof window.DOMParser === "function" &&
    typeof waconnect.sessionPage === "function" &&
    !!(window.history && history.pushState);

  function recordClick() {
    try {
      sessionStorage.setItem("waconnect.createClickedAt", String(performance.timeOrigin + performance.now()));
    } catch (err) {
      /* storage disabled: the page works without the metric */
    }
  }

  // -- form errors, shown like the server-rendered ones --------------------------------

  function clearErrors() {
    for (const node of form.parentNode.querySelectorAll(".form-errors, .field-error")) node.remove();
    for (const field of form.querySelectorAll(".field.has-error")) field.classList.remove("has-error");
    for (const help of form.querySelectorAll(".field .help[data-js-hidden]")) {
      help.hidden = false;
      delete help.dataset.jsHidden;
    }
    for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  }

  function showErrors(errors) {
    clearErrors();
    let first = null;
    const general = [];
    for (const name of Object.keys(errors || {})) {
      const input = name === "__all__" ? null : form.elements[name];
      const field = input && input.closest ? input.closest(".field") : null;
      if (!field) {
        general.push.apply(general, errors[name]);
        continue;
      }
      field.classList.add("has-error");
      input.setAttribute("aria-invalid", "true");
      const help = field.querySelector(".help");
      if (help && !help.hidden) {
        help.hidden = true;
        help.dataset.jsHidden = "1";
      }
      for (const message of errors[name]) {
        const p = document.createElement("p");
        p.className = "field-error";
        p.setAttribute("role", "alert");
        p.id = name + "-error";
        p.textContent = message;
        field.appendChild(p);
      }
      if (!first) first = input;
    }
    if (general.length) {
      const box = document.createElement("div");
      box.className = "form-errors";
      box.setAttribute("role", "alert");
      box.dataset.js = "1";
      for (const message of general) {
        const p = document.createElement("p");
        p.textContent = message;
        box.appendChild(p);
      }
      form.parentNode.insertBefore(box, form);
    }
    if (first) first.focus();
  }

  // -- success: become the detail page ----------------------------------------------------

  /** The detail page's <main>, parsed from `html` and adopted into this document
   * (so putting it in moves nodes, no more), or null if `html` is not one. */
  function parseDetail(html) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    const newMain = doc.querySelector("main");
    if (!newMain || !doc.getElementById("detail")) return null;
    return { main: document.adoptNode(newMain), title: doc.title };
  }

  function showDetail(detail) {
    const main = document.querySelector("main");
    if (!main) return false;
    // Read before the new markup goes in: reading (or setting) the scroll position
    // after it forces a layout of the new page at once; unscrolled, the page is
    // laid out once, at the next frame.
    const scrolled = window.scrollY !== 0 || window.scrollX !== 0;
    main.replaceChildren.apply(main, Array.prototype.slice.call(detail.main.childNodes));
    if (scrolled) window.scrollTo(0, 0);
    return true;
  }

  /** True while `msg` leaves the new session's first code still to come: a
   * snapshot of the row as created (stopped, to be started) or connecting, or a
   * message for the Messages panel. */
  function codeStillComing(msg) {
    if (msg.type === "message") return true;
    const snap = msg.type === "snapshot" ? msg.snapshot : null;
    return !!snap && snap.desired_state === "running" && (snap.state === "stopped" || snap.state === "connecting");
  }

  function becomeDetailPage(data, socket) {
    const holdForCodeMs = Math.max(0, Number(form.dataset.holdForCodeMs) || 0);
    let held = true; // waiting for the first code, at most holdForCodeMs
    let shownOn = "hold";
    let detail = null; // the detail page, parsed
    let done = false; // shown, given up, or left
    // The socket first: it is the longest pole (or the create socket, adopted).
    const page = waconnect.sessionPage(data.ws, socket, function (msg) {
      if (held && !codeStillComing(msg)) {
        shownOn = "snapshot";
        release();
      }
    });
    // (onQueued runs from the socket's messages, never inside sessionPage itself.)
    const timer = setTimeout(release, holdForCodeMs);
    function finish() {
      done = true;
      abandonHeldDetail = null;
      clearTimeout(timer);
    }
    function release() {
      held = false;
      clearTimeout(timer);
      show();
    }
    function fail() {
      // Could not show it in place: load the detail page the ordinary way.
      finish();
      page.stop();
      location.assign(data.url);
    }
    function show() {
      if (held || !detail || done) return;
      finish();
      try {
        if (!showDetail(detail)) throw new Error("no <main> to put it in");
        if (metrics) {
          metrics.detailShownAt = waconnect.now();
          metrics.detailShownOn = shownOn;
        }
        page.mount();
      } catch (err) {
        fail(); // from the timer or a socket message: no promise catches it here
      }
    }
    const html =
      typeof data.html === "string"
        ? Promise.resolve(data.html) // the view sent the detail page along
        : fetch(data.url, { headers: { Accept: "text/html" }, credentials: "same-origin" }).then(
            function (response) {
              if (!response.ok || response.redirected) throw new Error("HTTP " + response.status);
              return response.text();
            }
          );
    html
      .then(function (html) {
        const parsed = parseDetail(html);
        if (!parsed) throw new Error("not a detail page");
        // The session exists: its address and title now, while the form waits for
        // the code (each took up to ~4 ms in the task that draws it). Back to
        // /sessions/new/ is handled by session.js (mount): it loads the form afresh.
        document.title = parsed.title;
        history.pushState({ waconnect: "session-detail" }, "", data.url);
        if (!done) abandonHeldDetail = finish;
        detail = parsed;
        show();
      })
      .catch(fail);
  }

  // -- the create socket: open before the click ------------------------------------------------

  const button = document.getElementById("create-submit");
  let pending = false;
  let socketReady = false; // the server said "ready" on the socket now open
  let socketPending = false; // a create sent over the socket awaits its answer
  let socket = null;

  function socketAnswered() {
    socketPending = false;
    pending = false;
  }

  function onSocketMessage(msg) {
    if (msg.type === "ready") {
      socketReady = true;
      form.dataset.socket = "ready";
    } else if (msg.type === "created" && socketPending) {
      if (metrics) {
        metrics.createRespondedAt = waconnect.now();
        metrics.createdVia = "socket";
      }
      socketAnswered();
      socketReady = false;
      becomeDetailPage(msg, socket);
    } else if (msg.type === "invalid" && socketPending) {
      socketAnswered();
      if (button) button.disabled = false;
      showErrors(msg.errors);
    }
  }

  function onSocketStatus(online) {
    if (online) return;
    socketReady = false;
    delete form.dataset.socket;
    if (socketPending) {
      // Dropped before the answer: the session may or may not exist now.
      socketAnswered();
      if (button) button.disabled = false;
      if (waconnect.toast) {
        waconnect.toast("The connection dropped: see the sessions list before creating again.", "error");
      }
    }
  }

  if (enhanced && typeof waconnect.liveSocket === "function") {
    socket = waconnect.liveSocket(form.dataset.ws || "/ws/sessions/new/", {
      onMessage: onSocketMessage,
      onStatus: onSocketStatus,
      onFatal: function () {
        socketReady = false; // no right to create over it: the form posts
        delete form.dataset.socket;
      },
    });
  }

  // -- the submit ---------------------------------------------------------------------------

  form.addEventListener("submit", function (event) {
    recordClick();
    if (!enhanced) return;
    event.preventDefault();
    if (pending) return;
    if (socketReady && socket.send({ type: "create", name: form.elements.namedItem("name").value })) {
      pending = true;
      socketPending = true;
      if (button) button.disabled = true;
      clearErrors();
      return;
    }
    pending = true;
    if (button) button.disabled = true;
    let done = false; // true once the page moves on (detail shown, or navigating)
    waconnect.postForm(form)
      .then(function (response) {
        const type = response.headers.get("Content-Type") || "";
        if (type.indexOf("application/json") === -1) {
          done = true;
          if (response.redirected && response.url.indexOf(document.body.dataset.loginUrl || "/accounts/login/") !== -1) {
            location.assign(waconnect.loginUrl()); // the login session expired
          } else {
            HTMLFormElement.prototype.submit.call(form); // let the server answer the ordinary way
          }
          return;
        }
        return response.json().then(function (data) {
          if (metrics) {
            metrics.createRespondedAt = waconnect.now();
            metrics.createdVia = "post";
          }
          if (data.ok && data.url && data.ws) {
            done = true;
            if (socket) socket.stop(); // the session's own socket replaces it
            becomeDetailPage(data);
          } else {
            showErrors(data.errors || { __all__: [data.error || "HTTP " + response.status] });
          }
        });
      })
      .catch(function () {
        if (waconnect.toast) waconnect.toast("Network error: the session was not created.", "error");
      })
      .finally(function () {
        pending = false;
        if (button && !done) button.disabled = false;
      });
  });
})();
