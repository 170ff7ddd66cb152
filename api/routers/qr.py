"""``/api/v1/sessions/{id}/qr``: the current QR code as SVG, PNG or JSON.

Chosen by the ``Accept`` header (``image/svg+xml``, ``image/png``,
``application/json``; JSON when the client accepts anything). 409 ``no_qr`` when
the session shows no code (with ``?wait=S``: none came within S seconds). The
code is a credential for linking a device: every
answer carries ``Cache-Control: no-store`` and nothing here logs it.
"""

from __future__ import annotations

import io
import json

import segno
from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from ninja import Query, Router

from api import scopes
from api.errors import ApiError
from api.routers.session_schemas import QrOut
from api.routers.sessions import get_session, principal, wait_for_snapshot
from sessions_app.states import State

router = Router(tags=["sessions"])

SVG = "image/svg+xml"
PNG = "image/png"
JSON = "application/json"
OFFERED = [JSON, SVG, PNG]  # the first wins for */*


def _render(code: str, kind: str) -> bytes:
    """The code as an image; fixed mask, as the pages render it (see snapshots.qr_svg).

    Not cached: a QR code is a linking credential and must not outlive its row."""
    qr = segno.make_qr(code, error="l", mask=0)
    out = io.BytesIO()
    if kind == "svg":
        qr.save(out, kind="svg", scale=5, border=2, dark="#111", light="#fff")
    else:
        qr.save(out, kind="png", scale=5, border=2)
    return out.getvalue()


@router.get(
    "/{session_id}/qr",
    response={200: QrOut},
    summary="The current QR code",
    openapi_extra={
        "responses": {
            200: {
                "description": "The QR code",
                "content": {
                    JSON: {"schema": {"$ref": "#/components/schemas/QrOut"}},
                    SVG: {"schema": {"type": "string"}},
                    PNG: {"schema": {"type": "string", "format": "binary"}},
                },
            }
        }
    },
)
async def qr(
    request: HttpRequest,
    session_id: int,
    wait: float = Query(
        0,
        ge=0,
        le=30,
        description="Seconds to wait for a code while none is shown (capped at 30): "
        "create, then one request that answers with the first code.",
    ),
) -> HttpResponse:
    """The code to scan now; with ``wait``, as soon as there is one (fed by the push,
    like the session's long poll); poll-free clients learn of a new one from the
    session's long poll."""
    principal(request).require(scopes.SESSIONS_READ, scopes.VIEW)
    if wait > 0:
        await wait_for_snapshot(request, session_id, wait, lambda snap: bool(snap["qr_code"]))
    return await _answer(request, session_id)


@sync_to_async
def _answer(request: HttpRequest, session_id: int) -> HttpResponse:
    session = get_session(request, session_id)
    if session.state != State.QR_REQUIRED or not session.qr_code:
        raise ApiError(409, "no_qr", "The session shows no QR code now.")
    wanted = request.get_preferred_type(OFFERED) if request.headers.get("Accept") else JSON
    if wanted is None:
        raise ApiError(406, "not_acceptable", f"Accept one of: {', '.join(OFFERED)}.")
    if wanted == JSON:
        expires = session.qr_expires_at.isoformat() if session.qr_expires_at else None
        body = json.dumps({"code": session.qr_code, "expires_at": expires})
        response = HttpResponse(body, content_type=JSON)
    else:
        response = HttpResponse(_render(session.qr_code, "svg" if wanted == SVG else "png"))
        response["Content-Type"] = wanted
    response["Cache-Control"] = "no-store"
    response["Vary"] = "Accept"
    return response
