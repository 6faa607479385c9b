"""The follow-up after the images: report and filing deadlines, and orders whose modality sends no MPPS.

Two use cases, each run by a scheduled job (:mod:`gateway.jobs`); the rules are
:mod:`store.watch` (pure), this module loads the rows and records what it did.

- :meth:`Followup.watch_reports` (rule 7): flags once each archived study whose report is
  overdue (``study.report_overdue``) and each performed exam whose claim deadline is near
  while its report is not final (``order.filing_deadline_near``): one WARNING and one audit
  event each, with accession numbers and UIDs, never patient data.
- :meth:`Followup.complete_without_mpps` (rule 6): completes from its images each scheduled
  order whose study was archived ``worklist.complete_without_mpps_minutes`` ago with no
  MPPS step (:meth:`worklist.steps.Steps.complete_from_images`: the auth unit once).

Both look back a bounded time, never over the whole history: the reports over studies first
received in the longest ``timely_filing_days`` of any payer (after that the claim is lost
anyway), the completion over orders scheduled in the last :data:`COMPLETE_LOOKBACK_DAYS`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import peewee as pw

from infra import audit
from infra.clock import Clock
from store import watch
from store.index import Index
from worklist.gate import Gate
from worklist.steps import Steps

log = logging.getLogger("store.followup")

#: The audit log's ``user`` of the jobs' events.
REPORT_WATCH_USER = "job:report_watch"
COMPLETE_USER = "job:complete_without_mpps"
#: Orders scheduled this many days back (and up to a day ahead) are candidates for completion from images.
COMPLETE_LOOKBACK_DAYS = 7


@dataclass(frozen=True)
class ReportWatch:
    """What one run of the report watch found and flagged."""

    studies_checked: int
    exams_checked: int
    overdue: int
    overdue_flagged: int
    deadlines_near: int
    deadlines_flagged: int


@dataclass(frozen=True)
class Completion:
    """What one run of the completion from images did."""

    candidates: int
    completed: int
    units_used: int
    minutes: int


class Followup:
    """Report and filing deadlines, and completion of orders without MPPS, over one database."""

    def __init__(self, db: pw.Database, index: Index, gate: Gate, steps: Steps, clock: Clock, *,
                 filing_alert_days: int = 14, complete_without_mpps_minutes: int = 60) -> None:
        self.db = db
        self.index = index
        self.gate = gate
        self.steps = steps
        self.clock = clock
        self.filing_alert_days = filing_alert_days
        self.complete_without_mpps_minutes = complete_without_mpps_minutes

    # -- rule 7: reports and timely filing -----------------------------------------------------

    def watch_reports(self) -> ReportWatch:
        """Flag, once each, overdue reports and claim deadlines near (WARNING log and audit)."""
        now = self.clock()
        policy = self.gate.policy
        longest = max([policy.default_terms.timely_filing_days,
                       *(t.timely_filing_days for t in policy.terms.values())])
        since = now - dt.timedelta(days=longest + self.filing_alert_days)
        linked = self.index.archived_linked_since(since)
        orders = self.gate.orders({acc for _, acc, _ in linked})
        studies = [watch.ArchivedStudy(uid, acc, orders[acc].payer_id, orders[acc].report_status, at)
                   for uid, acc, at in linked if acc in orders]
        overdue = watch.overdue_reports(studies, policy.terms_of, now)
        exams = [watch.Performed(o.accession_number, o.payer_id, o.report_status, o.scheduled_date)
                 for o in self.gate.performed_without_final_report(since)]
        near = watch.filing_deadlines(exams, policy.terms_of, now.date(), self.filing_alert_days)
        flagged = self._flag_once([*overdue, *near], now)
        return ReportWatch(len(studies), len(exams), len(overdue),
                           sum(f.action == watch.AUDIT_REPORT_OVERDUE for f in flagged),
                           len(near), sum(f.action == watch.AUDIT_FILING_NEAR for f in flagged))

    def _flag_once(self, flags: list[watch.Flag], now: dt.datetime) -> list[watch.Flag]:
        actions = {f.action for f in flags}
        seen = {(detail.get("flag", ""), subject)
                for subject, detail in audit.details(actions, (f.subject for f in flags))} if flags else set()
        fresh = [f for f in flags if (f.action, f.subject) not in seen]
        with self.db.atomic():
            for f in fresh:
                log.warning("%s: %s", f.action, f.text)
                audit.record(now, REPORT_WATCH_USER, f.action, f.subject, f.text, flag=f.action,
                             accession_number=f.accession_number, due=f.due.isoformat())
        return fresh

    # -- rule 6: orders whose modality sends no MPPS -------------------------------------------

    def complete_without_mpps(self) -> Completion:
        """Complete each scheduled order whose archived study came without an MPPS in time."""
        now = self.clock()
        minutes = self.complete_without_mpps_minutes
        start = dt.datetime.combine(now.date() - dt.timedelta(days=COMPLETE_LOOKBACK_DAYS), dt.time.min)
        scheduled = {o.accession_number: o for o in self.gate.open_orders_scheduled(start, now + dt.timedelta(days=1))
                     if o.status == "scheduled"}
        earliest: dict[str, tuple[dt.datetime, str]] = {}
        for p in self.index.archived_of_orders(scheduled):
            earliest[p.order_accession] = min(earliest.get(p.order_accession, (p.first_received_at, p.study_instance_uid)),
                                              (p.first_received_at, p.study_instance_uid))
        stepped = self.gate.accessions_with_steps(earliest)
        arrived = [watch.Arrived(acc, scheduled[acc].status, uid, at, acc in stepped)
                   for acc, (at, uid) in sorted(earliest.items())]
        due = watch.complete_without_mpps(arrived, now, minutes)
        completed = units = 0
        for a in due:
            outcome = self.steps.complete_from_images(
                a.accession_number, a.study_instance_uid, user=COMPLETE_USER,
                reason=f"study {a.study_instance_uid} archived at {a.arrived_at:%Y-%m-%d %H:%M} and no MPPS "
                       f"within {minutes} minutes")
            if outcome is not None:
                completed += 1
                units += outcome.auth_unit_used is not None
        return Completion(len(arrived), completed, units, minutes)
