"""Orders, auths, overrides and MPPS steps in the database: every query and write of the worklist.

The rows are :mod:`worklist.models`; what leaves this module is plain types of
:mod:`worklist.orders`. The use cases (:mod:`worklist.gate`, :mod:`worklist.query`,
:mod:`worklist.steps`) decide what a transaction holds; the functions that write take
the database so that they can open one. Times are passed in.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import peewee as pw
from pydicom.uid import generate_uid

from infra import audit
from infra.db import batches, upsert_many
from worklist.gating import Decision, decide
from worklist.models import (AuthRow, FeedAnswerRow, MppsRow, NecessityRow, OrderRow, OverrideRow, auth_columns,
                              order_columns)
from worklist.necessity import NecessityPolicy
from worklist.orders import WORKABLE_STATUSES, Auth, Order, Override
from worklist.policy import PayerPolicy

#: Statuses set by the modality (MPPS) that a re-imported "scheduled" must not undo.
MPPS_STATUSES = ("in-progress", "completed")


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int

    def __str__(self) -> str:
        return f"{self.created} created, {self.updated} updated"


# ------------------------------------------------------------------------------ writes


def upsert_orders(db: pw.Database, orders: Sequence[Order], now: dt.datetime, *, user: str,
                  source: str, audited: bool = True) -> ImportResult:
    """Upsert orders by accession number, all in one transaction, and audit the import.

    An order without a Study Instance UID gets one on first import; later imports
    keep it, so the worklist and the archive agree on it. A file that still says
    "scheduled" does not undo what the modality reported by MPPS: an order already
    in progress or completed keeps that status (cancelling it still works).
    """
    created = updated = 0
    with db.atomic():
        for batch in batches(orders):
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
            upsert_many(db, OrderRow, rows, "accession_number", keep=("imported_at",))
        if audited:  # a caller that audits each order itself (the RIS feed) says so
            audit.record(now, user, "orders.import", source or "orders", created=created, updated=updated)
    return ImportResult(created, updated)


def upsert_auths(db: pw.Database, auths: Sequence[Auth], now: dt.datetime, *, user: str,
                 source: str) -> ImportResult:
    """Upsert auths by auth number, all in one transaction, and audit the import.

    Units used are the larger of the file's and the database's, so re-importing a
    portal export never gives back a unit that a completed exam has used.
    """
    created = updated = 0
    with db.atomic():
        for batch in batches(auths):
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
            upsert_many(db, AuthRow, rows, "auth_number", keep=("imported_at",))
        audit.record(now, user, "auths.import", source or "auths", created=created, updated=updated)
    return ImportResult(created, updated)


def add_override(db: pw.Database, accession_number: str, user: str, reason: str, now: dt.datetime) -> Override | None:
    """Record an override and audit it; None when no order has that accession number."""
    with db.atomic():
        if not OrderRow.select().where(OrderRow.accession_number == accession_number).exists():
            return None
        row = OverrideRow.create(accession_number=accession_number, user=user, reason=reason, at=now)
        audit.record(now, user, "order.override", accession_number, reason)
    return row.to_override()


# ----------------------------------------------------------------------------- orders


def order(accession_number: str) -> Order | None:
    """The order with this accession number; None for none or an empty one."""
    if not accession_number:
        return None
    row = _one(OrderRow, OrderRow.accession_number, accession_number)
    return row.to_order() if row else None


#: SQL of the one-row lookups by (model, column, dialect): peewee builds a query's SQL anew
#: each time, which costs more than the lookup itself for a row as wide as an order's.
_LOOKUPS: dict[tuple, str] = {}


def _one(model: type[pw.Model], *where: pw.Field | str):
    """The row of ``model`` whose columns equal the values (``column, value, column, value...``), or None."""
    columns, values = where[0::2], where[1::2]
    db = model._meta.database
    key = (model, tuple(c.name for c in columns), type(db), db.param)
    sql = _LOOKUPS.get(key)
    if sql is None:
        condition = columns[0] == values[0]
        for column, value in zip(columns[1:], values[1:]):
            condition &= column == value
        sql = _LOOKUPS[key] = model.select().where(condition).limit(1).sql()[0]
    cursor = db.execute_sql(sql, [c.db_value(v) for c, v in zip(columns, values)] + [1])
    found = cursor.fetchone()
    if found is None:
        return None
    names = [d[0] for d in cursor.description]
    fields = model._meta.columns
    return model(**{fields[n].name: fields[n].python_value(v) for n, v in zip(names, found)})


def orders_by_accession(accessions: Iterable[str]) -> dict[str, Order]:
    """The orders with these accession numbers, keyed by accession number."""
    found = {}
    for batch in batches(sorted(set(accessions) - {""})):
        for row in OrderRow.select().where(OrderRow.accession_number.in_(batch)):
            found[row.accession_number] = row.to_order()
    return found


def orders_scheduled(start: dt.datetime, end: dt.datetime, *, station_ae: str | None = None,
                     open_only: bool = False) -> list[Order]:
    """Orders scheduled in [start, end), by time then accession number."""
    query = OrderRow.select().where((OrderRow.scheduled_start >= start) & (OrderRow.scheduled_start < end))
    if station_ae:
        query = query.where(OrderRow.station_ae == station_ae)
    if open_only:
        query = query.where(OrderRow.status.in_(WORKABLE_STATUSES))
    return [OrderRow.order_of(row) for row in query.order_by(OrderRow.scheduled_start, OrderRow.accession_number).dicts()]


def open_orders_of(patient_ids: Iterable[str]) -> list[Order]:
    """Every open order of these patients."""
    found = []
    for batch in batches(sorted(set(patient_ids))):
        query = OrderRow.select().where(OrderRow.status.in_(WORKABLE_STATUSES) & OrderRow.patient_id.in_(batch))
        found.extend(row.to_order() for row in query.order_by(OrderRow.scheduled_start, OrderRow.accession_number))
    return found


def same_procedure_orders(order: Order) -> dict[str, Order]:
    """The other orders of ``order``'s patient for its CPT code, keyed by accession number."""
    rows = OrderRow.select().where((OrderRow.patient_id == order.patient_id) & (OrderRow.cpt == order.cpt)
                                   & (OrderRow.accession_number != order.accession_number))
    return {row.accession_number: row.to_order() for row in rows}


def orders_since(start: dt.datetime) -> list[Order]:
    """Orders scheduled from ``start`` on (the report's period), in import order."""
    return [row.to_order() for row in OrderRow.select().where(OrderRow.scheduled_start >= start).order_by(OrderRow.id)]


@dataclass(frozen=True)
class Recorded:
    """An order with the state the re-evaluation job last recorded for it."""

    id: int
    order: Order
    last_decision: str | None
    last_reasons: str


def orders_to_reevaluate(since: dt.datetime, after_id: int, limit: int) -> list[Recorded]:
    """Open orders scheduled from ``since`` on, and every order with a recorded state; by id."""
    selected = ((OrderRow.status.in_(WORKABLE_STATUSES) & (OrderRow.scheduled_start >= since))
                | OrderRow.last_decision.is_null(False))
    rows = OrderRow.select().where(selected & (OrderRow.id > after_id)).order_by(OrderRow.id).limit(limit)
    return [Recorded(r.id, r.to_order(), r.last_decision, r.last_reasons) for r in rows]


def record_state(row_id: int, last_decision: str | None, last_reasons: str, *, if_was: str | None = None) -> bool:
    """Write an order's recorded state; with ``if_was``, only if it still holds that (compare-and-set)."""
    query = OrderRow.update(last_decision=last_decision, last_reasons=last_reasons).where(OrderRow.id == row_id)
    if if_was is not None:
        query = query.where(OrderRow.last_decision == if_was)
    return query.execute() == 1


def record_states(row_ids: Sequence[int], last_decision: str | None, last_reasons: str) -> None:
    for batch in batches(list(row_ids)):
        OrderRow.update(last_decision=last_decision, last_reasons=last_reasons).where(OrderRow.id.in_(batch)).execute()


def served_candidates(where: Sequence[pw.Expression]) -> Iterator[Order]:
    """Open orders matching the MWL query plan's conditions (see :mod:`worklist.query`), streamed."""
    rows = OrderRow.select().where(OrderRow.status.in_(WORKABLE_STATUSES), *where)
    for row in rows.order_by(OrderRow.scheduled_start, OrderRow.id).dicts().iterator():
        yield OrderRow.order_of(row)  # no model instance per row: a console query reads hundreds


# ------------------------------------------------------------------------ auths, overrides


def auth(auth_number: str) -> Auth | None:
    row = AuthRow.get_or_none(AuthRow.auth_number == auth_number)
    return row.to_auth() if row else None


def auths_for_patients(patient_ids: Iterable[str]) -> dict[str, list[Auth]]:
    """Every auth on file for these patients, grouped by patient ID."""
    found: dict[str, list[Auth]] = defaultdict(list)
    for batch in batches(sorted(set(patient_ids))):
        for row in AuthRow.select().where(AuthRow.patient_id.in_(batch)).dicts():
            found[row["patient_id"]].append(AuthRow.auth_of(row))
    return found


def auths_valid_on_or_after(day: dt.date, limit: int) -> list[Auth]:
    """Auths still valid on ``day`` or later, soonest end first (the review desk's auth list)."""
    query = AuthRow.select().where(AuthRow.valid_to >= day).order_by(AuthRow.valid_to, AuthRow.auth_number)
    return [row.to_auth() for row in query.limit(limit)]


def search_orders(text: str, limit: int) -> list[Order]:
    """Orders whose accession number or patient ID is ``text``, or whose patient name contains it
    (case-insensitive), newest scheduled first."""
    name = text.replace("%", "").replace("_", "").replace(", ", "^").replace(" ", "^").upper()
    query = OrderRow.select().where((OrderRow.accession_number == text) | (OrderRow.patient_id == text)
                                    | pw.fn.UPPER(OrderRow.patient_name).contains(name))
    return [row.to_order() for row in query.order_by(OrderRow.scheduled_start.desc()).limit(limit)]


def overrides_for(accessions: Iterable[str]) -> dict[str, Override]:
    """The latest override of each of these orders."""
    found: dict[str, Override] = {}
    for batch in batches(sorted(set(accessions))):
        query = OverrideRow.select().where(OverrideRow.accession_number.in_(batch)).order_by(OverrideRow.at, OverrideRow.id)
        for row in query:
            found[row.accession_number] = row.to_override()
    return found


def override_accessions_since(start: dt.datetime) -> list[str]:
    """One accession number per override recorded from ``start`` on."""
    return [acc for (acc,) in OverrideRow.select(OverrideRow.accession_number).where(OverrideRow.at >= start).tuples()]


def decide_all(orders: Sequence[Order], policy: PayerPolicy, today: dt.date, *,
               necessity: bool = True) -> list[Decision]:
    """Rules 1 and 7 for each order, loading auths, overrides and necessity policies in a few
    batched queries. ``necessity=False`` leaves the diagnoses out (the auth question alone)."""
    if not orders:
        return []
    auths = auths_for_patients(o.patient_id for o in orders)
    overrides = overrides_for(o.accession_number for o in orders)
    policies = necessity_for_payers(o.payer_id for o in orders) if necessity else {}
    return [
        decide(o, auths.get(o.patient_id, ()), policy, today, overrides.get(o.accession_number),
               policies.get(o.payer_id, ()))
        for o in orders
    ]


# ------------------------------------------------------------------------ necessity policies


def replace_necessity(db: pw.Database, policies: Sequence[NecessityPolicy], now: dt.datetime, *, user: str,
                      source: str) -> ImportResult:
    """Make ``policies`` the whole set of each payer they name, in one transaction (audited).

    ``created`` counts the policies written, ``updated`` the earlier policies of those payers
    they replace; payers the file does not name keep theirs.
    """
    payers = sorted({p.payer_id for p in policies})
    with db.atomic():
        replaced = 0
        for batch in batches(payers):
            replaced += NecessityRow.delete().where(NecessityRow.payer_id.in_(batch)).execute()
        rows = [{"payer_id": p.payer_id, "cpt": ";".join(p.cpt), "covered_icd10": ";".join(p.covered_icd10),
                 "imported_at": now} for p in policies]
        for batch in batches(rows):
            NecessityRow.insert_many(batch).execute()
        audit.record(now, user, "policies.import", source or "policies", created=len(policies), replaced=replaced,
                     payers=payers)
    return ImportResult(len(policies), replaced)


def necessity_for_payers(payer_ids: Iterable[str]) -> dict[str, list[NecessityPolicy]]:
    """The necessity policies of these payers, grouped by payer ID (one indexed query a batch)."""
    found: dict[str, list[NecessityPolicy]] = defaultdict(list)
    for batch in batches(sorted(set(payer_ids))):
        for row in NecessityRow.select().where(NecessityRow.payer_id.in_(batch)).order_by(NecessityRow.id):
            found[row.payer_id].append(row.to_policy())
    return found


def necessity_policies() -> list[NecessityPolicy]:
    """Every necessity policy, by payer then in import order."""
    return [r.to_policy() for r in NecessityRow.select().order_by(NecessityRow.payer_id, NecessityRow.id)]


# ------------------------------------------------------------------------------- MPPS


def accessions_with_steps(accessions: Iterable[str]) -> set[str]:
    """Which of these accession numbers any MPPS step (in any state) has named."""
    found: set[str] = set()
    for batch in batches(sorted(set(accessions) - {""})):
        query = MppsRow.select(MppsRow.accession_number).where(MppsRow.accession_number.in_(batch)).distinct()
        found.update(acc for (acc,) in query.tuples())
    return found


def performed_without_final_report(since: dt.datetime) -> list[Order]:
    """Completed orders scheduled from ``since`` on whose report is not final (none, preliminary)."""
    query = OrderRow.select().where((OrderRow.status == "completed") & (OrderRow.scheduled_start >= since)
                                    & OrderRow.report_status.not_in(("final", "corrected")))
    return [row.to_order() for row in query.order_by(OrderRow.scheduled_start, OrderRow.id)]


def report_statuses_since(start: dt.datetime) -> dict[str, int]:
    """Orders scheduled from ``start`` on, counted by report status."""
    query = (OrderRow.select(OrderRow.report_status, pw.fn.COUNT(OrderRow.id))
             .where(OrderRow.scheduled_start >= start).group_by(OrderRow.report_status))
    return {status or "": count for status, count in query.tuples()}


def completed_steps_since(start: dt.datetime) -> int:
    """MPPS steps completed from ``start`` on."""
    return MppsRow.select().where((MppsRow.status == "COMPLETED") & (MppsRow.updated_at >= start)).count()


# ------------------------------------------------------------------------ the RIS feed


def recorded_orders(accessions: Iterable[str]) -> list[Recorded]:
    """These orders with the state the re-evaluation last recorded for them, by id."""
    found = []
    for batch in batches(sorted(set(accessions) - {""})):
        found.extend(Recorded(r.id, r.to_order(), r.last_decision, r.last_reasons)
                     for r in OrderRow.select().where(OrderRow.accession_number.in_(batch)))
    return sorted(found, key=lambda r: r.id)


def orders_of_patient(patient_id: str, *, open_only: bool = False) -> list[Order]:
    """Every order (or every open order) of one patient ID, by time then accession number."""
    query = OrderRow.select().where(OrderRow.patient_id == patient_id)
    if open_only:
        query = query.where(OrderRow.status.in_(WORKABLE_STATUSES))
    return [OrderRow.order_of(row) for row in query.order_by(OrderRow.scheduled_start, OrderRow.accession_number).dicts()]


def set_report_status(accession_number: str, status: str, at: dt.datetime | None, now: dt.datetime) -> bool:
    """Write an order's report status; False when no order has that accession number."""
    query = OrderRow.update(report_status=status, report_status_at=at, updated_at=now)
    return query.where(OrderRow.accession_number == accession_number).execute() == 1


@dataclass(frozen=True)
class FeedAnswer:
    """The answer given to one feed message before."""

    code: str
    answer: str
    received_at: dt.datetime


def feed_answer(application: str, facility: str, control_id: str) -> FeedAnswer | None:
    """The answer given to the message with this sender and control ID, or None."""
    row = _one(FeedAnswerRow, FeedAnswerRow.sending_application, application, FeedAnswerRow.sending_facility,
               facility, FeedAnswerRow.control_id, control_id)
    return FeedAnswer(row.code, row.answer, row.received_at) if row else None


def add_feed_answer(application: str, facility: str, control_id: str, message_type: str, code: str,
                    answer: str, now: dt.datetime) -> None:
    """Keep the answer to one feed message (inside the caller's transaction)."""
    values = dict(sending_application=application, sending_facility=facility, control_id=control_id,
                  message_type=message_type, code=code, answer=answer, received_at=now)
    db = FeedAnswerRow._meta.database
    key = (FeedAnswerRow, "insert", type(db), db.param)
    sql = _LOOKUPS.get(key)
    if sql is None:
        sql = _LOOKUPS[key] = FeedAnswerRow.insert(**values).sql()[0]
    fields = FeedAnswerRow._meta.fields
    db.execute_sql(sql, [fields[name].db_value(value) for name, value in values.items()])
