"""The review desk (web pages) and the HTTP API, one ASGI application on ``[http]`` port.

:func:`build` composes it over an :class:`~gateway.app.App`: the pages
(:mod:`gateway.http.pages`), the API under ``/api/`` (:mod:`gateway.http.api`), the
local assets under ``/static/``, logins (:mod:`gateway.http.security`) and the one error
map (:mod:`gateway.http.problems`). :func:`start` runs it with uvicorn on a thread of
``gatekeeper serve``; :meth:`DeskServer.stop` stops it.

The handlers call the core through :meth:`Desk.call`, which gives the request's worker
thread a database connection for the call (peewee keeps one per thread).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from gateway.http import problems
from gateway.http.security import SESSION_COOKIE, BasicCache, Sessions, Throttle, load_or_create_key
from gateway.metrics import connected
from gateway.settings import port_unavailable
from infra.errors import GatekeeperError
from infra.users import User, may, who_may

log = logging.getLogger("gateway.http")

HERE = Path(__file__).resolve().parent
#: What each permission is called in a refusal ("your role billing may not <this>").
ACTIONS = {"review": "release, correct or reject held studies", "override": "override withheld orders",
           "import": "import orders or auths", "audit": "read the audit log", "users": "manage users",
           "read": "read"}


class Desk:
    """What every handler needs: the app, sessions, the login throttle, templates."""

    def __init__(self, app, key: bytes, *, secure: bool = False, throttle: Throttle | None = None,
                 sleep=asyncio.sleep) -> None:
        self.app = app
        self.key = key
        self.secure = secure
        self.sessions = Sessions(key, app.settings.http_session_hours)
        self.throttle = throttle or Throttle()
        self.basic_cache = BasicCache(key)
        self.sleep = sleep
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    # -- the core -----------------------------------------------------------------------

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` with a database connection for this thread."""
        with connected(self.app.db):
            return fn(*args, **kwargs)

    async def acall(self, fn, *args, **kwargs):
        return await run_in_threadpool(self.call, fn, *args, **kwargs)

    # -- who is asking ----------------------------------------------------------------------

    async def login(self, name: str, password: str, address: str) -> User | None:
        """The user with this name and password, slowed after failed attempts; None when wrong."""
        delay = self.throttle.delay(name, address)
        if delay:
            log.warning("login of %r from %s slowed by %.0fs after failed attempts", name, address, delay)
            await self.sleep(delay)
        user = await self.acall(self.app.users.authenticate, name, password)
        if user is None:
            self.throttle.failed(name, address)
            log.warning("failed login of %r from %s", name, address)
            return None
        self.throttle.succeeded(name)
        return user

    async def basic_user(self, name: str, password: str, address: str) -> User | None:
        """HTTP Basic: as :meth:`login`, with recently verified passwords remembered."""
        try:
            known = await self.acall(self.app.users.get, name)
        except GatekeeperError:
            known = None
        stamp = known.password_stamp if known else ""
        if known is not None and not known.disabled and self.basic_cache.get(name, password, stamp):
            return known
        user = await self.login(name, password, address)
        if user is not None:
            self.basic_cache.put(name, password, user.password_stamp)
        return user

    async def session_user(self, request: Request) -> User | None:
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None or not session.user:
            return None
        try:
            user = await self.acall(self.app.users.get, session.user)
        except GatekeeperError:
            return None
        return None if user.disabled else user

    @staticmethod
    def need(user: User, action: str) -> None:
        if not may(user.role, action):
            raise problems.Forbidden(f"your role, {user.role}, may not {ACTIONS[action]}: ask a {who_may(action)}")

    # -- pages ----------------------------------------------------------------------------

    def page(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        session = getattr(request.state, "session", None)
        context.setdefault("user", getattr(request.state, "user", None))
        context["csrf"] = session.csrf if session else ""
        context["flash"] = getattr(request.state, "flash", "")
        context["path"] = request.url.path
        context["now"] = self.app.now()
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    def error_page(self, request: Request, status: int, title: str, detail: str) -> HTMLResponse:
        return self.page(request, "error.html", status=status, title=title, detail=detail)


def build(app, key: bytes | None = None, **options) -> FastAPI:
    """The ASGI application of the review desk and the API over ``app``."""
    from gateway.http import api as api_routes, pages as page_routes

    if key is None:
        key = load_or_create_key(app.settings.storage_root)
    desk = Desk(app, key, **options)
    web = FastAPI(title="Imaging gatekeeper API", version=_version(), openapi_url="/api/openapi.json",
                  docs_url=None, redoc_url=None,
                  description="The worklist gate, the held studies and the report. HTTP Basic with the "
                              "review desk's users; errors are RFC 9457 problem details.")
    web.state.desk = desk
    web.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    web.include_router(api_routes.router(desk))
    web.include_router(page_routes.router(desk))
    problems.install(web, desk.error_page)

    return web


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("imaging-gatekeeper")
    except Exception:
        return "0"


# ---------------------------------------------------------------- running inside serve


class DeskServer:
    """uvicorn on a daemon thread, on a socket bound before the thread starts."""

    def __init__(self, server, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    def stop(self, timeout: float = 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def start(app, timeout: float = 15) -> DeskServer | None:
    """Serve the review desk on ``http.port`` (None when it is 0). Raises GatekeeperError when it cannot listen."""
    import uvicorn

    s = app.settings
    if not s.http_port:
        return None
    try:
        sock = socket.create_server((s.http_bind_address, s.http_port), reuse_port=False, backlog=128)
    except OSError as exc:
        raise GatekeeperError(port_unavailable(exc, setting="http.port", address_setting="http.bind_address",
                                               address=s.http_bind_address, port=s.http_port, source=s.source,
                                               serves=" for the review desk", off=" (0 turns it off)")) from None
    tls = s.http_tls_cert is not None
    if not tls and not is_loopback(s.http_bind_address):
        log.warning("the review desk listens on %s:%s without TLS: passwords and patient data cross the network "
                    "in clear; set http.tls_cert and http.tls_key in %s", s.http_bind_address, s.http_port, s.source)
    try:
        web = build(app, secure=tls)
        config = uvicorn.Config(web, log_level="warning", access_log=False, lifespan="off",
                                ssl_certfile=str(s.http_tls_cert) if tls else None,
                                ssl_keyfile=str(s.http_tls_key) if tls else None, timeout_keep_alive=5)
        server = uvicorn.Server(config)
    except (OSError, ValueError) as exc:  # a TLS file that does not load, a bad key file
        sock.close()
        raise GatekeeperError(f"the review desk cannot start: {exc}. Check http.tls_cert and http.tls_key in "
                              f"{s.source}") from None
    server.install_signal_handlers = lambda: None  # serve owns the signals
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="gatekeeper-desk", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        raise GatekeeperError(f"the review desk did not start on {s.http_bind_address}:{s.http_port}; the log says "
                              "why")
    log.info("review desk listening on %s://%s:%s", "https" if tls else "http", s.http_bind_address, s.http_port)
    return DeskServer(server, thread)
