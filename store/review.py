"""Review of held studies (SPEC rule 5), and the list of archived studies.

Operators list and inspect held studies, then release (:meth:`Review.release`), correct
(:meth:`Review.correct`) or reject (:meth:`Review.reject`) each; every action is audited
and takes the study's lock, so it never races a C-STORE of the same study.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from store import archive as trees
from store import index
from store.archive import ArchiveWriteError, StoredFile, unlink_quietly
from store.correction import correct_file
from store.filing import Filing, Session
from store.header import read_header
from store.models import ARCHIVED, HELD, REJECTED, InstanceRow, StudyRow
from store.placement import TREE_OF
from store.reconcile import reconcile
from worklist.models import audit
from worklist.orders import Order

log = logging.getLogger("store.service")  # the store's log lines keep one logger name

#: Audit actions (subject: the Study Instance UID).
AUDIT_RELEASED = "study.released"
AUDIT_CORRECTED = "study.corrected"
AUDIT_REJECTED = "study.rejected"


class StudyRefused(Exception):
    """A review action cannot be done (unknown study, wrong state, no order); nothing changed."""


@dataclass(frozen=True)
class HeldStudy:
    """A held study as the review list shows it."""

    study_instance_uid: str
    accession_number: str
    held_since: dt.datetime
    instance_count: int
    codes: tuple[str, ...]


@dataclass(frozen=True)
class FindingSummary:
    """One distinct finding of a study: its values side by side and how many instances have it."""

    code: str
    instance_value: str
    order_value: str
    holds: bool
    instances: int
    message: str


@dataclass(frozen=True)
class HeldStudyDetail:
    study: HeldStudy
    findings: tuple[FindingSummary, ...]
    order: Order | None
    received_from: tuple[str, ...]


@dataclass(frozen=True)
class ReviewResult:
    """What a release, correction or rejection did."""

    study_instance_uid: str
    action: str
    state: str
    instances: int
    accession_number: str
    changed: tuple[str, ...] = ()  # keywords a correction changed, in any instance
    remaining_codes: tuple[str, ...] = ()  # codes a correction could not clear


@dataclass(frozen=True)
class ArchivedStudy:
    study_instance_uid: str
    accession_number: str
    instance_count: int
    first_received_at: dt.datetime
    last_received_at: dt.datetime
    order: Order | None


class Review(Filing):
    """The part of :class:`store.service.Store` that operators use to review studies."""

    ae_title: str

    def held_studies(self) -> list[HeldStudy]:
        """Every held study, oldest hold first."""
        rows = index.held_rows()
        codes = index.hold_codes([r.study_instance_uid for r in rows])
        return [_held(r, codes.get(r.study_instance_uid, ())) for r in rows]

    def held_study(self, study: str) -> HeldStudyDetail:
        """One held study's findings side by side, and its order."""
        row = self._row_in(study, HELD)
        grouped: Counter = Counter()
        messages: dict = {}
        for f in index.findings_of(study):
            key = (f.code, f.instance_value, f.order_value, f.holds)
            grouped[key] += 1
            messages.setdefault(key, f.message)
        summaries = tuple(FindingSummary(code, iv, ov, holds, n, messages[(code, iv, ov, holds)])
                          for (code, iv, ov, holds), n in grouped.items())
        codes = index.hold_codes([study]).get(study, ())
        return HeldStudyDetail(_held(row, codes), summaries, index.order_of(row), index.senders_of(study))

    def release(self, study: str, *, user: str, reason: str) -> ReviewResult:
        """Archive a held study as it is (SPEC rule 5)."""
        return self._move_held(study, ARCHIVED, AUDIT_RELEASED, user, reason)

    def reject(self, study: str, *, user: str, reason: str) -> ReviewResult:
        """Move a held study to ``rejected/``; the purge job deletes it after the retention."""
        return self._move_held(study, REJECTED, AUDIT_REJECTED, user, reason)

    def _move_held(self, study: str, state: str, action: str, user: str, reason: str) -> ReviewResult:
        _need_who_and_why(user, reason)
        with self._study_lock(study):
            row = self._row_in(study, HELD, settle=True)
            now = self.clock()
            codes = index.hold_codes([study]).get(study, ())
            with index.transaction():
                index.set_state(row.id, study, state, TREE_OF[state], now)
                audit(now, user, action, study, reason, accession_number=row.accession_number,
                      instances=row.instance_count, codes=list(codes))
            self._settle_or_log(study)
        log.info("study %s (accession %s) %s by %s", study, row.accession_number or "none", state, user)
        return ReviewResult(study, action, state, row.instance_count, row.accession_number)

    def correct(self, study: str, *, user: str, reason: str, accession: str | None = None) -> ReviewResult:
        """Set every instance's patient and accession attributes from the order, and archive.

        The order is the study's own, or the one ``accession`` names (the study is then
        reassigned to it). Originals are kept in Original Attributes Sequence
        (PS3.3 C.12.1, :mod:`store.correction`). All corrected files are written and
        synced first; then they are renamed into ``archive/`` and the index switches in
        one transaction; then the held copies are deleted. A crash before the switch
        leaves the study held as it was; after it, the start finishes the clean-up.
        """
        _need_who_and_why(user, reason)
        with self._study_lock(study):
            row = self._row_in(study, HELD, settle=True)
            wanted = (accession or row.order_accession or row.accession_number or "").strip()
            if not wanted:
                raise StudyRefused(f"study {study} has no accession number, so there is no order to correct it "
                                   "from; name the right order with --accession ACC")
            order_row = index.order_row(wanted)
            if order_row is None:
                raise StudyRefused(f"no order has accession number {wanted!r}; check the number, or import the "
                                   "order, then correct the study again")
            order = order_row.to_order()
            now = self.clock()
            instances = index.study_instances(study)
            written = self._write_corrections(instances, order, reason, now)
            changed = sorted({c.keyword for _, _, changes in written for c in changes})
            remaining = self._remaining_codes([temp for _, temp, _ in written], order)
            index.mark_pending(row.id, index.PRUNE)
            stored = self._install_corrections(study, written)
            with index.transaction():
                index.set_corrected(row.id, order, now,
                                    [(instance.id, new) for (instance, _, _), new in zip(written, stored)])
                audit(now, user, AUDIT_CORRECTED, study, reason, accession_number=order.accession_number,
                      previous_accession=row.accession_number, instances=len(written), changed=changed,
                      codes=list(index.hold_codes([study]).get(study, ())), remaining_codes=list(remaining))
            self._settle_or_log(study)
        log.info("study %s corrected from order %s by %s and archived (%d instances)", study,
                 order.accession_number, user, len(written))
        return ReviewResult(study, AUDIT_CORRECTED, ARCHIVED, len(written), order.accession_number,
                            tuple(changed), remaining)

    def _write_corrections(self, instances: list[InstanceRow], order: Order, reason: str,
                           now: dt.datetime) -> list[tuple[InstanceRow, Path, tuple]]:
        """Corrected copies of every instance in ``incoming/``; all or none."""
        written: list[tuple[InstanceRow, Path, tuple]] = []
        temps: list[Path] = []
        instance = None
        try:
            for instance in instances:
                temps.append(self.archive.new_incoming())
                changes = correct_file(self.root / instance.path, temps[-1], order, reason_text=reason,
                                       modifying_system=self.ae_title, when=now,
                                       source_of_previous_values=instance.received_from)
                written.append((instance, temps[-1], changes))
        except Exception as exc:
            for temp in temps:
                unlink_quietly(temp)
            which = instance.sop_instance_uid if instance is not None else "?"
            raise StudyRefused(f"could not write the corrected copy of instance {which} ({exc}); nothing was "
                               "changed. Check the held file and the storage volume, then try again") from exc
        return written

    def _install_corrections(self, study: str, written: list) -> list[StoredFile]:
        stored: list[StoredFile] = []
        try:
            for instance, temp, _ in written:
                stored.append(self.archive.write_new(trees.ARCHIVE, study, instance.series_instance_uid,
                                                     instance.sop_instance_uid, temp))
        except ArchiveWriteError as exc:
            for _, temp, _ in written:
                unlink_quietly(temp)
            self._settle_or_log(study)  # still held and marked PRUNE: deletes the copies in archive/
            raise StudyRefused(f"could not file the corrected study: {exc} Nothing was changed; the study "
                               "is still held.") from exc
        return stored

    def _remaining_codes(self, files: list[Path], order: Order) -> tuple[str, ...]:
        """Codes the corrected files still have against the order (what correction cannot fix)."""
        remaining: set[str] = set()
        session = Session()
        for path in files:
            header = read_header(path)
            check = session.order_check(order.accession_number, self._study_day(header), self.check_order)
            found = reconcile(header, check.order, order_authorized=check.authorized, hold_codes=self.hold_codes)
            remaining.update(f.code for f in found.hold_findings)
        return tuple(sorted(remaining))

    def archived_studies(self, accession: str | None = None) -> list[ArchivedStudy]:
        """Archived studies, newest first, optionally only those of one accession number."""
        rows = index.archived_rows(accession)
        orders = index.orders_for({r.order_accession or r.accession_number for r in rows} - {""})
        return [ArchivedStudy(r.study_instance_uid, r.accession_number, r.instance_count, r.first_received_at,
                              r.last_received_at, orders.get(r.order_accession or r.accession_number))
                for r in rows]

    def _row_in(self, study: str, state: str, *, settle: bool = False) -> StudyRow:
        """The study's row when it is in ``state``; refuses otherwise.

        With ``settle`` (the caller holds the study's lock), a move or prune a crash left
        pending is finished first, so the action starts from one tree.
        """
        row = index.study_row(study)
        if row is None:
            raise StudyRefused(f"no study with Study Instance UID {study!r} was received; "
                               "'gatekeeper held list' shows the held ones")
        if settle and row.pending_files:
            self._settle(study)
        if row.state != state:
            raise StudyRefused(f"study {study} is {row.state}, not {state}; only a held study can be "
                               "released, corrected or rejected")
        return row


def _held(row: StudyRow, codes: tuple[str, ...]) -> HeldStudy:
    return HeldStudy(row.study_instance_uid, row.accession_number, row.state_changed_at, row.instance_count, codes)


def _need_who_and_why(user: str, reason: str) -> None:
    if not user.strip() or not reason.strip():
        raise StudyRefused("say who decides and why: --user NAME --reason TEXT (both go to the audit log)")
