"""The practice report: the figures a practice manager asks for.

:func:`figures` computes a :class:`Report` from plain facts (pure); :func:`load_report`
gathers the facts from the worklist gate and the store index; :func:`as_json` renders
it as one JSON object whose keys are a stable interface (README.md, "Report JSON") for
every front end.

Scope: orders scheduled on or after the ``since`` day (any time after, including days
still to come), overrides recorded since then, studies first received since then, MPPS
steps completed since then; orders of the period by report status, and the follow-up flags
(overdue reports, claim deadlines near, orders completed from images) raised since then.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from store.forwarding import NO_FIGURES, ForwardFigures
from store.index import Index
from store.watch import AUDIT_FILING_NEAR, AUDIT_REPORT_OVERDUE
from store.reconcile import CODES as FINDING_CODES
from store.states import ARCHIVED, HELD, REJECTED, STUDY_STATES
from worklist.gate import Gate
from worklist.gating import BASIS_AUTH, BASIS_NOT_REQUIRED, BASIS_OVERRIDE, REASON_CODES
from worklist.orders import ORDER_STATUSES, REPORT_STATUSES, WORKABLE_STATUSES

BASES = (BASIS_AUTH, BASIS_NOT_REQUIRED, BASIS_OVERRIDE)
#: The report's name of each report status ("" is "none": no report received yet).
REPORT_STATUS_KEYS = {status: status or "none" for status in REPORT_STATUSES}
#: Audit action of an order completed from its images (no MPPS).
AUDIT_COMPLETED_FROM_IMAGES = "order.completed_from_images"
#: States a held study ends its hold in; its held time runs to ``state_changed_at``.
#: A purged study's state_changed_at is the purge, not the end of the hold: it is left out
#: of the medians (still counted in the hold figures).
_HOLD_ENDED = (ARCHIVED, REJECTED)


@dataclass(frozen=True)
class OrderFact:
    """One order and its current decision (``served`` is None for an order no longer open)."""

    accession_number: str
    status: str
    served: bool | None = None
    basis: str | None = None
    codes: tuple[str, ...] = ()
    auth_unit_used: str | None = None


@dataclass(frozen=True)
class StudyFact:
    """One received study: its state, hold times, and the codes of the findings that held it."""

    study_instance_uid: str
    state: str
    first_received_at: dt.datetime
    state_changed_at: dt.datetime
    held_at: dt.datetime | None = None
    hold_codes: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """Archived without ever being held."""
        return self.held_at is None and self.state == ARCHIVED

    def hours_held(self, now: dt.datetime) -> float | None:
        """Held time: to the release, correction or rejection, or to ``now`` while held."""
        if self.held_at is None:
            return None
        if self.state == HELD:
            end = now
        elif self.state in _HOLD_ENDED:
            end = self.state_changed_at
        else:
            return None
        return max((end - self.held_at).total_seconds(), 0) / 3600


@dataclass(frozen=True)
class HoldReason:
    studies: int
    median_hours_held: float | None


@dataclass(frozen=True)
class Report:
    since: dt.date
    generated_at: dt.datetime
    orders_total: int
    orders_by_status: dict[str, int]
    open_orders: int
    served: int
    withheld: int
    served_by_basis: dict[str, int]
    withheld_by_reason: dict[str, int]
    overrides: int
    overridden_orders: int
    studies_received: int
    studies_by_state: dict[str, int]
    clean: int
    clean_match_rate: float | None
    held_studies: int
    still_held: int
    median_hours_held: float | None
    held_by_reason: dict[str, HoldReason]
    reopened: int
    mpps_completed: int
    auth_units_used: int
    auths_drawn_on: int
    completed_from_images: int = 0
    orders_by_report_status: dict[str, int] = field(default_factory=lambda: {k: 0 for k in REPORT_STATUS_KEYS.values()})
    reports_overdue: int = 0
    deadlines_near: int = 0
    #: The forwarding queue as of ``generated_at`` (not limited to the period).
    forwarding: ForwardFigures = NO_FIGURES


def _median(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return round(statistics.median(found), 1) if found else None


def figures(
    since: dt.date,
    now: dt.datetime,
    orders: Iterable[OrderFact],
    override_accessions: Iterable[str],
    studies: Iterable[StudyFact],
    mpps_completed: int,
    reopened: int = 0,
    report_statuses: dict[str, int] | None = None,
    flags: dict[str, int] | None = None,
) -> Report:
    """Every figure of the report from plain rows (already limited to the period by the caller).

    An order withheld for several reasons counts once under each. ``override_accessions``
    has one entry per override recorded (an order overridden twice appears twice).
    ``report_statuses`` counts the period's orders by report status; ``flags`` the follow-up
    audit events of the period by action.
    """
    statuses = report_statuses or {}
    flags = flags or {}
    orders = list(orders)
    studies = list(studies)
    overrides = list(override_accessions)
    open_orders = [o for o in orders if o.served is not None]
    withheld_by_reason = Counter(code for o in open_orders if not o.served for code in o.codes)
    units = [o.auth_unit_used for o in orders if o.auth_unit_used]

    held = [s for s in studies if s.held_at is not None]
    by_reason = {}
    for code in FINDING_CODES:
        with_code = [s for s in held if code in s.hold_codes]
        by_reason[code] = HoldReason(len(with_code), _median(s.hours_held(now) for s in with_code))
    clean = sum(s.clean for s in studies)

    return Report(
        since=since,
        generated_at=now,
        orders_total=len(orders),
        orders_by_status=_tally((o.status for o in orders), ORDER_STATUSES),
        open_orders=len(open_orders),
        served=sum(bool(o.served) for o in open_orders),
        withheld=sum(not o.served for o in open_orders),
        served_by_basis=_tally((o.basis for o in open_orders if o.served), BASES),
        withheld_by_reason={code: withheld_by_reason[code] for code in REASON_CODES},
        overrides=len(overrides),
        overridden_orders=len(set(overrides)),
        studies_received=len(studies),
        studies_by_state=_tally((s.state for s in studies), STUDY_STATES),
        clean=clean,
        clean_match_rate=round(clean / len(studies), 4) if studies else None,
        held_studies=len(held),
        still_held=sum(s.state == HELD for s in held),
        median_hours_held=_median(s.hours_held(now) for s in held),
        held_by_reason=by_reason,
        reopened=reopened,
        mpps_completed=mpps_completed,
        auth_units_used=len(units),
        auths_drawn_on=len(set(units)),
        completed_from_images=flags.get(AUDIT_COMPLETED_FROM_IMAGES, 0),
        orders_by_report_status={key: statuses.get(status, 0) for status, key in REPORT_STATUS_KEYS.items()},
        reports_overdue=flags.get(AUDIT_REPORT_OVERDUE, 0),
        deadlines_near=flags.get(AUDIT_FILING_NEAR, 0),
    )


def _tally(values: Iterable[str | None], keys: tuple[str, ...]) -> dict[str, int]:
    """Counts under every known key (zero included, so the JSON keys never change)."""
    counts = Counter(values)
    return {k: counts[k] for k in keys}


def as_json(r: Report) -> dict:
    """The report as one JSON object; these keys are a stable interface."""
    return {
        "since": r.since.isoformat(),
        "generated_at": r.generated_at.isoformat(),
        "orders": {
            "total": r.orders_total,
            "by_status": r.orders_by_status,
            "open": r.open_orders,
            "served": r.served,
            "withheld": r.withheld,
            "served_by_basis": r.served_by_basis,
            "withheld_by_reason": r.withheld_by_reason,
        },
        "overrides": {"total": r.overrides, "orders": r.overridden_orders},
        "studies": {
            "received": r.studies_received,
            "by_state": r.studies_by_state,
            "clean": r.clean,
            "clean_match_rate": r.clean_match_rate,
        },
        "holds": {
            "studies": r.held_studies,
            "still_held": r.still_held,
            "median_hours_held": r.median_hours_held,
            "by_reason": {
                code: {"studies": h.studies, "median_hours_held": h.median_hours_held}
                for code, h in r.held_by_reason.items()
            },
            "reopened": r.reopened,
        },
        "mpps": {"completed": r.mpps_completed, "completed_from_images": r.completed_from_images},
        "auth_units": {"used": r.auth_units_used, "auths": r.auths_drawn_on},
        "reports": {"by_status": r.orders_by_report_status, "overdue": r.reports_overdue,
                    "deadlines_near": r.deadlines_near},
        "forwarding": {
            "backlog": r.forwarding.backlog,
            "by_state": r.forwarding.by_state,
            "oldest_pending_seconds": r.forwarding.oldest_pending_seconds,
            "failures_by_status": r.forwarding.failures_by_status,
        },
    }


def load_report(gate: Gate, index: Index, since: dt.date) -> Report:
    """The report for the period from ``since`` (00:00) to the gate's clock's now."""
    now = gate.clock()
    start = dt.datetime.combine(since, dt.time.min)
    return figures(since, now, order_facts(gate, start), gate.override_accessions_since(start),
                   [StudyFact(r.study_instance_uid, r.state, r.first_received_at, r.state_changed_at, r.held_at, codes)
                    for r, codes in index.studies_since(start)],
                   gate.completed_steps_since(start), index.reopened_since(start),
                   gate.report_statuses_since(start),
                   index.events_since((AUDIT_COMPLETED_FROM_IMAGES, AUDIT_REPORT_OVERDUE, AUDIT_FILING_NEAR), start))


def order_facts(gate: Gate, start: dt.datetime, chunk: int = 2000) -> list[OrderFact]:
    """Orders scheduled from ``start`` on; the open ones with their decision as of today."""
    orders = gate.orders_since(start)
    facts = []
    for first in range(0, len(orders), chunk):
        part = orders[first:first + chunk]
        open_orders = [o for o in part if o.status in WORKABLE_STATUSES]
        decided = {d.accession_number: d for d in gate.decide(open_orders)}
        for o in part:
            d = decided.get(o.accession_number)
            facts.append(OrderFact(
                o.accession_number, o.status,
                served=None if d is None else d.served,
                basis=None if d is None else d.basis,
                codes=() if d is None else d.codes,
                auth_unit_used=o.auth_unit_used or None,
            ))
    return facts
