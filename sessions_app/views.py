"""Pages for admins. Every view requires an active staff user with the model
permission its job needs (``permissions.py``), writes intent only, and is never
cached (the detail page and the create answer carry QR and pairing codes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.mixins import PermissionRequiredMixin
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache
from django.views.generic import CreateView, DetailView, ListView

from sessions_app import conf, intents, messages_panel, permissions, snapshots
from sessions_app.forms import PairPhoneForm, PeerMessageForm, SessionCreateForm, errors_json
from sessions_app.models import PhoneAction, WaSession
from sessions_app.states import Desired


@method_decorator(never_cache, name="dispatch")
class OperatorRequiredMixin(PermissionRequiredMixin):
    """Active staff with every permission in ``permission_required``.

    Anonymous (and inactive) users go to the login page; a logged-in user without
    staff status or the permission gets 403. Responses are never cached.
    """

    def has_permission(self) -> bool:
        return permissions.can(self.request.user, *self.get_permission_required())


class ViewerRequiredMixin(OperatorRequiredMixin):
    """Active staff who may see sessions (``view_wasession``, or ``change_``)."""

    permission_required = permissions.VIEW

    def has_permission(self) -> bool:
        return permissions.can_view(self.request.user)


def _actor(request: HttpRequest) -> str:
    return request.user.get_username()


class SessionListView(ViewerRequiredMixin, ListView):
    model = WaSession
    template_name = "sessions_app/list.html"
    context_object_name = "sessions"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["rows"] = [snapshots.row(s) for s in context["sessions"]]
        return context


class SessionCreateView(OperatorRequiredMixin, CreateView):
    """The create form. A plain form post gets a redirect (or the page with its
    errors); the page's script (``Accept: application/json``) gets
    ``{ok, id, url, ws, html}`` or ``{ok: false, errors}`` with status 400, so it
    can open the session's socket at once and show the detail page without a
    second page load. Needs ``add_wasession`` and seeing sessions: the answer is the
    new session's page with its QR code.
    """

    permission_required = permissions.ADD
    model = WaSession
    form_class = SessionCreateForm
    template_name = "sessions_app/create.html"

    def has_permission(self) -> bool:
        return super().has_permission() and permissions.can_view(self.request.user)

    def _wants_json(self) -> bool:
        return "application/json" in self.request.headers.get("Accept", "")

    def form_valid(self, form: SessionCreateForm) -> HttpResponse:
        try:
            self.object = intents.create_session(form.cleaned_data["name"], _actor(self.request))
        except intents.IntentRefused as refused:  # the name was taken a moment ago
            form.add_error("name", refused.message)
            return self.form_invalid(form)
        if self._wants_json():
            pk = self.object.pk
            url = reverse("sessions:detail", args=[pk])
            return JsonResponse(
                {
                    "ok": True,
                    "id": pk,
                    "url": url,
                    "ws": f"/ws/sessions/{pk}/",
                    # The detail page as a GET would render it now: saves the page a request.
                    "html": detail_html(self.request, self.object),
                }
            )
        return redirect("sessions:detail", pk=self.object.pk)

    def form_invalid(self, form: SessionCreateForm) -> HttpResponse:
        if self._wants_json():
            return JsonResponse({"ok": False, "errors": errors_json(form)}, status=400)
        return super().form_invalid(form)


def detail_html(request: HttpRequest, session: WaSession) -> str:
    """The detail page for ``session``, rendered like SessionDetailView does."""
    view = SessionDetailView(request=request, kwargs={"pk": session.pk}, args=())
    view.object = session
    return render_to_string(view.template_name, view.get_context_data(), request=request)


class SessionDetailView(ViewerRequiredMixin, DetailView):
    model = WaSession
    template_name = "sessions_app/detail.html"
    context_object_name = "session"

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        # One query for the events: the table and the snapshot show the same ones.
        context["events"] = events = snapshots.latest_events(self.object.pk)
        context["snapshot"] = snapshot = snapshots.snapshot(self.object, with_events=False) | {
            "events": [snapshots.event_dict(e) for e in events]
        }
        # The first render shows the code as an image also without JavaScript.
        context["qr_svg"] = snapshots.qr_svg(snapshot["qr_code"]) if snapshot["qr_code"] else ""
        simulated = conf.is_simulated()
        context["gestures"] = (
            [(v, label) for v, label in PhoneAction.Gesture.choices if v != "message"]
            if simulated
            else []
        )
        context["peer_message_form"] = PeerMessageForm() if simulated else None
        context["pair_phone_form"] = PairPhoneForm()
        # Not "messages": that is django.contrib.messages' flash list in base.html.
        context["message_panel"] = messages_panel.context(self.object, self.request.user)
        return context


ACTIONS: dict[str, tuple[Callable[[WaSession, str], None], str]] = {
    "start": (intents.start, "Start requested."),
    "stop": (intents.stop, "Stop requested."),
    "new-qr": (intents.new_qr, "New QR code requested."),
    "logout": (intents.logout, "Log out requested."),
}


class SessionActionView(OperatorRequiredMixin, View):
    """POST-only (CSRF-protected) endpoint for the buttons on the detail page.

    Answers JSON to the page's script (``Accept: application/json``) and a
    redirect to a plain form post. Each action needs its own permission
    (``permissions.ACTION_PERMISSIONS``).
    """

    http_method_names = ["post"]

    def get_permission_required(self) -> tuple[str, ...]:
        return (permissions.action_permission(self.kwargs["action"]),)

    def post(self, request: HttpRequest, pk: int, action: str) -> HttpResponse:
        session = get_object_or_404(WaSession, pk=pk)
        actor = _actor(request)
        target = reverse("sessions:detail", args=[pk])
        wants_json = "application/json" in request.headers.get("Accept", "")
        if session.desired_state == Desired.DELETED:
            return _refuse(request, wants_json, target, "This session is being deleted.", 409)
        if action == "pair-phone":
            form = PairPhoneForm(request.POST)
            if not form.is_valid():
                return _refuse(request, wants_json, target, " ".join(form.errors["phone"]), 400)
            try:
                intents.pair_by_phone(session, form.cleaned_data["phone"], actor)
            except intents.IntentRefused as refused:  # e.g. linked: log out first
                return _refuse(request, wants_json, target, refused.message, 409)
            message = "Pairing code requested; it appears here in a moment."
        elif action in ACTIONS:
            func, message = ACTIONS[action]
            try:
                func(session, actor)
            except intents.IntentRefused as refused:  # e.g. already running
                return _refuse(request, wants_json, target, refused.message, 409)
        elif action == "delete":
            intents.delete(session, actor)
            message = f"Session {session.name!r} deleted."
            target = reverse("sessions:list")
        elif action == "simulate-message" and conf.is_simulated():
            form = PeerMessageForm(request.POST)
            if not form.is_valid():
                error = " ".join(str(e) for errors in form.errors.values() for e in errors)
                return _refuse(request, wants_json, target, error, 400)
            data = form.cleaned_data
            intents.peer_message(session, data["sender"], data["text"], actor, data["push_name"])
            message = "Simulated phone: the peer's message is on its way."
        elif action.startswith("simulate-") and conf.is_simulated():
            gesture = action.removeprefix("simulate-")
            if gesture not in PhoneAction.Gesture.values:
                raise Http404("unknown gesture")
            intents.phone_gesture(session, gesture, actor)
            message = f"Simulated phone: {gesture}."
        else:
            raise Http404("unknown action")
        if wants_json:
            return JsonResponse({"ok": True, "message": message, "redirect": target})
        messages.success(request, message)
        return redirect(target)


def _refuse(
    request: HttpRequest, wants_json: bool, target: str, error: str, status: int
) -> HttpResponse:
    if wants_json:
        return JsonResponse({"ok": False, "error": error}, status=status)
    messages.error(request, error)
    return redirect(target)
