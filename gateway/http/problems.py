"""The review desk's and the API's answer to every error, in one place.

A core error (:mod:`infra.errors`) and the front end's own two (no login, wrong role)
get an HTTP status here and nowhere else: 401 no login, 403 role (or a caller the core does not authorize), 404 unknown, 409 wrong
state or refused, 422 bad input, 503 out of resources or a storage failure. Under
``/api/`` the body is an RFC 9457 problem details object
(``application/problem+json``: ``type``, ``title``, ``status``, ``detail``, and for a
rejected import ``problems``, one per bad record); a page gets the same sentence in HTML.
"""

from __future__ import annotations

import logging

from infra.errors import (AlreadyExists, GatekeeperError, InvalidInput, NotAuthorized, NotFound, NotSupported, OutOfResources,
                          Refused, StorageFailure, WrongState)

log = logging.getLogger("gateway.http")

PROBLEM_TYPE = "application/problem+json"


class LoginRequired(GatekeeperError):
    """No session, or HTTP Basic credentials missing or wrong."""


class Forbidden(GatekeeperError):
    """The user's role may not do this."""


class NotFoundPage(NotFound):
    """No route has that path."""


class BadForm(InvalidInput):
    """A form without its CSRF token, or with a stale one."""


#: (error class, status, title, type slug), the first that matches wins (subclasses first).
STATUSES: tuple[tuple[type[Exception], int, str, str], ...] = (
    (LoginRequired, 401, "Login required", "login-required"),
    (Forbidden, 403, "Not allowed for this role", "forbidden"),
    (BadForm, 403, "Form refused", "csrf"),
    (NotAuthorized, 403, "Not authorized", "not-authorized"),
    (NotFound, 404, "Not found", "not-found"),
    (AlreadyExists, 409, "Already exists", "already-exists"),
    (WrongState, 409, "Wrong state", "wrong-state"),
    (Refused, 409, "Refused", "refused"),
    (NotSupported, 422, "Not supported", "not-supported"),
    (InvalidInput, 422, "Invalid input", "invalid-input"),
    (OutOfResources, 503, "Out of resources", "out-of-resources"),
    (StorageFailure, 503, "Storage failure", "storage-failure"),
    (GatekeeperError, 409, "Refused", "refused"),
)


def status_of(exc: GatekeeperError) -> tuple[int, str, str]:
    """(HTTP status, title, type slug) of an error."""
    for kind, status, title, slug in STATUSES:
        if isinstance(exc, kind):
            return status, title, slug
    raise AssertionError("GatekeeperError is the last entry")


def problem(exc: GatekeeperError) -> tuple[int, dict]:
    """The status and the RFC 9457 body of an error."""
    status, title, slug = status_of(exc)
    body = {"type": f"/api/problems/{slug}", "title": title, "status": status, "detail": str(exc)}
    found = getattr(exc, "problems", None)
    if found:  # a rejected import (worklist.intake.IntakeError): every bad record, by number, line and field
        body["problems"] = [{"record": p.record, "line": p.line, "field": p.field, "message": p.message}
                            for p in found]
    return status, body


def install(api, render_page) -> None:
    """Register the one handler: problem+json under /api/, ``render_page(request, status, title, detail)`` else."""
    from fastapi.responses import JSONResponse, RedirectResponse
    from urllib.parse import quote

    @api.exception_handler(GatekeeperError)
    async def gatekeeper_error(request, exc: GatekeeperError):
        status, body = problem(exc)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc)
        if request.url.path.startswith("/api/"):
            headers = {"WWW-Authenticate": 'Basic realm="gatekeeper", charset="UTF-8"'} if status == 401 else None
            return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)
        if status == 401:
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        return render_page(request, status, body["title"], body["detail"])

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        wrong = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return await gatekeeper_error(request, InvalidInput(f"the request is not as this endpoint expects ({wrong}); "
                                                            "see /api/openapi.json"))

    @api.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        if exc.status_code == 404:
            return await gatekeeper_error(request, NotFoundPage(f"there is no page {request.url.path}"))
        body = {"type": "about:blank", "title": str(exc.detail), "status": exc.status_code,
                "detail": f"{request.method} {request.url.path}: {exc.detail}"}
        if request.url.path.startswith("/api/"):
            return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM_TYPE)
        return render_page(request, exc.status_code, body["title"], body["detail"])
