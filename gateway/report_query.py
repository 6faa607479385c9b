"""The query layer of ``gatekeeper report``: load the period's rows as plain facts.

Figures are computed by :func:`gateway.report.figures`; this module only reads the
database (orders with their current decision, overrides, studies with the codes that
held them, completed MPPS steps).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from gateway.report import OrderFact, Report, StudyFact, figures
from store.models import FindingRow, StudyRow
from worklist import service
from worklist.models import MppsRow, OrderRow, OverrideRow
from worklist.mpps import COMPLETED
from worklist.orders import WORKABLE_STATUSES
from worklist.policy import PayerPolicy

_BATCH = 500
_DECIDE_CHUNK = 2000


def order_facts(start: dt.datetime, policy: PayerPolicy, today: dt.date) -> list[OrderFact]:
    """Orders scheduled from ``start`` on; the open ones with their decision as of ``today``."""
    rows = list(OrderRow.select().where(OrderRow.scheduled_start >= start).order_by(OrderRow.id))
    facts = []
    for first in range(0, len(rows), _DECIDE_CHUNK):
        chunk = rows[first:first + _DECIDE_CHUNK]
        open_rows = [r for r in chunk if r.status in WORKABLE_STATUSES]
        decided = {d.accession_number: d for d in service.decide_all([r.to_order() for r in open_rows], policy, today)}
        for r in chunk:
            d = decided.get(r.accession_number)
            facts.append(OrderFact(
                r.accession_number, r.status,
                served=None if d is None else d.served,
                basis=None if d is None else d.basis,
                codes=() if d is None else d.codes,
                auth_unit_used=r.auth_unit_used or None,
            ))
    return facts


def study_facts(start: dt.datetime) -> list[StudyFact]:
    """Studies first received from ``start`` on, with the codes of their holding findings."""
    rows = list(StudyRow.select().where(StudyRow.first_received_at >= start).order_by(StudyRow.id))
    held = [r.study_instance_uid for r in rows if r.held_at is not None]
    codes: dict[str, set[str]] = defaultdict(set)
    for first in range(0, len(held), _BATCH):
        query = (FindingRow.select(FindingRow.study_instance_uid, FindingRow.code)
                 .where(FindingRow.holds & FindingRow.study_instance_uid.in_(held[first:first + _BATCH]))
                 .distinct())
        for uid, code in query.tuples():
            codes[uid].add(code)
    return [
        StudyFact(r.study_instance_uid, r.state, r.first_received_at, r.state_changed_at, r.held_at,
                  tuple(sorted(codes.get(r.study_instance_uid, ()))))
        for r in rows
    ]


def load_report(since: dt.date, now: dt.datetime, policy: PayerPolicy) -> Report:
    """The report for the period from ``since`` (00:00) to ``now``."""
    start = dt.datetime.combine(since, dt.time.min)
    overrides = [acc for (acc,) in OverrideRow.select(OverrideRow.accession_number).where(OverrideRow.at >= start).tuples()]
    completed = MppsRow.select().where((MppsRow.status == COMPLETED) & (MppsRow.updated_at >= start)).count()
    return figures(since, now, order_facts(start, policy, now.date()), overrides, study_facts(start), completed)
