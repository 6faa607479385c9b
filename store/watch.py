"""What the follow-up jobs look for (rules 6 and 7 of docs/rules.md), as pure functions.

- :func:`overdue_reports`: studies archived more than their payer's ``report_due_days``
  ago whose order's report is not final (``study.report_overdue``);
- :func:`filing_deadlines`: performed exams whose claim deadline (exam date + the payer's
  ``timely_filing_days``) is at most ``alert_days`` away, or already passed, while the
  report is not final (``order.filing_deadline_near``);
- :func:`complete_without_mpps`: scheduled orders whose archived study first arrived at
  least ``minutes`` ago and for which no MPPS step was ever reported.

"Final" means the RIS reported the report ``final`` or ``corrected`` (a corrected report
is a final one amended); none yet and ``preliminary`` are not final. The callers pass the
rows in and the time; nothing here reads a clock or a database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable, Iterable

from worklist.policy import PayerTerms

#: Report statuses that count as a final report.
FINAL_STATUSES = frozenset({"final", "corrected"})
#: Audit actions, one per flag; each subject is flagged once.
AUDIT_REPORT_OVERDUE = "study.report_overdue"
AUDIT_FILING_NEAR = "order.filing_deadline_near"


@dataclass(frozen=True)
class ArchivedStudy:
    """An archived study with what its order says: payer, report status, exam date."""

    study_instance_uid: str
    accession_number: str
    payer_id: str
    report_status: str
    archived_at: dt.datetime


@dataclass(frozen=True)
class Performed:
    """A performed exam (completed order) and its report status."""

    accession_number: str
    payer_id: str
    report_status: str
    exam_date: dt.date


@dataclass(frozen=True)
class Flag:
    """One thing to flag: its subject (Study UID or accession number), the day it is about, a sentence."""

    action: str
    subject: str
    accession_number: str
    due: dt.date
    text: str


def is_final(report_status: str) -> bool:
    return report_status in FINAL_STATUSES


def _status(report_status: str) -> str:
    return f"is {report_status}" if report_status else "has not been received"


def overdue_reports(studies: Iterable[ArchivedStudy], terms: Callable[[str], PayerTerms],
                    now: dt.datetime) -> list[Flag]:
    """Archived studies whose report is not final ``report_due_days`` after archiving (strictly more)."""
    flags = []
    for s in studies:
        if is_final(s.report_status):
            continue
        due_days = terms(s.payer_id).report_due_days
        due = s.archived_at + dt.timedelta(days=due_days)
        if now <= due:
            continue
        flags.append(Flag(
            AUDIT_REPORT_OVERDUE, s.study_instance_uid, s.accession_number, due.date(),
            f"the report of order {s.accession_number} (study {s.study_instance_uid}) {_status(s.report_status)}; "
            f"payer {s.payer_id} expects a final report within {due_days} days of the study, by {due:%Y-%m-%d %H:%M}. "
            f"Ask the reading radiologist to finalise it.",
        ))
    return sorted(flags, key=lambda f: (f.due, f.subject))


def filing_deadlines(exams: Iterable[Performed], terms: Callable[[str], PayerTerms], today: dt.date,
                     alert_days: int) -> list[Flag]:
    """Exams whose claim deadline is at most ``alert_days`` days away (or passed) and whose report is not final."""
    flags = []
    for e in exams:
        if is_final(e.report_status):
            continue
        filing_days = terms(e.payer_id).timely_filing_days
        deadline = e.exam_date + dt.timedelta(days=filing_days)
        left = (deadline - today).days
        if left > alert_days:
            continue
        when = (f"passed on {deadline}" if left < 0 else "is today" if left == 0
                else f"is {deadline}, in {left} {'day' if left == 1 else 'days'}")
        flags.append(Flag(
            AUDIT_FILING_NEAR, e.accession_number, e.accession_number, deadline,
            f"the claim deadline of order {e.accession_number} (exam {e.exam_date}, payer {e.payer_id}, "
            f"{filing_days} days to file) {when}, and its report {_status(e.report_status)}; "
            f"have the report finalised and the claim filed.",
        ))
    return sorted(flags, key=lambda f: (f.due, f.subject))


@dataclass(frozen=True)
class Arrived:
    """An order, its earliest archived study (when that study first arrived), and whether any MPPS named it."""

    accession_number: str
    order_status: str
    study_instance_uid: str
    arrived_at: dt.datetime
    has_mpps: bool


def complete_without_mpps(arrived: Iterable[Arrived], now: dt.datetime, minutes: int) -> list[Arrived]:
    """The orders to complete from their images: still scheduled, no MPPS step ever reported for
    them (an MPPS in progress or discontinued means the modality reports steps: it is waited
    for), and their archived study first arrived ``minutes`` ago or more (exactly at the
    boundary counts)."""
    cutoff = now - dt.timedelta(minutes=minutes)
    return [a for a in arrived if a.order_status == "scheduled" and not a.has_mpps and a.arrived_at <= cutoff]
