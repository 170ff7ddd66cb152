/* waconnect: the sessions list, kept live over /ws/sessions/.
 *
 * The socket first sends every row ({"type":"rows"}), then one {"type":"row"} per
 * change and {"type":"removed"} per deletion. A row older than (or as old as) the
 * one shown is ignored: pushes may arrive out of order.
 */
(function () {
  "use strict";

  const waconnect = window.waconnect;
  const tbody = document.getElementById("rows");
  const empty = document.getElementById("rows-empty");
  const status = document.getElementById("socket-status");
  if (!tbody) return;
  status.hidden = false; // only meaningful with this script running

  const detailUrlTemplate = tbody.dataset.detailUrl; // ".../sessions/0/"

  function detailUrl(id) {
    return detailUrlTemplate.replace(/\/0\/$/, "/" + id + "/");
  }

  function findRow(id) {
    return tbody.querySelector('tr[data-id="' + String(Number(id)) + '"]');
  }

  function setCell(td, text) {
    const value = text ? String(text) : "—";
    if (td.textContent !== value) td.textContent = value;
  }

  function buildRow(row) {
    const tr = document.createElement("tr");
    tr.dataset.id = String(row.id);
    const name = document.createElement("td");
    name.className = "col-name";
    const link = document.createElement("a");
    link.href = detailUrl(row.id);
    name.appendChild(link);
    const state = document.createElement("td");
    state.className = "col-state";
    const badge = document.createElement("span");
    state.appendChild(badge);
    const phone = document.createElement("td");
    phone.className = "col-phone mono";
    const push = document.createElement("td");
    push.className = "col-push";
    const intent = document.createElement("td");
    intent.className = "col-intent muted";
    tr.append(name, state, phone, push, intent);
    return tr;
  }

  function fill(tr, row) {
    tr.dataset.version = String(row.version);
    tr.dataset.name = row.name;
    const cells = tr.cells;
    const link = cells[0].querySelector("a");
    if (link.textContent !== row.name) {
      link.textContent = row.name;
      link.title = row.name; // the cell may show it shortened
    }
    const badge = cells[1].querySelector("span");
    if (badge.dataset.state !== row.state) {
      badge.dataset.state = row.state;
      badge.className = "state-badge state-" + row.state;
    }
    const deleting = row.desired_state === "deleted";
    badge.classList.toggle("is-deleting", deleting);
    const label = deleting ? "Deleting…" : row.state_label;
    if (badge.textContent !== label) badge.textContent = label;
    setCell(cells[2], row.phone);
    setCell(cells[3], row.push_name);
    setCell(cells[4], row.desired_state);
  }

  function flash(tr) {
    tr.classList.remove("is-changed");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("is-changed");
  }

  /** Insert in name order (the server's ordering). */
  function insertSorted(tr, name) {
    for (const other of tbody.rows) {
      if ((other.dataset.name || "").localeCompare(name) > 0) {
        tbody.insertBefore(tr, other);
        return;
      }
    }
    tbody.appendChild(tr);
  }

  function upsert(row, animate) {
    let tr = findRow(row.id);
    if (tr) {
      if (Number(tr.dataset.version) >= row.version) return;
      fill(tr, row);
    } else {
      tr = buildRow(row);
      fill(tr, row);
      insertSorted(tr, row.name);
    }
    if (animate) flash(tr);
  }

  function remove(id) {
    const tr = findRow(id);
    if (tr) tr.remove();
  }

  function updateEmpty() {
    empty.hidden = tbody.rows.length > 0;
  }

  function onMessage(msg) {
    if (msg.type === "rows" && Array.isArray(msg.rows)) {
      // The full list as of (re)connecting: drop what is gone, update the rest.
      const ids = new Set(msg.rows.map(function (r) { return String(r.id); }));
      for (const tr of Array.prototype.slice.call(tbody.rows)) {
        if (!ids.has(tr.dataset.id)) tr.remove();
      }
      for (const row of msg.rows) upsert(row, false);
    } else if (msg.type === "row" && msg.row) {
      upsert(msg.row, true);
    } else if (msg.type === "removed") {
      remove(msg.id);
    }
    updateEmpty();
  }

  waconnect.liveSocket("/ws/sessions/", {
    onMessage: onMessage,
    onStatus: function (online) {
      waconnect.showSocketStatus(status, online);
    },
    onFatal: function () {
      waconnect.showSocketStatus(status, false, "no access to sessions");
    },
  });
})();
