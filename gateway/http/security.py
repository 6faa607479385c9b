"""Logins of the review desk and the API: the signing key, sessions, CSRF tokens, HTTP Basic
and the slowing of failed logins.

- The signing key is made on first start in the storage root (``desk-session.key``, mode
  0600) and never leaves the machine; deleting it logs everyone out.
- A browser session is a signed cookie (itsdangerous, HMAC-SHA1 over a timestamped
  payload; HttpOnly, SameSite=Strict, Secure over HTTPS) carrying the user's name and the
  session's CSRF token; it lasts ``http.session_hours``. Every request re-reads the user,
  so a disabled user is out at once.
- Every form carries the session's CSRF token; a POST without it, or with another, is refused.
- ``/api/`` takes HTTP Basic with the same users. A verified password is remembered for a
  few minutes under an HMAC of name and password, so a script's calls do not each pay
  for argon2; a changed password or a disabled user takes effect at once all the same.
- Failed logins are slowed per user name and per address: after :data:`FREE_FAILURES`
  failures in :data:`FAILURE_WINDOW` seconds, each further answer waits twice as long as
  the last, up to :data:`MAX_DELAY` seconds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

KEY_FILE = "desk-session.key"
SESSION_COOKIE = "gatekeeper_session"
CSRF_FIELD = "csrf"
FREE_FAILURES = 3
FAILURE_WINDOW = 15 * 60
MAX_DELAY = 16.0
#: Seconds a verified HTTP Basic password is remembered.
BASIC_CACHE_SECONDS = 300


def load_or_create_key(folder: Path) -> bytes:
    """The signing key in ``folder`` (created 0600 when absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes().strip()
        if len(key) < 32:
            raise ValueError(f"{path} is shorter than a signing key; delete it and start again (everyone logs in "
                             "again)") from None
        return key
    key = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as out:
        out.write(key)
        out.flush()
        os.fsync(out.fileno())
    return key


@dataclass(frozen=True)
class Session:
    user: str | None  # None: not logged in (the login form's token only)
    csrf: str


class Sessions:
    """Signed session cookies."""

    def __init__(self, key: bytes, hours: int) -> None:
        self.serializer = URLSafeTimedSerializer(key, salt="gatekeeper review desk session")
        self.max_age = hours * 3600

    def new(self, user: str | None) -> tuple[Session, str]:
        session = Session(user, secrets.token_urlsafe(32))
        return session, self.serializer.dumps({"u": user, "c": session.csrf})

    def read(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self.serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # tampered, another key, or expired (SignatureExpired is a BadSignature)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        return Session(data.get("u"), data["c"])


def csrf_ok(session: Session | None, sent: str | None) -> bool:
    return bool(session and sent and hmac.compare_digest(session.csrf, sent))


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(name, password) of an ``Authorization: Basic`` header, else None."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        name, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if sep else None


class Throttle:
    """Slows answers after failed logins, per user name and per address."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.failures: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        kept = [t for t in self.failures.get(key, ()) if now - t < FAILURE_WINDOW]
        if kept:
            self.failures[key] = kept
        else:
            self.failures.pop(key, None)
        return kept

    def delay(self, name: str, address: str) -> float:
        """Seconds to wait before answering a login of ``name`` from ``address``."""
        now = self.clock()
        with self.lock:
            n = max(len(self._recent(f"u:{name}", now)), len(self._recent(f"a:{address}", now)))
        if n < FREE_FAILURES:
            return 0.0
        return min(2.0 ** (n - FREE_FAILURES), MAX_DELAY)

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        with self.lock:
            if len(self.failures) > 10_000:  # a scan of names must not grow this without bound
                self.failures = {k: v for k, v in self.failures.items() if now - v[-1] < FAILURE_WINDOW}
            for key in (f"u:{name}", f"a:{address}"):
                self.failures.setdefault(key, []).append(now)

    def succeeded(self, name: str) -> None:
        with self.lock:
            self.failures.pop(f"u:{name}", None)


class BasicCache:
    """Passwords verified lately, under an HMAC of name and password (never the password)."""

    def __init__(self, key: bytes, clock=time.monotonic) -> None:
        self.key = key
        self.clock = clock
        self.seen: dict[bytes, tuple[str, float]] = {}
        self.lock = threading.Lock()

    def _mac(self, name: str, password: str, stamp: str) -> bytes:
        return hmac.new(self.key, f"{name}\0{password}\0{stamp}".encode(), hashlib.sha256).digest()

    def get(self, name: str, password: str, stamp: str) -> bool:
        mac = self._mac(name, password, stamp)
        with self.lock:
            found = self.seen.get(mac)
            return bool(found and self.clock() - found[1] < BASIC_CACHE_SECONDS)

    def put(self, name: str, password: str, stamp: str) -> None:
        with self.lock:
            if len(self.seen) > 1000:
                self.seen.clear()
            self.seen[self._mac(name, password, stamp)] = (name, self.clock())
