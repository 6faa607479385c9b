"""Orders and auths in the database: import, decide, override, and find served items.

The IO side of the worklist gate. Rules live in :mod:`worklist.gating`; this module
loads rows, turns them into plain types, calls the rules, and records what an
operator did in the audit log. Times are passed in by the caller.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import peewee as pw
from pydicom.uid import generate_uid

from worklist.db import database, upsert_many
from worklist.gating import Decision, decide
from worklist.models import AuthRow, OrderRow, OverrideRow, audit, auth_columns, order_columns
from worklist.orders import Auth, Order, Override
from worklist.policy import PayerPolicy

_BATCH = 500
#: Statuses set by the modality (MPPS) that a re-imported "scheduled" must not undo.
MPPS_STATUSES = ("in-progress", "completed")


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int

    def __str__(self) -> str:
        return f"{self.created} created, {self.updated} updated"


def _chunks(items: Sequence, size: int = _BATCH):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def import_orders(orders: Sequence[Order], now: dt.datetime, *, user: str = "import", source: str = "") -> ImportResult:
    """Upsert orders by accession number, all in one transaction.

    An order without a Study Instance UID gets one on first import; later imports
    keep it, so the worklist and the archive agree on it. A file that still says
    "scheduled" does not undo what the modality reported by MPPS: an order already
    in progress or completed keeps that status (cancelling it still works).
    """
    created = updated = 0
    with database.atomic():
        for batch in _chunks(orders):
            existing = {
                acc: (uid, status)
                for acc, uid, status in OrderRow.select(
                    OrderRow.accession_number, OrderRow.study_instance_uid, OrderRow.status
                ).where(OrderRow.accession_number.in_([o.accession_number for o in batch])).tuples()
            }
            rows = []
            for order in batch:
                cols = order_columns(order)
                old_uid, old_status = existing.get(order.accession_number, ("", ""))
                if not cols["study_instance_uid"]:
                    cols["study_instance_uid"] = old_uid or generate_uid()
                if order.status == "scheduled" and old_status in MPPS_STATUSES:
                    cols["status"] = old_status
                cols["imported_at"] = cols["updated_at"] = now
                rows.append(cols)
                if order.accession_number in existing:
                    updated += 1
                else:
                    created += 1
            upsert_many(OrderRow, rows, "accession_number", keep=("imported_at",))
        audit(now, user, "orders.import", source or "orders", created=created, updated=updated)
    return ImportResult(created, updated)


def import_auths(auths: Sequence[Auth], now: dt.datetime, *, user: str = "import", source: str = "") -> ImportResult:
    """Upsert auths by auth number, all in one transaction.

    Units used are the larger of the file's and the database's, so re-importing a
    portal export never gives back a unit that a completed exam has used.
    """
    created = updated = 0
    with database.atomic():
        for batch in _chunks(auths):
            used = dict(
                AuthRow.select(AuthRow.auth_number, AuthRow.units_used)
                .where(AuthRow.auth_number.in_([a.auth_number for a in batch]))
                .tuples()
            )
            rows = []
            for auth in batch:
                cols = auth_columns(auth)
                if auth.auth_number in used:
                    cols["units_used"] = max(cols["units_used"], used[auth.auth_number])
                    updated += 1
                else:
                    created += 1
                cols["imported_at"] = cols["updated_at"] = now
                rows.append(cols)
            upsert_many(AuthRow, rows, "auth_number", keep=("imported_at",))
        audit(now, user, "auths.import", source or "auths", created=created, updated=updated)
    return ImportResult(created, updated)


def find_order(accession_number: str) -> Order | None:
    row = OrderRow.get_or_none(OrderRow.accession_number == accession_number)
    return row.to_order() if row else None


def auths_for_patients(patient_ids: Iterable[str]) -> dict[str, list[Auth]]:
    """Every auth on file for these patients, grouped by patient ID."""
    found: dict[str, list[Auth]] = defaultdict(list)
    ids = sorted(set(patient_ids))
    for batch in _chunks(ids):
        for row in AuthRow.select().where(AuthRow.patient_id.in_(batch)):
            found[row.patient_id].append(row.to_auth())
    return found


def overrides_for(accessions: Iterable[str]) -> dict[str, Override]:
    """The latest override of each of these orders."""
    found: dict[str, Override] = {}
    accs = sorted(set(accessions))
    for batch in _chunks(accs):
        query = OverrideRow.select().where(OverrideRow.accession_number.in_(batch)).order_by(OverrideRow.at, OverrideRow.id)
        for row in query:
            found[row.accession_number] = row.to_override()
    return found


def decide_all(orders: Sequence[Order], policy: PayerPolicy, today: dt.date) -> list[Decision]:
    """Rule 1 for each order, loading auths and overrides in a few batched queries."""
    auths = auths_for_patients(o.patient_id for o in orders)
    overrides = overrides_for(o.accession_number for o in orders)
    return [
        decide(o, auths.get(o.patient_id, ()), policy, today, overrides.get(o.accession_number))
        for o in orders
    ]


def auth_on(auth_number: str) -> Auth | None:
    row = AuthRow.get_or_none(AuthRow.auth_number == auth_number)
    return row.to_auth() if row else None


def add_override(accession_number: str, user: str, reason: str, now: dt.datetime) -> Override:
    """Record an override and audit it. Raises LookupError for an unknown order."""
    if not user.strip() or not reason.strip():
        raise ValueError("an override needs --user and --reason: who decided, and why the exam cannot wait")
    with database.atomic():
        if not OrderRow.select().where(OrderRow.accession_number == accession_number).exists():
            raise LookupError(f"no order with accession number {accession_number!r}; check the number or import the order first")
        row = OverrideRow.create(accession_number=accession_number, user=user, reason=reason, at=now)
        audit(now, user, "order.override", accession_number, reason)
    return row.to_override()


def orders_where(*conditions: pw.Expression, order_by=None, limit: int | None = None) -> list[Order]:
    """Orders matching peewee conditions on :class:`OrderRow` (for listings and the MWL)."""
    query = OrderRow.select()
    for cond in conditions:
        query = query.where(cond)
    query = query.order_by(*(order_by or (OrderRow.scheduled_start, OrderRow.accession_number)))
    if limit:
        query = query.limit(limit)
    return [row.to_order() for row in query]
