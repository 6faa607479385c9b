"""The review desk's pages: plain HTML forms over the core's use cases, usable without JavaScript.

A page needs a login (a signed session cookie, :mod:`gateway.http.security`); every form
carries the session's CSRF token and is refused without it. After an action the browser
is redirected (303) to the page that shows the result, with a one-time message.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.http import charts, preview
from gateway.http.problems import BadForm, LoginRequired
from gateway.http.security import CSRF_FIELD, SESSION_COOKIE, csrf_ok
from infra import audit
from infra.errors import InvalidInput, NotFound
from infra.users import AUDIT_LOG, OVERRIDE, READ, REVIEW, TECHNOLOGIST, User, may
from store.daily import load_clean_by_day
from store.reconcile import PATIENT_ID_MISMATCH
from store.series import series_of

FLASH_COOKIE = "gatekeeper_flash"
#: Findings in words, for the held queue and a held study's page.
FINDING_WORDS = {
    "ACCESSION_MISSING": "no accession number on the images",
    "ACCESSION_UNKNOWN": "no order has the images' accession number",
    "PATIENT_ID_MISMATCH": "patient ID differs from the order",
    "PATIENT_NAME_MISMATCH": "patient name differs from the order",
    "BIRTH_DATE_MISMATCH": "birth date differs from the order",
    "SEX_MISMATCH": "sex differs from the order",
    "MODALITY_MISMATCH": "modality differs from the order",
    "LATERALITY_MISMATCH": "laterality differs from the order",
    "STUDY_UID_MISMATCH": "Study Instance UID differs from the order's",
    "ORDER_NOT_AUTHORIZED": "the order has no valid authorization",
    "ORDER_CANCELLED": "the order is cancelled or discontinued",
}
#: Days the auth page calls "expiring soon".
EXPIRING_DAYS = 7


def router(desk) -> APIRouter:
    app = desk.app
    pages = APIRouter(include_in_schema=False)
    flashes = URLSafeTimedSerializer(desk.key, salt="gatekeeper review desk flash")

    async def user(request: Request) -> User:
        session = desk.sessions.read(request.cookies.get(SESSION_COOKIE))
        found = await desk.session_user(request)
        if found is None:
            raise LoginRequired("log in first")
        request.state.session, request.state.user = session, found
        try:
            request.state.flash = flashes.loads(request.cookies.get(FLASH_COOKIE, ""), max_age=60)
        except BadSignature:
            request.state.flash = ""
        return found

    async def form(request: Request) -> dict:
        """The posted form, once its CSRF token is checked."""
        data = await request.form()
        if not csrf_ok(getattr(request.state, "session", None) or desk.sessions.read(request.cookies.get(SESSION_COOKIE)),
                       data.get(CSRF_FIELD)):
            raise BadForm("the form was sent without its security token, or with an old one, so nothing was done: "
                          "go back, reload the page and send it again")
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def done(url: str, message: str) -> RedirectResponse:
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(FLASH_COOKIE, flashes.dumps(message), max_age=60, httponly=True, samesite="strict",
                            secure=desk.secure)
        return response

    def page(request: Request, template: str, status: int = 200, **context) -> Response:
        response = desk.page(request, template, status, **context)
        if getattr(request.state, "flash", ""):
            response.delete_cookie(FLASH_COOKIE)
        return response

    def reason_of(data: dict) -> str:
        reason = data.get("reason", "").strip()
        if not reason:
            raise InvalidInput("say why (the reason is required and goes into the audit log): go back and fill it in")
        return reason

    # -- login ----------------------------------------------------------------------------

    def set_session(response: Response, user_name: str | None) -> str:
        session, cookie = desk.sessions.new(user_name)
        response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", secure=desk.secure,
                            max_age=desk.sessions.max_age if user_name else None)
        return session.csrf

    @pages.get("/login")
    async def login_form(request: Request, next: str = "/"):
        if await desk.session_user(request) is not None:
            return RedirectResponse(_safe_next(next), status_code=303)
        return _login_page(request, next, "", 200)

    def _login_page(request: Request, next: str, error: str, status: int) -> Response:
        session, cookie = desk.sessions.new(None)
        request.state.session = session
        response = desk.page(request, "login.html", status, next=_safe_next(next), error=error, user=None)
        response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", secure=desk.secure)
        return response

    @pages.post("/login")
    async def login(request: Request):
        data = await form(request)
        address = request.client.host if request.client else ""
        found = await desk.login(data.get("name", "").strip(), data.get("password", ""), address)
        if found is None:
            return _login_page(request, data.get("next", "/"), "The name or the password is wrong, or the user is "
                               "disabled. Try again, or ask an admin.", 401)
        response = RedirectResponse(_safe_next(data.get("next", "/")), status_code=303)
        set_session(response, found.name)
        return response

    @pages.post("/logout")
    async def logout(request: Request, u: User = Depends(user)):
        await form(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @pages.get("/")
    async def home(u: User = Depends(user)):
        return RedirectResponse("/held" if u.role == TECHNOLOGIST else "/worklist", status_code=303)

    # -- worklist and orders ------------------------------------------------------------------

    @pages.get("/worklist")
    def worklist(request: Request, date: str = "", station: str = "", u: User = Depends(user)):
        day = _day(date) or app.today()
        entries = desk.call(app.gate.day, day, station or None)
        stations: OrderedDict[str, list] = OrderedDict()
        for e in sorted(entries, key=lambda e: (e.order.station_ae, e.order.scheduled_start)):
            stations.setdefault(e.order.station_ae, []).append(e)
        served = sum(e.decision.served for e in entries)
        return page(request, "worklist.html", day=day, station=station, stations=stations, served=served,
                    withheld=len(entries) - served, prev=day - dt.timedelta(days=1), next=day + dt.timedelta(days=1))

    @pages.get("/orders/{accession}")
    def order(request: Request, accession: str, u: User = Depends(user)):
        found = desk.call(app.gate.explain, accession)
        return page(request, "order.html", found=found, may_override=may(u.role, OVERRIDE))

    @pages.post("/orders/{accession}/override")
    async def override(request: Request, accession: str, u: User = Depends(user)):
        data = await form(request)
        desk.need(u, OVERRIDE)
        entry = await desk.acall(app.gate.override, accession, user=u.name, reason=reason_of(data))
        return done(f"/orders/{quote(accession)}", f"Override recorded: {entry.decision.summary()}.")

    # -- held studies ---------------------------------------------------------------------------

    def queue():
        studies = app.store.held_studies()
        orders = app.gate.orders({s.accession_number for s in studies})
        now = app.now()
        return [(s, orders.get(s.accession_number), (now - s.held_since).total_seconds() / 3600) for s in studies]

    @pages.get("/held")
    def held(request: Request, u: User = Depends(user)):
        return page(request, "held.html", rows=desk.call(queue), words=FINDING_WORDS)

    @pages.get("/held/rows")
    def held_rows(request: Request, u: User = Depends(user)):
        return page(request, "held_rows.html", rows=desk.call(queue), words=FINDING_WORDS)

    @pages.get("/held/{study}")
    def held_study(request: Request, study: str, q: str = "", u: User = Depends(user)):
        def load():
            detail = app.store.held_study(study)
            candidates = app.gate.search_orders(q) if q.strip() else []
            return detail, series_of(app.store, study), candidates
        detail, series, candidates = desk.call(load)
        return page(request, "held_study.html", detail=detail, series=series, q=q, candidates=candidates,
                    words=FINDING_WORDS, may_review=may(u.role, REVIEW))

    @pages.get("/held/{study}/series/{series}.png")
    def series_preview(study: str, series: str, u: User = Depends(user)):
        found = [s for s in desk.call(series_of, app.store, study) if s.series_instance_uid == series]
        if not found:
            raise NotFound(f"study {study} has no series {series}")
        return Response(preview.render(found[0].preview_file), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=300"})

    async def review(request: Request, study: str, u: User, action: str):
        data = await form(request)
        desk.need(u, REVIEW)
        reason = reason_of(data)
        if action == "release":
            result = await desk.acall(app.store.release, study, user=u.name, reason=reason)
            return done("/held", f"Study {result.study_instance_uid} released and archived as it is.")
        if action == "reject":
            result = await desk.acall(app.store.reject, study, user=u.name, reason=reason)
            return done("/held", f"Study {result.study_instance_uid} rejected: moved to rejected/, deleted after "
                                 f"{app.settings.rejected_retention_days} days.")
        accession = data.get("accession", "").strip() or None
        confirmed = data.get("confirm") == "yes"
        detail = await desk.acall(app.store.held_study, study)
        target = detail.order if accession is None else await desk.acall(app.gate.order, accession)
        if target is None:
            raise NotFound(f"study {study} has no order to correct it from; search for the right order on its page "
                           "and reassign the study")
        if not confirmed and _patient_changes(detail, target):
            return page(request, "confirm.html", detail=detail, target=target, reason=reason,
                        accession=accession or "", words=FINDING_WORDS)
        result = await desk.acall(app.store.correct, study, user=u.name, reason=reason, accession=accession,
                                  patient_change=confirmed)
        text = (f"Study {result.study_instance_uid} corrected from order {result.accession_number} and archived; "
                f"changed: {', '.join(result.changed) or 'nothing'}.")
        if result.remaining_codes:
            text += f" Still differs (correction cannot fix these): {', '.join(result.remaining_codes)}."
        return done("/studies", text)

    @pages.post("/held/{study}/release")
    async def release(request: Request, study: str, u: User = Depends(user)):
        return await review(request, study, u, "release")

    @pages.post("/held/{study}/correct")
    async def correct(request: Request, study: str, u: User = Depends(user)):
        return await review(request, study, u, "correct")

    @pages.post("/held/{study}/reject")
    async def reject(request: Request, study: str, u: User = Depends(user)):
        return await review(request, study, u, "reject")

    # -- studies, auths, report, audit -------------------------------------------------------------

    @pages.get("/studies")
    def studies(request: Request, accession: str = "", u: User = Depends(user)):
        found = desk.call(app.store.archived_studies, accession.strip() or None)
        return page(request, "studies.html", studies=found[:500], total=len(found), accession=accession)

    @pages.get("/auths")
    def auths(request: Request, u: User = Depends(user)):
        today = app.today()
        found = desk.call(app.gate.auths_current)
        return page(request, "auths.html", auths=found, today=today,
                    soon=today + dt.timedelta(days=EXPIRING_DAYS), expiring_days=EXPIRING_DAYS)

    @pages.get("/report")
    def report(request: Request, since: str = "", u: User = Depends(user)):
        desk.need(u, READ)
        today = app.today()
        start = _day(since) or today - dt.timedelta(days=30)
        if start > today:
            raise InvalidInput(f"{start} is in the future; pick a day on or before {today}")
        r, days = desk.call(lambda: (app.store.report(start), load_clean_by_day(app.store.index, start, today)))
        withheld = [(code, n) for code, n in r.withheld_by_reason.items() if n]
        held_rows = [(code, h.studies) for code, h in r.held_by_reason.items() if h.studies]
        medians = {code: f"(median {h.median_hours_held:.1f} h)" for code, h in r.held_by_reason.items()
                   if h.studies and h.median_hours_held is not None}
        return page(request, "report.html", r=r, since=start,
                    withheld_svg=charts.bars(withheld, title="Orders withheld, by reason"),
                    clean_svg=charts.line([(d.day.isoformat(), d.rate) for d in days],
                                          title="Clean-match rate, by day received"),
                    held_svg=charts.bars(held_rows, title="Studies held, by reason", note=medians))

    @pages.get("/audit")
    def audit_log(request: Request, before: int | None = None, u: User = Depends(user)):
        desk.need(u, AUDIT_LOG)
        events = desk.call(audit.recent, 200, before)
        return page(request, "audit.html", events=events, older=events[-1].id if len(events) == 200 else None)

    return pages


def _patient_changes(detail, target) -> bool:
    """Whether correcting from ``target`` gives the images another patient ID than they carry now."""
    on_images = next((f.instance_value for f in detail.findings if f.code == PATIENT_ID_MISMATCH), None)
    if on_images is None:
        on_images = detail.order.patient_id if detail.order is not None else None
    return on_images is None or on_images != target.patient_id


def _day(text: str) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a date; pick one as YYYY-MM-DD") from None


def _safe_next(url: str) -> str:
    """A local path to go to after the login, never another site."""
    return url if url.startswith("/") and not url.startswith("//") and "\\" not in url else "/"
