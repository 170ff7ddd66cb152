/* waconnect: draws a QR code from its text, for session.js (waconnect.qrSvg).
 *
 * Snapshots carry the code's text (qr_code); the page draws it with uqr 0.1.3
 * (static/vendor/uqr/, MIT, vendored unchanged; an ES module, hence this module
 * beside the classic scripts, run before DOMContentLoaded). Like the server's
 * first render (segno, sessions_app.snapshots.qr_svg): error correction L, mask
 * 0 (any mask is valid and scans; choosing the best one costs most of the time),
 * 5 px modules, a 2-module quiet zone.
 */
import { renderSVG } from "../vendor/uqr/index.mjs";

const waconnect = (window.waconnect = window.waconnect || {});

waconnect.qrSvg = function (code) {
  const svg = renderSVG(code, { ecc: "L", maskPattern: 0, border: 2, pixelSize: 5 });
  // uqr sets a viewBox only: give the image its size in pixels, as segno's has.
  const box = /viewBox="0 0 (\d+) (\d+)"/.exec(svg);
  return box ? svg.replace("<svg ", '<svg width="' + box[1] + '" height="' + box[2] + '" ') : svg;
};
