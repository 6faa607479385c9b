"""The audit log: who did what, when and why. Append-only.

The product has no code path that edits it, and :func:`protect` makes the database
itself refuse UPDATE and DELETE on it. ``user`` is the person (or ``job:NAME``, or the
calling AE title of a modality); ``subject`` an accession number, auth number or Study
Instance UID; ``detail`` a JSON object.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Iterable, Iterator

import peewee as pw

from infra.db import BaseModel, batches


class AuditEvent(BaseModel):
    """Who did what, when and why. Never updated or deleted."""

    at = pw.DateTimeField(index=True)
    user = pw.CharField()
    action = pw.CharField(index=True)
    subject = pw.CharField(index=True)  # an accession number, auth number or Study Instance UID
    reason = pw.TextField(default="")
    detail = pw.TextField(default="{}")  # JSON

    class Meta:
        table_name = "audit_log"


#: The INSERT of an event per SQL dialect: built once, not by peewee per event (which costs
#: more than the insert itself where every message of a feed writes events).
_INSERT: dict[tuple, str] = {}
_COLUMNS = ("at", "user", "action", "subject", "reason", "detail")


def record(at: dt.datetime, user: str, action: str, subject: str, reason: str = "", **detail) -> int:
    """Append one event to the audit log (inside the caller's transaction); return its id."""
    db = AuditEvent._meta.database
    key = (type(db), db.param, db.quote)
    sql = _INSERT.get(key)
    if sql is None:
        q = db.quote[0] + "{}" + db.quote[-1]
        sql = _INSERT[key] = (f"INSERT INTO {q.format(AuditEvent._meta.table_name)} "
                              f"({', '.join(q.format(AuditEvent._meta.fields[c].column_name) for c in _COLUMNS)}) "
                              f"VALUES ({', '.join([db.param] * len(_COLUMNS))})")
        if isinstance(db, pw.PostgresqlDatabase):
            sql = _INSERT[key] = sql + f" RETURNING {q.format(AuditEvent._meta.primary_key.column_name)}"
    values = (at, user, action, subject, reason, json.dumps(detail, sort_keys=True, default=str))
    cursor = db.execute_sql(sql, [AuditEvent._meta.fields[c].db_value(v) for c, v in zip(_COLUMNS, values)])
    return cursor.fetchone()[0] if isinstance(db, pw.PostgresqlDatabase) else cursor.lastrowid


def details(actions: Iterable[str], subjects: Iterable[str]) -> Iterator[tuple[str, dict]]:
    """(subject, detail) of every event with one of ``actions`` about one of ``subjects``."""
    actions = list(actions)
    for batch in batches(sorted(set(subjects))):
        query = (AuditEvent.select(AuditEvent.subject, AuditEvent.detail)
                 .where(AuditEvent.action.in_(actions) & AuditEvent.subject.in_(batch)))
        for subject, detail in query.tuples():
            yield subject, json.loads(detail or "{}")


def counts_since(actions: Iterable[str], start: dt.datetime) -> dict[str, int]:
    """How many events of each of ``actions`` were recorded from ``start`` on (0 for none)."""
    actions = list(actions)
    query = (AuditEvent.select(AuditEvent.action, pw.fn.COUNT(AuditEvent.id))
             .where(AuditEvent.action.in_(actions) & (AuditEvent.at >= start)).group_by(AuditEvent.action))
    found = dict(query.tuples())
    return {action: found.get(action, 0) for action in actions}


def recent(limit: int = 200, before_id: int | None = None) -> list[AuditEvent]:
    """The latest events, newest first; ``before_id`` pages back."""
    query = AuditEvent.select()
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return list(query.order_by(AuditEvent.id.desc()).limit(limit))


def events_after(last_id: int, limit: int) -> list[AuditEvent]:
    """Up to ``limit`` events with an id above ``last_id``, oldest first (the outbox's read)."""
    return list(AuditEvent.select().where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(limit))


def listing(*, since: dt.datetime | None = None, actor: str | None = None, study: str | None = None,
            accession: str | None = None, limit: int = 100, oldest_first: bool = False) -> list[AuditEvent]:
    """Events matching every filter given, newest first (or oldest first), at most ``limit``.

    ``study`` and ``accession`` match the subject, or the detail's ``study_instance_uid``
    and ``accession_number`` (an event about a study names its accession in the detail).
    """
    query = AuditEvent.select()
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if actor:
        query = query.where(AuditEvent.user == actor)
    for value, key in ((study, "study_instance_uid"), (accession, "accession_number")):
        if value:
            # the detail is JSON written by record() (sort_keys, ", " and ": "); the LIKE only narrows,
            # the exact test on the parsed detail is below
            query = query.where((AuditEvent.subject == value) | AuditEvent.detail.contains(json.dumps(value)))
    order = AuditEvent.id.asc() if oldest_first else AuditEvent.id.desc()
    found = []
    for event in query.order_by(order).iterator():
        detail = json.loads(event.detail or "{}")
        if all(not value or event.subject == value or detail.get(key) == value
               for value, key in ((study, "study_instance_uid"), (accession, "accession_number"))):
            found.append(event)
            if len(found) >= limit:
                break
    return found


def protect(db: pw.Database) -> None:
    """Make the database itself refuse UPDATE and DELETE on the audit log."""
    if isinstance(db, pw.SqliteDatabase):
        for verb in ("UPDATE", "DELETE"):
            db.execute_sql(
                f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
            )
    else:
        # Several gateways may open one database at once: create the trigger once, under a lock.
        with db.atomic():
            db.execute_sql("SELECT pg_advisory_xact_lock(hashtext('gatekeeper: protect audit_log'))")
            exists = db.execute_sql(
                "SELECT 1 FROM pg_trigger WHERE tgname = 'audit_log_append_only' AND NOT tgisinternal").fetchone()
            if exists:
                return
            db.execute_sql(
                "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$ LANGUAGE plpgsql"
            )
            db.execute_sql(
                "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
                "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
            )


MODELS = [AuditEvent]
