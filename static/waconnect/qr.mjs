/* waconnect: draws a QR code from its text, for session.js (waconnect.qrSvg).
 *
 * Snapshots carry the code's text (qr_code); the page draws it. uqr 0.1.3
 * (static/vendor/uqr/, MIT, vendored unchanged; an ES module, hence this module
 * beside the classic scripts, run before DOMContentLoaded) encodes it, like the
 * server's first render (segno, sessions_app.snapshots.qr_svg): error correction L,
 * mask 0 (any mask is valid and scans; choosing the best one costs most of the
 * time), a 2-module quiet zone, 5 px modules. The SVG is written here as segno
 * writes it, one stroke per run of dark modules in a row: uqr's own renderSVG
 * writes a square per module, which Chromium took ~4× longer to parse and paint.
 */
import { encode } from "../vendor/uqr/index.mjs";

const waconnect = (window.waconnect = window.waconnect || {});
const MODULE_PX = 5;

waconnect.qrSvg = function (code) {
  const qr = encode(code, { ecc: "L", maskPattern: 0, border: 2 });
  const size = qr.size; // modules, quiet zone included
  let runs = "";
  for (let y = 0; y < size; y++) {
    const row = qr.data[y];
    for (let x = 0; x < size; ) {
      if (!row[x]) {
        x++;
        continue;
      }
      let end = x + 1;
      while (end < size && row[end]) end++;
      runs += "M" + x + " " + (y + 0.5) + "h" + (end - x);
      x = end;
    }
  }
  const px = size * MODULE_PX;
  return (
    '<svg xmlns="http://www.w3.org/2000/svg" width="' + px + '" height="' + px +
    '" viewBox="0 0 ' + size + " " + size + '">' +
    '<path fill="#fff" d="M0 0h' + size + "v" + size + 'H0z"/>' +
    '<path stroke="#111" d="' + runs + '"/></svg>'
  );
};

// A snapshot that arrived before this module ran is drawn now (session.js listens).
document.dispatchEvent(new Event("waconnect:qr-ready"));

// Warm the encoder and the SVG parser while the page is idle: the first code drawn is
// the one the admin waits for. A few codes as long as WhatsApp's (its code is
// "2@<ref>,<noise key>,<identity key>,<adv secret>", ~150-250 characters; a short
// one took other paths of the encoder), each parsed into a detached element: the
// first code's drawing went from 2.2 to 1.1 ms p50 (docs/benchmarks.md, eleventh stop).
// One code per idle moment, so that a socket message never waits behind all six.
const whenIdle = window.requestIdleCallback || window.setTimeout;
const sample = "2@" + "A1b2C3d4E5f6G7h8".repeat(6) + ",waconnect" + "x".repeat(44) + ",";
const box = document.createElement("div");
(function warm(left) {
  if (left === 0) return;
  whenIdle(function () {
    box.innerHTML = waconnect.qrSvg(sample + left);
    warm(left - 1);
  });
})(6);
