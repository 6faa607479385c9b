"""Review of held studies (rule 5 of docs/rules.md), and the list of archived studies.

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

from infra import audit
from infra.clock import Clock
from infra.errors import InvalidInput, NotFound, Refused, StorageFailure, WrongState
from store import archive as trees
from store.archive import WRITE_ERRORS, Archive, StoredFile, unlink_quietly
from store.correction import correct_file, corrected_patient
from store.header import read_header
from store.index import PRUNE, Index
from store.models import InstanceRow, StudyRow
from store.placement import TREE_OF, Placement
from store.receiving import OrderCheck, Receiving
from store.reconcile import MODALITY_MISMATCH, Reconciliation
from store.states import ARCHIVED, HELD, REJECTED
from worklist.gate import Gate
from worklist.orders import Order

log = logging.getLogger("store.review")

#: Audit actions (subject: the Study Instance UID).
AUDIT_RELEASED = "study.released"
AUDIT_CORRECTED = "study.corrected"
AUDIT_REJECTED = "study.rejected"
AUDIT_RECHECKED = "study.rechecked"


@dataclass(frozen=True)
class HeldStudy:
    """A held study as the review list shows it."""

    study_instance_uid: str
    accession_number: str
    held_since: dt.datetime
    instance_count: int
    codes: tuple[str, ...]
    reopened: bool = False  # archived before: a non-matching instance moved it back to held


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


class AmbiguousAccession(WrongState):
    """An accession number names several held studies; ``studies`` lists them, one must be chosen."""

    def __init__(self, accession: str, studies: list[HeldStudy]) -> None:
        super().__init__(f"accession number {accession} has {len(studies)} held studies; name one by its "
                         "Study Instance UID")
        self.accession = accession
        self.studies = studies


class Review:
    """What technologists do with held studies, over the store's parts."""

    def __init__(self, archive: Archive, index: Index, placement: Placement, receiving: Receiving, gate: Gate, *,
                 ae_title: str, clock: Clock) -> None:
        self.archive = archive
        self.index = index
        self.placement = placement
        self.receiving = receiving
        self.gate = gate
        self.ae_title = ae_title
        self.clock = clock
        #: The forwarding queue (:class:`store.outbox.Outbox`): a released or corrected study
        #: is queued in the transaction that archives it.
        self.outbox = None

    # -- looking ----------------------------------------------------------------------------

    def held_studies(self) -> list[HeldStudy]:
        """Every held study, oldest hold first."""
        rows = self.index.held_rows()
        codes = self.index.hold_codes([r.study_instance_uid for r in rows])
        return [_held(r, codes.get(r.study_instance_uid, ())) for r in rows]

    def find_held(self, study_or_accession: str) -> str:
        """The Study Instance UID of a held study named by its UID or by its accession number.

        Raises :class:`AmbiguousAccession` (listing them) when the accession number has several
        held studies, :class:`~infra.errors.NotFound` when nothing matches.
        """
        if self.index.study_row(study_or_accession) is not None:
            return study_or_accession
        rows = self.index.rows_of_accession(study_or_accession, HELD)
        if len(rows) == 1:
            return rows[0].study_instance_uid
        if rows:
            codes = self.index.hold_codes([r.study_instance_uid for r in rows])
            raise AmbiguousAccession(study_or_accession, [_held(r, codes.get(r.study_instance_uid, ())) for r in rows])
        raise NotFound(f"no study has Study Instance UID {study_or_accession!r}, and no held study has that "
                       "accession number; 'gatekeeper held list' shows the held ones")

    def held_study(self, study: str) -> HeldStudyDetail:
        """One held study's findings side by side, and its order."""
        row = self._row_in(study, HELD)
        grouped: Counter = Counter()
        messages: dict = {}
        for f in self.index.findings_of(study):
            key = (f.code, f.instance_value, f.order_value, f.holds)
            grouped[key] += 1
            messages.setdefault(key, f.message)
        summaries = tuple(FindingSummary(code, iv, ov, holds, n, messages[(code, iv, ov, holds)])
                          for (code, iv, ov, holds), n in grouped.items())
        codes = self.index.hold_codes([study]).get(study, ())
        order = self.gate.find_order(row.order_accession or row.accession_number)
        return HeldStudyDetail(_held(row, codes), summaries, order, self.index.senders_of(study))

    def archived_studies(self, accession: str | None = None) -> list[ArchivedStudy]:
        """Archived studies, newest first, optionally only those of one accession number."""
        rows = self.index.archived_rows(accession)
        orders = self.gate.orders({r.order_accession or r.accession_number for r in rows})
        return [ArchivedStudy(r.study_instance_uid, r.accession_number, r.instance_count, r.first_received_at,
                              r.last_received_at, orders.get(r.order_accession or r.accession_number))
                for r in rows]

    # -- deciding ---------------------------------------------------------------------------

    def release(self, study: str, *, user: str, reason: str) -> ReviewResult:
        """Archive a held study as it is."""
        return self._move_held(study, ARCHIVED, AUDIT_RELEASED, user, reason)

    def reject(self, study: str, *, user: str, reason: str) -> ReviewResult:
        """Move a held study to ``rejected/``; the purge job deletes it after the retention."""
        return self._move_held(study, REJECTED, AUDIT_REJECTED, user, reason)

    def recheck(self, study: str, *, user: str, reason: str) -> ReviewResult:
        """Reconcile a held study again against its order as the order is now (after a patient
        update from the RIS, say), and archive it when nothing holds it any more.

        The findings become those of the recheck either way; ``remaining_codes`` of the
        result names what still holds the study (then it stays held). Audited.
        """
        _need_who_and_why(user, reason)
        with self.placement.lock(study):
            row = self._row_in(study, HELD, settle=True)
            wanted = (row.order_accession or row.accession_number or "").strip()
            order = self.gate.find_order(wanted) if wanted else None
            if order is None:
                raise NotFound(f"study {study} has no order on file (accession {wanted or 'none'}), so there is "
                               "nothing to recheck it against; import the order, or correct the study with "
                               "'gatekeeper held correct --accession ACC'")
            instances = self.index.study_instances(study)
            found = self._reconcile_files([(i.sop_instance_uid, self.archive.root / i.path) for i in instances], order)
            remaining = tuple(sorted({f.code for _, r in found for f in r.hold_findings}))
            now = self.clock()
            with self.index.transaction():
                codes = list(self.index.hold_codes([study]).get(study, ()))
                self.index.replace_findings(study, found, now)
                if not remaining:
                    self.index.set_state(row.id, study, ARCHIVED, TREE_OF[ARCHIVED], now)
                audit.record(now, user, AUDIT_RECHECKED, study, reason, accession_number=order.accession_number,
                             instances=len(instances), codes=codes, remaining_codes=list(remaining),
                             released=not remaining)
            if not remaining:
                self.placement.settle_or_log(study)
        log.info("study %s (accession %s) rechecked by %s: %s", study, order.accession_number, user,
                 f"still held for {' '.join(remaining)}" if remaining else "released and archived")
        return ReviewResult(study, AUDIT_RECHECKED, HELD if remaining else ARCHIVED, len(instances),
                            order.accession_number, remaining_codes=remaining)

    def _move_held(self, study: str, state: str, action: str, user: str, reason: str) -> ReviewResult:
        _need_who_and_why(user, reason)
        with self.placement.lock(study):
            row = self._row_in(study, HELD, settle=True)
            now = self.clock()
            codes = self.index.hold_codes([study]).get(study, ())
            with self.index.transaction():
                if state == ARCHIVED and self.outbox is not None:  # before set_state: the files are still in held/
                    self.outbox.study_archived(study, corrected=False)
                self.index.set_state(row.id, study, state, TREE_OF[state], now)
                audit.record(now, user, action, study, reason, accession_number=row.accession_number,
                             instances=row.instance_count, codes=list(codes))
            self.placement.settle_or_log(study)
        log.info("study %s (accession %s) %s by %s", study, row.accession_number or "none", state, user)
        return ReviewResult(study, action, state, row.instance_count, row.accession_number)

    def correct(self, study: str, *, user: str, reason: str, accession: str | None = None,
                patient_change: bool = False) -> ReviewResult:
        """Set every instance's patient and accession attributes from the order, and archive.

        The order is the study's own, or the one ``accession`` names (the study is then
        reassigned to it). Reassigning images to another patient's order is refused unless
        ``patient_change`` confirms it, and refused outright when the images' modality is
        not the order's either: then they are almost certainly another exam. Originals are
        kept in Original Attributes Sequence (PS3.3 C.12.1, :mod:`store.correction`), and
        the study's findings become those of the corrected files. All corrected files are
        written and synced first; then they are renamed into ``archive/`` and the index
        switches in one transaction; then the held copies are deleted. A crash before the
        switch leaves the study held as it was; after it, the start finishes the clean-up.
        """
        _need_who_and_why(user, reason)
        with self.placement.lock(study):
            row = self._row_in(study, HELD, settle=True)
            wanted = (accession or row.order_accession or row.accession_number or "").strip()
            if not wanted:
                raise InvalidInput(f"study {study} has no accession number, so there is no order to correct it "
                                   "from; name the right order with --accession ACC")
            order = self.gate.find_order(wanted)
            if order is None:
                raise NotFound(f"no order has accession number {wanted!r}; check the number, or import the "
                               "order, then correct the study again")
            instances = self.index.study_instances(study)
            previous_patient = self._check_patient_change(row, instances, order, patient_change)
            now = self.clock()
            written = self._write_corrections(instances, order, reason, now)
            changed = sorted({c.keyword for _, _, changes in written for c in changes})
            found = self._reconcile_files([(i.sop_instance_uid, temp) for i, temp, _ in written], order)
            remaining = tuple(sorted({f.code for _, r in found for f in r.hold_findings}))
            self.index.mark_pending(row.id, PRUNE)
            stored = self._install_corrections(study, written)
            with self.index.transaction():
                codes = list(self.index.hold_codes([study]).get(study, ()))
                self.index.set_corrected(row.id, order.accession_number, order.patient_id, now,
                                         [(instance.id, new) for (instance, _, _), new in zip(written, stored)],
                                         patient=corrected_patient(order))
                self.index.replace_findings(study, found, now)
                if self.outbox is not None:  # sent again, to every destination, under the same UIDs
                    self.outbox.study_archived(study, corrected=True)
                audit.record(now, user, AUDIT_CORRECTED, study, reason, accession_number=order.accession_number,
                             previous_accession=row.accession_number, instances=len(written), changed=changed,
                             codes=codes, remaining_codes=list(remaining),
                             patient_change=previous_patient is not None, previous_patient_id=previous_patient)
            self.placement.settle_or_log(study)
        log.info("study %s corrected from order %s by %s and archived (%d instances)%s", study,
                 order.accession_number, user, len(written), ", moved to another patient" if previous_patient else "")
        return ReviewResult(study, AUDIT_CORRECTED, ARCHIVED, len(written), order.accession_number,
                            tuple(changed), remaining)

    def _check_patient_change(self, row: StudyRow, instances: list[InstanceRow], order: Order,
                              confirmed: bool) -> str | None:
        """The patient ID the images leave, when the correction moves them to another patient; else None.

        The images' patient is their own order's (the console picked it by accession), or,
        without one, the Patient ID they carry. Moving them to another patient needs the
        confirmation; when their modality is not the new order's either, it is refused.
        """
        own = self.gate.find_order(row.order_accession or row.accession_number)
        if own is not None and own.accession_number == order.accession_number:
            return None
        current = own.patient_id if own is not None else row.patient_id
        if current == order.patient_id:
            return None
        held = [(i.sop_instance_uid, self.archive.root / i.path) for i in instances]
        if any(f.code == MODALITY_MISMATCH for _, r in self._reconcile_files(held, order) for f in r.findings):
            raise Refused(f"order {order.accession_number} is for another patient and another modality "
                          f"({order.modality}) than study {study_name(row)}: these images are not that exam. "
                          "Find the right order, or reject the study")
        if not confirmed:
            raise Refused(f"order {order.accession_number} is for another patient than study {study_name(row)} "
                          f"(patient ID {current or '(none)'} on its images or order, {order.patient_id} on the "
                          "order): moving images to another patient needs --patient-change, with the reason")
        return current

    def _write_corrections(self, instances: list[InstanceRow], order: Order, reason: str,
                           now: dt.datetime) -> list[tuple[InstanceRow, Path, tuple]]:
        """Corrected copies of every instance in ``incoming/``; all or none."""
        written: list[tuple[InstanceRow, Path, tuple]] = []
        temps: list[Path] = []
        instance = None
        try:
            for instance in instances:
                temps.append(self.archive.new_incoming())
                changes = correct_file(self.archive.root / instance.path, temps[-1], order, reason_text=reason,
                                       modifying_system=self.ae_title, when=now,
                                       source_of_previous_values=instance.received_from)
                written.append((instance, temps[-1], changes))
        except Exception as exc:
            for temp in temps:
                unlink_quietly(temp)
            which = instance.sop_instance_uid if instance is not None else "?"
            raise StorageFailure(f"could not write the corrected copy of instance {which} ({exc}); nothing was "
                                 "changed. Check the held file and the storage volume, then try again") from exc
        return written

    def _install_corrections(self, study: str, written: list) -> list[StoredFile]:
        stored: list[StoredFile] = []
        try:
            for instance, temp, _ in written:
                stored.append(self.archive.write_new(trees.ARCHIVE_TREE, study, instance.series_instance_uid,
                                                     instance.sop_instance_uid, temp))
        except WRITE_ERRORS as exc:
            for _, temp, _ in written:
                unlink_quietly(temp)
            self.placement.settle_or_log(study)  # still held and marked PRUNE: deletes the copies in archive/
            raise type(exc)(f"could not file the corrected study: {exc} Nothing was changed; the study "
                            "is still held.") from exc
        return stored

    def _reconcile_files(self, files: list[tuple[str, Path]], order: Order) -> list[tuple[str, Reconciliation]]:
        """(SOP Instance UID, rule 3 against ``order``) for each file, as the files are now."""
        checks: dict = {}
        found = []
        for sop, path in files:
            header = read_header(path)
            day = self.receiving.study_day(header)
            if day not in checks:
                checks[day] = OrderCheck(*self.gate.authorization(order.accession_number, day))
            found.append((sop, self.receiving.reconcile(header, checks[day])))
        return found

    def _row_in(self, study: str, state: str, *, settle: bool = False) -> StudyRow:
        """The study's row when it is in ``state``; refuses otherwise.

        With ``settle`` (the caller holds the study's lock), a move or prune a crash left
        pending is finished first, so the action starts from one tree.
        """
        row = self.index.study_row(study)
        if row is None:
            raise NotFound(f"no study with Study Instance UID {study!r} was received; "
                           "'gatekeeper held list' shows the held ones")
        if settle and row.pending_files:
            self.placement.settle(study)
        if row.state != state:
            raise WrongState(f"study {study} is {row.state}, not {state}; only a held study can be "
                             "released, corrected or rejected")
        return row


def _held(row: StudyRow, codes: tuple[str, ...]) -> HeldStudy:
    reopened = row.reopened_at is not None and row.reopened_at == row.held_at
    return HeldStudy(row.study_instance_uid, row.accession_number, row.state_changed_at, row.instance_count, codes,
                     reopened)


def study_name(row: StudyRow) -> str:
    """A study as a person names it: its UID and accession number."""
    return f"{row.study_instance_uid} (accession {row.accession_number or 'none'})"


def _need_who_and_why(user: str, reason: str) -> None:
    if not user.strip() or not reason.strip():
        raise InvalidInput("say who decides and why: --user NAME --reason TEXT (both go to the audit log)")
