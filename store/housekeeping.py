"""The store's scheduled work (rule 6 of docs/rules.md): flag held studies waiting too long, purge rejected ones.

The rules are :mod:`store.aging` (pure); this module loads the rows, and records what it
did: a WARNING, an audit event and a mark for each aged hold; the files deleted (under
the study's lock) and the study marked purged for each rejected study past retention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import peewee as pw

from infra import audit
from infra.clock import Clock
from store import aging
from store.archive import REJECTED_TREE, Archive
from store.index import Index
from store.placement import Placement
from store.states import REJECTED

log = logging.getLogger("store.housekeeping")

#: The audit log's ``user`` of the jobs' events.
HELD_AGE_USER = "job:held_age"
PURGE_USER = "job:purge_rejected"


@dataclass(frozen=True)
class AgedHolds:
    checked: int
    flagged: int
    alert_hours: int


@dataclass(frozen=True)
class Purge:
    rejected: int
    due: int
    purged: int
    files_deleted: int
    failed: int
    retention_days: int


class Housekeeping:
    """Held-age flags and the purge of rejected studies."""

    def __init__(self, db: pw.Database, archive: Archive, index: Index, placement: Placement, *, clock: Clock,
                 held_alert_hours: int, rejected_retention_days: int) -> None:
        self.db = db
        self.archive = archive
        self.index = index
        self.placement = placement
        self.clock = clock
        self.held_alert_hours = held_alert_hours
        self.rejected_retention_days = rejected_retention_days

    def flag_aged_holds(self) -> AgedHolds:
        """Flag held studies older than ``storage.held_alert_hours``: WARNING, ``age_flagged_at``, one audit."""
        now = self.clock()
        hours = self.held_alert_hours
        held = [aging.Hold(r.study_instance_uid, r.accession_number, r.held_at or r.state_changed_at)
                for r in self.index.held_not_flagged()]
        flagged = 0
        for aged in aging.aged_holds(held, now, hours):
            with self.db.atomic():
                if not self.index.flag_aged(aged.study_instance_uid, now):
                    continue  # released, rejected or flagged meanwhile
                audit.record(now, HELD_AGE_USER, aging.AUDIT_HELD_TOO_LONG, aged.study_instance_uid,
                             aged.message(hours), accession_number=aged.accession_number,
                             held_at=aged.held_at.isoformat(), hours_held=aged.hours_held, alert_hours=hours)
            flagged += 1
            log.warning("%s", aged.message(hours))
        return AgedHolds(len(held), flagged, hours)

    def purge_rejected(self) -> Purge:
        """Delete the files of rejected studies past ``storage.rejected_retention_days``.

        The study row stays (state ``purged``, with its findings and instance count) as the
        record that the study existed; its instance rows, which only said where files were,
        are deleted. Only files in the ``rejected/`` tree are ever removed, and only for a
        study whose row is in the rejected state when it is purged, under the study's lock.
        Files go first, then the row changes state: a crash in between leaves a rejected
        study with fewer files, which the next run finishes.
        """
        now = self.clock()
        days = self.rejected_retention_days
        rejected = [aging.RejectedStudy(r.study_instance_uid, r.accession_number, r.state_changed_at)
                    for r in self.index.rejected_rows()]
        due = aging.past_retention(rejected, now, days)
        purged = files = failed = 0
        for study in due:
            try:
                removed = self._purge_one(study, now, days)
            except Exception:
                failed += 1
                log.exception("could not purge rejected study %s; it is tried again at the next run",
                              study.study_instance_uid)
                continue
            if removed is not None:
                purged += 1
                files += removed
        return Purge(len(rejected), len(due), purged, files, failed, days)

    def _purge_one(self, study: aging.RejectedStudy, now, days: int) -> int | None:
        """Purge one study; the number of files deleted, or None when it is no longer rejected."""
        uid = study.study_instance_uid
        with self.placement.lock(uid):
            current = self.index.study_row(uid)
            if current is None or current.state != REJECTED:
                return None
            size, rows = self.index.indexed_size(uid)
            removed = self.archive.remove_study(REJECTED_TREE, uid)
            with self.db.atomic():
                deleted = self.index.mark_purged(uid, now)
                if deleted is None:
                    return None
                audit.record(now, PURGE_USER, aging.AUDIT_PURGED, uid,
                             f"rejected on {study.rejected_at:%Y-%m-%d %H:%M}, past the {days}-day retention",
                             accession_number=study.accession_number, files_deleted=removed,
                             instance_rows_deleted=deleted, bytes_freed=size,
                             instance_count=current.instance_count, indexed_instances=rows)
        log.info("purged rejected study %s (accession %s): %d files deleted", uid,
                 study.accession_number or "none", removed)
        return removed
