"""Named users of the review desk and the API, their roles, and their passwords.

A user has a name, one role of :data:`ROLES` and an argon2id password hash (never the
password). :class:`Users` is the use case every front end calls: the CLI manages users
(``gatekeeper users``), the HTTP front end checks logins. Every change is audited with
who made it. What a role may do is :func:`may`, one table for every front end:

- ``technologist`` reviews held studies (release, correct, reassign, reject);
- ``scheduler`` overrides withheld orders and imports orders and auths;
- ``billing`` reads;
- ``admin`` does all of it and manages users.

Every role reads the worklist, the held queue, the studies, the auths and the report;
only ``admin`` reads the audit log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

import peewee as pw
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from infra import audit
from infra.db import BaseModel
from infra.errors import AlreadyExists, InvalidInput, NotFound

TECHNOLOGIST, SCHEDULER, BILLING, ADMIN = "technologist", "scheduler", "billing", "admin"
ROLES = (TECHNOLOGIST, SCHEDULER, BILLING, ADMIN)

#: What each action needs: the roles allowed (admin is always allowed).
READ, REVIEW, OVERRIDE, IMPORT, AUDIT_LOG, MANAGE_USERS = "read", "review", "override", "import", "audit", "users"
PERMISSIONS: dict[str, frozenset[str]] = {
    READ: frozenset(ROLES),
    REVIEW: frozenset({TECHNOLOGIST, ADMIN}),
    OVERRIDE: frozenset({SCHEDULER, ADMIN}),
    IMPORT: frozenset({SCHEDULER, ADMIN}),
    AUDIT_LOG: frozenset({ADMIN}),
    MANAGE_USERS: frozenset({ADMIN}),
}
#: Shortest password accepted.
MIN_PASSWORD = 10
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

#: Audit actions (subject: the user's name).
AUDIT_ADDED, AUDIT_DISABLED, AUDIT_PASSWORD = "user.added", "user.disabled", "user.password_changed"

_hasher = PasswordHasher()
#: A hash to verify against when the name is unknown, so that a wrong name costs as long as a wrong password.
_DUMMY = _hasher.hash("not a password of anyone")


class UserRow(BaseModel):
    name = pw.CharField(unique=True)
    role = pw.CharField()
    password_hash = pw.CharField()
    disabled = pw.BooleanField(default=False)
    created_at = pw.DateTimeField()
    password_changed_at = pw.DateTimeField()

    class Meta:
        table_name = "users"


MODELS = [UserRow]


@dataclass(frozen=True)
class User:
    name: str
    role: str
    disabled: bool
    created_at: dt.datetime
    password_changed_at: dt.datetime | None = None
    #: Changes whenever the password does (a digest of the salted hash, not the hash).
    password_stamp: str = ""

    def may(self, action: str) -> bool:
        return not self.disabled and may(self.role, action)


def may(role: str, action: str) -> bool:
    """Whether ``role`` may do ``action`` (one of :data:`PERMISSIONS`)."""
    return role in PERMISSIONS[action]


def who_may(action: str) -> str:
    """The roles allowed ``action``, in words ("technologist or admin")."""
    return " or ".join(r for r in ROLES if r in PERMISSIONS[action])


def _user(row: UserRow) -> User:
    return User(row.name, row.role, bool(row.disabled), row.created_at, row.password_changed_at,
                hashlib.sha256(row.password_hash.encode()).hexdigest()[:16])


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise InvalidInput(f"{name!r} is not a user name: use 1 to 64 lower-case letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"{role!r} is not a role; use one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password has {len(password)} characters; use at least {MIN_PASSWORD}")
    if password != password.strip() or "\n" in password:
        raise InvalidInput("the password starts or ends with a space, or holds a line break; type it again")
    return password


class Users:
    """The users of one database."""

    def __init__(self, db: pw.Database, clock) -> None:
        self.db = db
        self.clock = clock

    def add(self, name: str, role: str, password: str, *, by: str) -> User:
        check_name(name), check_role(role), check_password(password)
        now = self.clock()
        with self.db.atomic():
            if UserRow.get_or_none(UserRow.name == name) is not None:
                raise AlreadyExists(f"user {name} exists already; 'gatekeeper users password {name}' sets a new "
                                    "password")
            row = UserRow.create(name=name, role=role, password_hash=_hasher.hash(password), created_at=now,
                                 password_changed_at=now)
            audit.record(now, by, AUDIT_ADDED, name, role=role)
        return _user(row)

    def list(self) -> list[User]:
        return [_user(r) for r in UserRow.select().order_by(UserRow.name)]

    def get(self, name: str) -> User:
        row = UserRow.get_or_none(UserRow.name == name)
        if row is None:
            raise NotFound(f"no user is named {name!r}; 'gatekeeper users list' shows them")
        return _user(row)

    def disable(self, name: str, *, by: str) -> User:
        with self.db.atomic():
            self.get(name)
            UserRow.update(disabled=True).where(UserRow.name == name).execute()
            audit.record(self.clock(), by, AUDIT_DISABLED, name)
        return self.get(name)

    def set_password(self, name: str, password: str, *, by: str) -> User:
        check_password(password)
        now = self.clock()
        with self.db.atomic():
            self.get(name)
            UserRow.update(password_hash=_hasher.hash(password), password_changed_at=now).where(
                UserRow.name == name).execute()
            audit.record(now, by, AUDIT_PASSWORD, name)
        return self.get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The enabled user with this name and password, else None (same cost either way)."""
        row = UserRow.get_or_none(UserRow.name == name)
        try:
            _hasher.verify(row.password_hash if row is not None else _DUMMY, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled:
            return None
        return _user(row)
