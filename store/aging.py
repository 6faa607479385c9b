"""Rules 5 and 6 (docs/rules.md), store side: held studies waiting too long, rejected studies past retention.

Pure functions over plain rows with the time passed in. :mod:`store.housekeeping` loads
the rows (held studies not yet flagged; rejected studies), calls these, and does the IO:
flag and warn, or delete the files and mark the study purged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

#: Audit action of the held-age job (subject: the Study Instance UID).
AUDIT_HELD_TOO_LONG = "study.held_too_long"
#: Audit action of the purge job (subject: the Study Instance UID).
AUDIT_PURGED = "study.purged"


@dataclass(frozen=True)
class Hold:
    """A study in the held state, as the held-age check needs it."""

    study_instance_uid: str
    accession_number: str
    held_at: dt.datetime
    age_flagged_at: dt.datetime | None = None


@dataclass(frozen=True)
class AgedHold:
    """A held study that crossed ``storage.held_alert_hours``: flag it, warn, audit once."""

    study_instance_uid: str
    accession_number: str
    held_at: dt.datetime
    hours_held: float

    def message(self, alert_hours: int) -> str:
        acc = self.accession_number or "(no accession number)"
        return (f"study {self.study_instance_uid} (accession {acc}) has been held {self.hours_held:.1f} hours, "
                f"over the {alert_hours}-hour alert; review it: release, correct or reject it")


@dataclass(frozen=True)
class RejectedStudy:
    """A study in the rejected state and when it was rejected."""

    study_instance_uid: str
    accession_number: str
    rejected_at: dt.datetime


def hours_between(start: dt.datetime, end: dt.datetime) -> float:
    return (end - start).total_seconds() / 3600


def aged_holds(studies: Iterable[Hold], now: dt.datetime, alert_hours: int) -> list[AgedHold]:
    """Held studies held at least ``alert_hours`` and not flagged yet, oldest first."""
    limit = dt.timedelta(hours=alert_hours)
    found = [
        AgedHold(s.study_instance_uid, s.accession_number, s.held_at, round(hours_between(s.held_at, now), 1))
        for s in studies
        if s.age_flagged_at is None and now - s.held_at >= limit
    ]
    return sorted(found, key=lambda a: (a.held_at, a.study_instance_uid))


def purge_due(rejected_at: dt.datetime, retention_days: int) -> dt.datetime:
    """The moment a study rejected at ``rejected_at`` may be purged."""
    return rejected_at + dt.timedelta(days=retention_days)


def past_retention(studies: Iterable[RejectedStudy], now: dt.datetime, retention_days: int) -> list[RejectedStudy]:
    """Rejected studies kept their full ``retention_days``, oldest first (a study is never purged early)."""
    found = [s for s in studies if now >= purge_due(s.rejected_at, retention_days)]
    return sorted(found, key=lambda s: (s.rejected_at, s.study_instance_uid))
