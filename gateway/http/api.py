"""The HTTP API under ``/api/``: the CLI's ``--json`` shapes (:mod:`gateway.shapes`) over HTTP Basic.

Reads need any role; ``override`` the scheduler (or admin); release, correct and reject
the technologist (or admin); imports the scheduler (or admin). Every change is audited
with the logged-in user. Errors are problem details (:mod:`gateway.http.problems`).
"""

from __future__ import annotations

import datetime as dt
import json

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from gateway import shapes
from gateway.http.problems import LoginRequired
from gateway.http.security import basic_credentials
from infra.errors import InvalidInput
from infra.users import IMPORT, OVERRIDE, READ, REVIEW, User
from worklist.claim_response import is_claim_response, parse_claim_responses

#: Largest import body accepted (bytes).
MAX_IMPORT_BYTES = 64 * 1024 * 1024
#: The report's period when ``since`` is not given (as the CLI's).
DEFAULT_REPORT_DAYS = 30
_TEXT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
    "application/x-ndjson": {"schema": {"type": "string"}}}}}
_AUTH_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"oneOf": [{"type": "array", "items": {"type": "object"}},
                                               {"type": "object", "description": "FHIR R4 ClaimResponse (Da Vinci PAS) "
                                                                                 "or a Bundle holding one"}]}},
    "application/fhir+json": {"schema": {"type": "object"}},
    "application/x-ndjson": {"schema": {"type": "string"}},
    "text/csv": {"schema": {"type": "string"}}}}}


class Decision(BaseModel):
    reason: str = Field(description="why (for the audit log); required")


class Correction(Decision):
    accession: str | None = Field(None, description="reassign the study to this order first")
    patient_change: bool = Field(False, description="confirm that the images move to another patient")


def router(desk) -> APIRouter:
    app = desk.app
    api = APIRouter(prefix="/api", tags=["api"])

    async def user(request: Request) -> User:
        creds = basic_credentials(request.headers.get("authorization"))
        if creds is None:
            raise LoginRequired("this API needs HTTP Basic with the name and password of a review desk user "
                                "(gatekeeper users add NAME --role ROLE)")
        found = await desk.basic_user(*creds, request.client.host if request.client else "")
        if found is None:
            raise LoginRequired("the user name or password is wrong, or the user is disabled; check them, or ask "
                                "an admin")
        return found

    def reader(u: User = Depends(user)) -> User:
        desk.need(u, READ)
        return u

    @api.get("/worklist", summary="a day's orders, served or withheld, with reasons (worklist --json)")
    def worklist(date: dt.date | None = None, station: str | None = None, u: User = Depends(reader)) -> dict:
        day = date or app.today()
        return shapes.day_json(day, app.now(), station, desk.call(app.gate.day, day, station))

    @api.get("/orders/{accession}/why", summary="why one order is served or withheld (worklist why --json)")
    def why(accession: str, u: User = Depends(reader)) -> dict:
        return shapes.why_json(desk.call(app.gate.explain, accession))

    @api.post("/orders/{accession}/override", summary="serve a withheld order without an auth (scheduler)")
    def override(accession: str, body: Decision, u: User = Depends(user)) -> dict:
        desk.need(u, OVERRIDE)
        entry = desk.call(app.gate.override, accession, user=u.name, reason=body.reason)
        return shapes.decision_json(entry.order, entry.decision)

    @api.get("/held", summary="held studies, oldest first (held list --json)")
    def held(u: User = Depends(reader)) -> dict:
        return {"held": [shapes.held_json(s) for s in desk.call(app.store.held_studies)]}

    @api.get("/held/{study}", summary="one held study by Study Instance UID or accession (held show --json)")
    def held_show(study: str, u: User = Depends(reader)) -> dict:
        return shapes.held_detail_json(desk.call(lambda: app.store.held_study(app.store.find_held(study))))

    def act(study: str, u: User, action, **kwargs) -> dict:
        desk.need(u, REVIEW)

        def run():
            return action(app.store.find_held(study), user=u.name, **kwargs)
        return shapes.review_json(desk.call(run))

    @api.post("/held/{study}/release", summary="archive a held study as it is (technologist)")
    def release(study: str, body: Decision, u: User = Depends(user)) -> dict:
        return act(study, u, app.store.release, reason=body.reason)

    @api.post("/held/{study}/correct", summary="correct from the order (or reassign), then archive (technologist)")
    def correct(study: str, body: Correction, u: User = Depends(user)) -> dict:
        return act(study, u, app.store.correct, reason=body.reason, accession=body.accession or None,
                   patient_change=body.patient_change)

    @api.post("/held/{study}/reject", summary="move a held study to rejected/ (technologist)")
    def reject(study: str, body: Decision, u: User = Depends(user)) -> dict:
        return act(study, u, app.store.reject, reason=body.reason)

    @api.get("/studies", summary="archived studies, newest first (studies list --json)")
    def studies(accession: str | None = None, u: User = Depends(reader)) -> dict:
        return {"studies": [shapes.studies_json(s) for s in desk.call(app.store.archived_studies, accession)]}

    @api.get("/auths", summary="auths valid today or later, soonest end first, with units left")
    def auths(u: User = Depends(reader)) -> dict:
        return {"auths": [shapes.auth_json(a) for a in desk.call(app.gate.auths_current)]}

    @api.get("/policies", summary="the medical necessity policies on file (policies list --json)")
    def policies(u: User = Depends(reader)) -> dict:
        return {"policies": [shapes.policy_json(p) for p in desk.call(app.gate.necessity_policies)]}

    @api.get("/report", summary="the report's figures (report --json)")
    def report(since: dt.date | None = None, u: User = Depends(reader)) -> dict:
        start = since or app.today() - dt.timedelta(days=DEFAULT_REPORT_DAYS)
        if start > app.today():
            raise InvalidInput(f"since {start} is in the future; give a day on or before {app.today()}")
        return shapes.report_json(desk.call(app.store.report, start))

    async def body_text(request: Request) -> str:
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_IMPORT_BYTES:
            raise InvalidInput(f"the body has {size:,} bytes; send at most {MAX_IMPORT_BYTES:,} a request, in parts")
        raw = await request.body()
        if len(raw) > MAX_IMPORT_BYTES:
            raise InvalidInput(f"the body has more than {MAX_IMPORT_BYTES:,} bytes; send it in parts")
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InvalidInput("the body is not UTF-8 text; send it as UTF-8") from None

    def imported(kind: str, count: int, result) -> dict:
        return {"imported": kind, "records": count, "created": result.created, "updated": result.updated}

    @api.post("/orders/import", summary="import orders (JSON array or NDJSON), all or nothing (scheduler)",
              openapi_extra=_TEXT_BODY)
    async def import_orders(request: Request, u: User = Depends(user)) -> dict:
        desk.need(u, IMPORT)
        text = await body_text(request)
        count, result = await desk.acall(app.gate.import_orders_text, text, "request body", user=u.name)
        return imported("orders", count, result)

    @api.post("/auths/import", summary="import auths (JSON, NDJSON, CSV, or a FHIR R4 ClaimResponse), all or nothing",
              openapi_extra=_AUTH_BODY)
    async def import_auths(request: Request, u: User = Depends(user),
                           facility_npi: str | None = Query(None, description="for a ClaimResponse without one"),
                           ordering_npi: str | None = Query(None, description="for a ClaimResponse without one")) -> dict:
        desk.need(u, IMPORT)
        text = await body_text(request)
        resource = _json_object(text)
        if resource is not None and is_claim_response(resource):
            defaults = {k: v for k, v in (("facility_npi", facility_npi), ("ordering_npi", ordering_npi)) if v}
            found = parse_claim_responses(resource, "ClaimResponse", defaults)
            result = await desk.acall(app.gate.import_auths, found, user=u.name, source="ClaimResponse")
            return imported("auths", len(found), result)
        count, result = await desk.acall(app.gate.import_auths_text, text, "request body", user=u.name)
        return imported("auths", count, result)

    @api.post("/policies/import", summary="replace the necessity policies of each payer in the body (JSON array, "
                                          "NDJSON or CSV), all or nothing (scheduler)", openapi_extra=_TEXT_BODY)
    async def import_policies(request: Request, u: User = Depends(user)) -> dict:
        desk.need(u, IMPORT)
        text = await body_text(request)
        count, result = await desk.acall(app.gate.import_policies_text, text, "request body", user=u.name)
        return imported("policies", count, result)

    return api


def _json_object(text: str) -> dict | None:
    """The body as one JSON object (a FHIR resource), else None (an array, NDJSON, CSV)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None  # NDJSON, or broken JSON: the import names the line
    return value if isinstance(value, dict) else None
