"""Receiving, filing and reviewing studies: the IO side of SPEC rules 3, 4 and 5.

:class:`Store` files each received instance (:meth:`Store.receive`): it reads the header
only (:func:`store.header.read_header`), reconciles it with its order
(:func:`store.reconcile.reconcile`), decides the study's state (the study is the unit,
:func:`store.reconcile.study_state`), writes the file durably into the tree of that state
(:class:`store.archive.Archive`) and indexes it (:mod:`store.models`). Only then may the
caller acknowledge the C-STORE. Operators review held studies with :meth:`Store.release`,
:meth:`Store.correct` and :meth:`Store.reject`; each action is audited.

Rules this module keeps (README, "Storage"):

- **One tree per study.** Every file of a study is in the tree of its state: ``archive/``
  when archived, ``held/`` when held, ``rejected/`` when rejected. When an archived study
  becomes held (an instance that fails reconciliation arrives), its archived files move
  to ``held/`` with it, so the operator reviews the whole study and a release or a
  correction acts on all of it.
- **Re-sent instances replace.** An instance received again (same SOP Instance UID)
  replaces the stored file atomically, the index row is updated in place (never a
  second row) and its findings are derived again: a modality that re-sends after fixing
  the console's values is taken at its word.
- **Order of writes.** File first (fsynced, renamed into place, folder fsynced), then the
  index in one transaction, then the acknowledgement. Two small journals make a crash at
  any point recoverable at the next start (:meth:`Store.recover`):

  * before the rename, a second name (hard link ``incoming/inflight-*``) of the received
    file is made, and it is removed once the index row is committed. A crash in between
    leaves the link: at start, a file that is in a tree but not in the index is filed
    again from it. Every other file in ``incoming/`` is a partial receive and is removed.
  * an action that changes a study's state and so moves its files sets
    ``StudyRow.pending_files`` in the same transaction and clears it once the files are in
    place; at start, a study still marked gets its files moved (or pruned) then.

- **Locks.** Deciding a study's state, moving its files and indexing them are done under
  a per-study lock: an exclusive ``flock`` on one of :data:`LOCK_STRIPES` files in
  ``<storage root>/.locks/``. It serialises the server's associations and the command
  line's review actions on one machine alike (a threading lock would not see the
  command line). Gateways on several machines sharing one PostgreSQL database must not
  share a storage root. The index transactions of one process also take turns
  (:data:`_ONE_WRITER`).

Per-instance work is small: the header read (no pixel data), a cached order check per
accession and day (:class:`Session`, one per association, dropped with it), two indexed
look-ups and one transaction of prepared statements (:class:`_Rows`). The fsyncs are the
file's, its folder's (both in :meth:`Archive.write_new`) and the index commit's; none is
repeated. Nothing here logs patient names, IDs or birth dates at INFO.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import logging
import os
import shutil
import threading
import zlib
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import peewee as pw

from store import archive as trees
from store.archive import Archive, ArchiveWriteError, StoredFile
from store.correction import correct_file
from store.header import InstanceHeader, UnreadableInstance, read_header
from store.models import ARCHIVED, HELD, REJECTED, FindingRow, InstanceRow, StudyRow
from store.reconcile import CODES, Reconciliation, accession_of, reconcile, study_state
from worklist.db import database
from worklist.gating import AUTH_EXHAUSTED, BASIS_AUTH, BASIS_NOT_REQUIRED, BASIS_OVERRIDE, auth_problems
from worklist.models import OrderRow, audit
from worklist.orders import Order
from worklist.policy import PayerPolicy
from worklist.service import auths_for_patients, overrides_for

log = logging.getLogger(__name__)

#: The tree each kept state's files live in (a purged study has none).
TREE_OF = {ARCHIVED: trees.ARCHIVE, HELD: trees.HELD, REJECTED: trees.REJECTED}
#: ``StudyRow.pending_files``: move the study's files into its state's tree / delete the others.
MOVE, PRUNE = "move", "prune"
#: Prefix of the second name a received file has in ``incoming/`` until it is indexed.
INFLIGHT = "inflight-"
#: Number of lock files the studies are spread over.
LOCK_STRIPES = 256

#: ReceiveFailed kinds (the gateway maps each to a C-STORE status).
OUT_OF_RESOURCES = trees.OUT_OF_RESOURCES
CANNOT_PROCESS = trees.CANNOT_PROCESS
DOES_NOT_MATCH = "does_not_match"

#: Audit actions (subject: the Study Instance UID).
AUDIT_RELEASED = "study.released"
AUDIT_CORRECTED = "study.corrected"
AUDIT_REJECTED = "study.rejected"

_RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE})


class ReceiveFailed(Exception):
    """An instance was not stored; nothing of it is left in a tree or the index.

    ``kind`` is :data:`OUT_OF_RESOURCES` (the sender should retry later),
    :data:`CANNOT_PROCESS` or :data:`DOES_NOT_MATCH` (the dataset is not the instance
    the request names).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StudyRefused(Exception):
    """A review action cannot be done (unknown study, wrong state, no order); nothing changed."""


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class OrderCheck:
    """The order an accession number names, and whether it was authorized on a day.

    ``basis`` says why it is authorized (``auth``, ``no-auth-needed``, ``override``);
    ``auth_number`` names the auth that covers it.
    """

    order: Order | None
    authorized: bool
    basis: str | None = None
    auth_number: str | None = None


@dataclass(frozen=True)
class Received:
    """What :meth:`Store.receive` did with one instance."""

    sop_instance_uid: str
    study_instance_uid: str
    accession_number: str
    state: str  # the study's state afterwards: archived or held
    hold_codes: tuple[str, ...]  # codes of this instance that hold
    warn_codes: tuple[str, ...]  # codes of this instance that only warn
    stored: StoredFile
    replaced: bool = False  # the instance had been received before
    moved: int = 0  # files of the study moved into its new tree

    def summary(self) -> str:
        """The outcome for the log line: ``archived`` or ``held (CODES)``, and notes."""
        if self.state == HELD:
            text = f"held ({' '.join(self.hold_codes) or 'study already held'})"
        else:
            text = "archived"
        if self.warn_codes:
            text += f", warns {' '.join(self.warn_codes)}"
        if self.moved:
            text += f", {self.moved} earlier file(s) of the study moved to held"
        if self.replaced:
            text += ", re-sent (replaced)"
        return text


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


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Store.recover` did at start."""

    refiled: tuple[str, ...]  # SOP Instance UIDs filed again after an interrupted index
    settled: tuple[str, ...]  # studies whose interrupted move or prune was finished
    leftovers: int  # partial files removed from incoming/


# ------------------------------------------------------------------------------ session


@dataclass
class Session:
    """Per-association memory: the order check of each (accession, day) already seen.

    An association sends one study or a few, so the order and auth look-ups are done
    once per accession rather than once per instance. A session lives as long as its
    association; the next association looks again, so an order or auth changed in the
    meantime is seen.
    """

    checks: dict[tuple[str, dt.date], OrderCheck] = field(default_factory=dict)

    def order_check(self, accession: str, day: dt.date, look_up: Callable[[str, dt.date], OrderCheck]) -> OrderCheck:
        key = (accession, day)
        found = self.checks.get(key)
        if found is None:
            found = self.checks[key] = look_up(accession, day)
        return found


# -------------------------------------------------------------------------------- store


class Store:
    """The storage root and its index, with the rules that file and review studies."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        policy: PayerPolicy,
        hold_codes: frozenset[str],
        ae_title: str,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.archive = Archive(root)
        self.root = self.archive.root
        self.policy = policy
        self.hold_codes = frozenset(hold_codes)
        self.ae_title = ae_title
        self.clock = clock
        self._incoming = self.archive.incoming.resolve()
        self._locks = self.root / ".locks"
        self._locks.mkdir(exist_ok=True)
        self._links_work = True

    # -- receiving ----------------------------------------------------------------------

    def receive(
        self,
        path: str | os.PathLike[str],
        calling_ae: str = "",
        *,
        session: Session | None = None,
        sop_class_uid: str = "",
        sop_instance_uid: str = "",
    ) -> Received:
        """Reconcile and file the Part 10 file at ``path`` (SPEC rules 3 and 4).

        A file directly in ``incoming/`` is consumed: renamed into place, or deleted when it
        cannot be filed. Any other file is copied first and left alone. ``sop_class_uid`` and ``sop_instance_uid``, when given,
        are those of the C-STORE request, and the dataset must carry the same. Returns
        once the file is durable and indexed; raises :class:`ReceiveFailed` otherwise.
        """
        source = Path(path)
        if source.resolve().parent != self._incoming:
            source = self._copy_in(source)
        try:
            try:
                header = read_header(source)
            except UnreadableInstance as exc:
                raise ReceiveFailed(CANNOT_PROCESS, str(exc)) from exc
            except OSError as exc:
                raise _os_failure(exc, f"could not read the received file {source.name}") from exc
            _check_request(header, sop_class_uid, sop_instance_uid)
            accession = accession_of(header)
            check = (session or Session()).order_check(accession, self._study_day(header), self.check_order)
            found = reconcile(header, check.order, order_authorized=check.authorized, hold_codes=self.hold_codes)
            return self._file(source, header, found, check, calling_ae)
        finally:
            if not source.name.startswith(INFLIGHT) and source.exists():
                _unlink_quietly(source)  # not filed: a copy made above, or the sender's file

    def check_order(self, accession: str, day: dt.date) -> OrderCheck:
        """The order with ``accession`` and whether it was authorized on ``day``.

        Authorized when the payer policy needs no auth for its CPT code, when an override
        exists, or when an auth for its payer and patient has no problem on that day. An
        exhausted auth still counts when the exhausted unit is the one this order used
        (its own exam completed, SPEC rule 6): images normally arrive after that.
        """
        row = OrderRow.get_or_none(OrderRow.accession_number == accession) if accession else None
        if row is None:
            return OrderCheck(None, False)
        order = row.to_order()
        if not self.policy.requires_auth(order.payer_id, order.cpt):
            return OrderCheck(order, True, BASIS_NOT_REQUIRED)
        if overrides_for([accession]):
            return OrderCheck(order, True, BASIS_OVERRIDE)
        for auth in auths_for_patients([order.patient_id]).get(order.patient_id, ()):
            if auth.payer_id != order.payer_id:
                continue
            codes = {reason.code for reason in auth_problems(order, auth, day)}
            if row.auth_unit_used and row.auth_unit_used == auth.auth_number:
                codes.discard(AUTH_EXHAUSTED)
            if not codes:
                return OrderCheck(order, True, BASIS_AUTH, auth.auth_number)
        return OrderCheck(order, False)

    def _study_day(self, header: InstanceHeader) -> dt.date:
        """Study Date (0008,0020) as a date; the receive date when it is empty or malformed."""
        text = header.study_date.replace(".", "")  # ACR-NEMA YYYY.MM.DD is still met
        try:
            return dt.datetime.strptime(text, "%Y%m%d").date()
        except ValueError:
            return self.clock().date()

    def _copy_in(self, source: Path) -> Path:
        temp = None
        try:
            temp = self.archive.new_incoming()
            shutil.copyfile(source, temp)
        except ArchiveWriteError as exc:
            raise ReceiveFailed(exc.kind, str(exc)) from exc
        except OSError as exc:
            if temp is not None:
                _unlink_quietly(temp)
            raise _os_failure(exc, f"could not copy {source.name} into {self.archive.incoming}") from exc
        return temp

    def _file(self, source: Path, header: InstanceHeader, found: Reconciliation, check: OrderCheck,
              calling_ae: str) -> Received:
        study, series, sop = header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        with self._study_lock(study):
            row = _ROWS.study(study)
            previous = row.state if row is not None else None
            state = study_state(previous, found)
            tree = TREE_OF[state]
            existing = _ROWS.instance(sop)
            link = self._inflight_link(source)
            try:
                stored = self.archive.write_new(tree, study, series, sop, source)
            except ArchiveWriteError as exc:
                _unlink_quietly(link)
                raise ReceiveFailed(exc.kind, str(exc)) from exc
            except ValueError as exc:  # a UID unfit for a file name (read_header checks this too)
                _unlink_quietly(link)
                raise ReceiveFailed(CANNOT_PROCESS, str(exc)) from exc
            changes_state = row is not None and previous != state
            now = self.clock()
            try:
                with _ONE_WRITER, database.atomic():
                    self._index(row, existing, header, found, check, state, stored, calling_ae, now, changes_state)
            except Exception as exc:
                self._undo_write(existing, stored, header, link)
                text = str(exc).lower()
                kind = OUT_OF_RESOURCES if "full" in text or "no space" in text else CANNOT_PROCESS
                raise ReceiveFailed(kind, f"could not index instance {sop} ({exc}); it was not stored. "
                                          "Check the database; the sender will retry.") from exc
            _unlink_quietly(link)
            old = Path(existing.path) if existing is not None else None
            if old is not None and old != stored.path and not (changes_state and existing.study_instance_uid == study):
                self._remove_file(old)  # a re-send filed under another study or series
            moved = 0
            if changes_state or (row is not None and row.pending_files):
                moved = self._settle_or_log(study)
        return Received(sop, study, found.accession_used, state,
                        tuple(f.code for f in found.hold_findings), tuple(f.code for f in found.warn_findings),
                        stored, replaced=existing is not None, moved=moved)

    def _index(self, row: _Study | None, existing: _Instance | None, header: InstanceHeader,
               found: Reconciliation, check: OrderCheck, state: str, stored: StoredFile, calling_ae: str,
               now: dt.datetime, settle: bool) -> None:
        study, sop = header.study_instance_uid, header.sop_instance_uid
        counts = existing is None or existing.study_instance_uid != study
        accession = found.accession_used[:16]
        order_accession = check.order.accession_number if check.order is not None else ""
        if row is None:
            _ROWS.insert(StudyRow, dict(
                study_instance_uid=study, state=state, accession_number=accession,
                order_accession=order_accession, patient_id=header.patient_id[:64],
                study_date=header.study_date[:8], first_received_at=now, last_received_at=now,
                held_at=now if state == HELD else None, state_changed_at=now, instance_count=1,
            ))
        else:
            changes: dict = {"last_received_at": now}
            if not row.accession_number and accession:
                changes["accession_number"] = accession
            if not row.order_accession and order_accession:
                changes["order_accession"] = order_accession
            if settle:
                changes.update(state=state, state_changed_at=now, pending_files=MOVE, held_at=now, age_flagged_at=None)
            _ROWS.update(StudyRow, row.id, changes, add={"instance_count": 1} if counts else {})
        columns = dict(
            study_instance_uid=study, series_instance_uid=header.series_instance_uid,
            sop_class_uid=header.sop_class_uid, transfer_syntax_uid=header.transfer_syntax_uid[:64],
            path=str(stored.path), size=stored.size, sha256=stored.sha256, received_from=calling_ae[:16],
            received_at=now,
        )
        if existing is None:
            _ROWS.insert(InstanceRow, dict(sop_instance_uid=sop, **columns))
        else:
            _ROWS.update(InstanceRow, existing.id, columns)
            FindingRow.delete().where(FindingRow.sop_instance_uid == sop).execute()
            if existing.study_instance_uid != study:
                StudyRow.update(instance_count=StudyRow.instance_count - 1).where(
                    StudyRow.study_instance_uid == existing.study_instance_uid).execute()
        for f in found.findings:
            _ROWS.insert(FindingRow, dict(
                study_instance_uid=study, sop_instance_uid=sop, code=f.code, instance_value=f.instance_value[:255],
                order_value=f.order_value[:255], message=f.message, holds=f.code in found.hold_codes, found_at=now))
        if settle:
            _repath(study, TREE_OF[state])

    def _undo_write(self, existing: _Instance | None, stored: StoredFile, header: InstanceHeader,
                    link: Path | None) -> None:
        """The index could not be written: take the new file back out where that is possible."""
        if existing is None or Path(existing.path) != stored.path:
            self._remove_file(stored.path)
            _unlink_quietly(link)
            return
        # The file replaced an earlier copy of the same instance: that copy is gone. The
        # in-flight link stays, so the next start indexes the file now in place.
        log.error("instance %s replaced its earlier copy but could not be indexed; the index keeps the "
                  "earlier checksum until the sender's retry succeeds or the gatekeeper restarts",
                  header.sop_instance_uid)

    def _inflight_link(self, source: Path) -> Path | None:
        """A second name of ``source`` in ``incoming/``, kept until the instance is indexed."""
        if not self._links_work:
            return None
        link = source.with_name(INFLIGHT + source.name)
        try:
            os.link(source, link)
        except OSError as exc:
            if exc.errno in _RESOURCE_ERRNOS:
                raise _os_failure(exc, "could not prepare the received file") from exc
            self._links_work = False
            log.warning("the storage volume does not support hard links (%s): a crash between filing an "
                        "instance and indexing it can no longer be repaired at start", exc.strerror)
            return None
        return link

    def _remove_file(self, relative: Path) -> None:
        tree, study, series, name = relative.parts[-4:]
        try:
            self.archive.remove(tree, study, series, name[: -len(trees.SUFFIX)])
        except (ArchiveWriteError, ValueError) as exc:
            log.error("could not remove %s: %s", relative, exc)

    # -- study files follow the study's state -------------------------------------------

    def _settle_or_log(self, study: str) -> int:
        """:meth:`_settle` after an instance was filed: the instance is durable and indexed
        whatever happens here, so a failure is logged and left for the next start."""
        try:
            return self._settle(study)
        except (ArchiveWriteError, OSError) as exc:
            log.error("could not move the files of study %s into the tree of its state: %s; "
                      "the gatekeeper finishes this at its next start", study, exc)
            return 0

    def _settle(self, study: str) -> int:
        """Put every file of ``study`` in the tree of its state (caller holds the lock).

        With ``pending_files`` = MOVE, files in other trees are moved there; a file whose
        instance is already in the target tree is the older copy and is deleted instead.
        With PRUNE, files in other trees are deleted. Then the mark is cleared. Returns
        the number of files moved or deleted. Safe to repeat after a crash.
        """
        row = StudyRow.get_or_none(StudyRow.study_instance_uid == study)
        if row is None or not row.pending_files:
            return 0
        target = TREE_OF.get(row.state)
        count = 0
        for tree in trees.TREES:
            if tree == target:
                continue
            files = self.archive.study_files(tree, study)
            for path in files:
                series, sop = path.parent.name, path.name[: -len(trees.SUFFIX)]
                if row.pending_files == PRUNE or target is None or self.archive.exists(target, study, series, sop):
                    count += self.archive.remove(tree, study, series, sop)
            if row.pending_files == MOVE and target is not None and self.archive.study_files(tree, study):
                count += len(self.archive.move_study(study, tree, target).moved)
        StudyRow.update(pending_files=None).where(
            (StudyRow.id == row.id) & (StudyRow.pending_files == row.pending_files)).execute()
        return count

    # -- start-up recovery -----------------------------------------------------------------

    def recover(self) -> Recovery:
        """Finish what a crash interrupted, then clear ``incoming/``; run before serving.

        1. Each in-flight link whose file is in a tree but not indexed with that content
           is filed again (reconciled and indexed as if just received).
        2. Each study marked ``pending_files`` gets its files moved or pruned.
        3. Everything left in ``incoming/`` (partial receives, links, temporary copies)
           is removed.
        """
        refiled = []
        for link in sorted(self.archive.incoming.glob(INFLIGHT + "*")):
            uid = self._refile(link)
            if uid:
                refiled.append(uid)
        settled = []
        for uid in StudyRow.select(StudyRow.study_instance_uid).where(StudyRow.pending_files.is_null(False)).tuples():
            with self._study_lock(uid[0]):
                self._settle(uid[0])
            settled.append(uid[0])
        leftovers = self.archive.recover()
        return Recovery(tuple(refiled), tuple(settled), leftovers.count)

    def _refile(self, link: Path) -> str | None:
        try:
            header = read_header(link)
        except (UnreadableInstance, OSError):
            return None
        study, series, sop = header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        placed = [t for t in trees.TREES if _same_file(self.archive.path_of(t, study, series, sop), link)]
        if not placed:
            return None  # the rename never happened, or a later copy replaced this one
        tree = placed[0]
        row = InstanceRow.get_or_none(InstanceRow.sop_instance_uid == sop)
        relative = self.archive.relative_path(tree, study, series, sop)
        if row is not None and Path(row.path) == relative and row.size == link.stat().st_size:
            size, digest = _digest(link)
            if digest == row.sha256:
                return None  # indexed before the crash; only the link was left
        calling = row.received_from if row is not None else ""
        try:
            received = self.receive(link, calling)  # link is in incoming/: renamed onto itself
        except ReceiveFailed as exc:
            log.error("could not file instance %s again after the interrupted write: %s", sop, exc)
            return None
        if received.stored.path != relative:
            self._remove_file(relative)
        _unlink_quietly(link)
        log.warning("instance %s of study %s was written but not indexed when the gatekeeper stopped; "
                    "it is filed now (%s)", sop, study, received.summary())
        return sop

    # -- review of held studies (SPEC rule 5) ---------------------------------------------

    def held_studies(self) -> list[HeldStudy]:
        """Every held study, oldest hold first."""
        rows = list(StudyRow.select().where(StudyRow.state == HELD)
                    .order_by(StudyRow.state_changed_at, StudyRow.study_instance_uid))
        codes = _hold_codes([r.study_instance_uid for r in rows])
        return [_held(r, codes.get(r.study_instance_uid, ())) for r in rows]

    def held_study(self, study: str) -> HeldStudyDetail:
        """One held study's findings side by side, and its order."""
        row = self._row_in(study, HELD)
        findings = FindingRow.select().where(FindingRow.study_instance_uid == study).order_by(FindingRow.id)
        grouped: Counter = Counter()
        messages: dict = {}
        for f in findings:
            key = (f.code, f.instance_value, f.order_value, f.holds)
            grouped[key] += 1
            messages.setdefault(key, f.message)
        summaries = tuple(FindingSummary(code, iv, ov, holds, n, messages[(code, iv, ov, holds)])
                          for (code, iv, ov, holds), n in grouped.items())
        senders = tuple(sorted({ae for (ae,) in InstanceRow.select(InstanceRow.received_from)
                               .where(InstanceRow.study_instance_uid == study).tuples() if ae}))
        codes = _hold_codes([study]).get(study, ())
        return HeldStudyDetail(_held(row, codes), summaries, self._order_of(row), senders)

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
            codes = _hold_codes([study]).get(study, ())
            with database.atomic():
                StudyRow.update(state=state, state_changed_at=now, pending_files=MOVE).where(
                    StudyRow.id == row.id).execute()
                _repath(study, TREE_OF[state])
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
            order_row = OrderRow.get_or_none(OrderRow.accession_number == wanted)
            if order_row is None:
                raise StudyRefused(f"no order has accession number {wanted!r}; check the number, or import the "
                                   "order, then correct the study again")
            order = order_row.to_order()
            now = self.clock()
            instances = list(InstanceRow.select().where(InstanceRow.study_instance_uid == study)
                             .order_by(InstanceRow.id))
            written = self._write_corrections(instances, order, reason, now)
            changed = sorted({c.keyword for _, _, changes in written for c in changes})
            remaining = self._remaining_codes([temp for _, temp, _ in written], order)
            StudyRow.update(pending_files=PRUNE).where(StudyRow.id == row.id).execute()
            stored = self._install_corrections(study, written)
            with database.atomic():
                StudyRow.update(state=ARCHIVED, state_changed_at=now, accession_number=order.accession_number,
                                order_accession=order.accession_number, patient_id=order.patient_id,
                                pending_files=PRUNE).where(StudyRow.id == row.id).execute()
                for (instance, _, _), new in zip(written, stored):
                    InstanceRow.update(path=str(new.path), size=new.size, sha256=new.sha256).where(
                        InstanceRow.id == instance.id).execute()
                audit(now, user, AUDIT_CORRECTED, study, reason, accession_number=order.accession_number,
                      previous_accession=row.accession_number, instances=len(written), changed=changed,
                      codes=list(_hold_codes([study]).get(study, ())), remaining_codes=list(remaining))
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
                _unlink_quietly(temp)
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
                _unlink_quietly(temp)
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
        query = StudyRow.select().where(StudyRow.state == ARCHIVED)
        if accession:
            query = query.where((StudyRow.accession_number == accession) | (StudyRow.order_accession == accession))
        rows = list(query.order_by(StudyRow.last_received_at.desc(), StudyRow.study_instance_uid))
        keys = {r.order_accession or r.accession_number for r in rows} - {""}
        orders = {o.accession_number: o.to_order()
                  for o in OrderRow.select().where(OrderRow.accession_number.in_(sorted(keys)))} if keys else {}
        return [ArchivedStudy(r.study_instance_uid, r.accession_number, r.instance_count, r.first_received_at,
                              r.last_received_at, orders.get(r.order_accession or r.accession_number))
                for r in rows]

    def _row_in(self, study: str, state: str, *, settle: bool = False) -> StudyRow:
        """The study's row when it is in ``state``; refuses otherwise.

        With ``settle`` (the caller holds the study's lock), a move or prune a crash left
        pending is finished first, so the action starts from one tree.
        """
        row = StudyRow.get_or_none(StudyRow.study_instance_uid == study)
        if row is None:
            raise StudyRefused(f"no study with Study Instance UID {study!r} was received; "
                               "'gatekeeper held list' shows the held ones")
        if settle and row.pending_files:
            self._settle(study)
        if row.state != state:
            raise StudyRefused(f"study {study} is {row.state}, not {state}; only a held study can be "
                               "released, corrected or rejected")
        return row

    def _order_of(self, row: StudyRow) -> Order | None:
        key = row.order_accession or row.accession_number
        found = OrderRow.get_or_none(OrderRow.accession_number == key) if key else None
        return found.to_order() if found else None

    @contextmanager
    def _study_lock(self, study: str) -> Iterator[None]:
        """Exclusive per-study lock, between threads and processes (``flock`` on a stripe file)."""
        stripe = zlib.crc32(study.encode()) % LOCK_STRIPES
        fd = os.open(self._locks / f"{stripe:03d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


# ------------------------------------------------------------------- the filing path's SQL


class _Study(NamedTuple):
    id: int
    state: str
    accession_number: str
    order_accession: str
    pending_files: str | None


class _Instance(NamedTuple):
    id: int
    study_instance_uid: str
    path: str


class _Rows:
    """The statements of the filing path as plain SQL, each built once.

    peewee builds the SQL of every query anew, which costs more than SQLite takes to run
    it (about 0.4 ms a statement against 0.03 ms); filing an instance takes five or six.
    These are built from the models with the database's own quoting and parameter style,
    so they run on SQLite and PostgreSQL alike, and values go through each field's
    ``db_value`` as peewee would pass them.
    """

    def __init__(self) -> None:
        self._sql: dict[tuple, str] = {}

    def study(self, uid: str) -> _Study | None:
        found = self._run(("study",), lambda q, p: (
            f"SELECT {q('id')}, {q('state')}, {q('accession_number')}, {q('order_accession')}, "
            f"{q('pending_files')} FROM {q(StudyRow._meta.table_name)} WHERE {q('study_instance_uid')} = {p}"),
            [uid]).fetchone()
        return _Study(*found) if found else None

    def instance(self, sop: str) -> _Instance | None:
        found = self._run(("instance",), lambda q, p: (
            f"SELECT {q('id')}, {q('study_instance_uid')}, {q('path')} FROM {q(InstanceRow._meta.table_name)} "
            f"WHERE {q('sop_instance_uid')} = {p}"), [sop]).fetchone()
        return _Instance(*found) if found else None

    def insert(self, model: type[pw.Model], values: dict) -> None:
        names = tuple(values)
        fields = [model._meta.fields[n] for n in names]
        self._run(("insert", model, names), lambda q, p: (
            f"INSERT INTO {q(model._meta.table_name)} ({', '.join(q(f.column_name) for f in fields)}) "
            f"VALUES ({', '.join([p] * len(fields))})"), [f.db_value(values[f.name]) for f in fields])

    def update(self, model: type[pw.Model], row_id: int, values: dict, add: dict | None = None) -> None:
        add = add or {}
        names, added = tuple(values), tuple(add)
        fields = [model._meta.fields[n] for n in names]
        counters = [model._meta.fields[n] for n in added]

        def sql(q, p):
            sets = [f"{q(f.column_name)} = {p}" for f in fields]
            sets += [f"{q(f.column_name)} = {q(f.column_name)} + {p}" for f in counters]
            return f"UPDATE {q(model._meta.table_name)} SET {', '.join(sets)} WHERE {q('id')} = {p}"

        self._run(("update", model, names, added), sql,
                  [f.db_value(values[f.name]) for f in fields] + [add[f.name] for f in counters] + [row_id])

    def _run(self, key: tuple, build: Callable, params: list):
        quote, param = database.quote, database.param
        key = (quote, param, *key)
        sql = self._sql.get(key)
        if sql is None:
            sql = self._sql[key] = build(lambda name: quote[0] + name + quote[-1], param)
        return database.execute_sql(sql, params)


_ROWS = _Rows()
#: Index transactions of this process take turns. SQLite lets one writer in at a time and
#: makes the others wait in its busy handler, which sleeps in steps of milliseconds (up
#: to 25 ms and more), far longer than a transaction here takes; queueing on a lock
#: hands the turn over at once. (PostgreSQL would not need it; it costs little there.)
_ONE_WRITER = threading.Lock()


# ---------------------------------------------------------------------------- helpers


def _check_request(header: InstanceHeader, sop_class_uid: str, sop_instance_uid: str) -> None:
    """The dataset must be the instance the C-STORE request names (PS3.4 B.2.3, 0xA900)."""
    if sop_instance_uid and header.sop_instance_uid != sop_instance_uid:
        raise ReceiveFailed(DOES_NOT_MATCH, f"the dataset's SOP Instance UID {header.sop_instance_uid} is not the "
                                            f"request's {sop_instance_uid}; fix the sending system")
    if sop_class_uid and header.sop_class_uid != sop_class_uid:
        raise ReceiveFailed(DOES_NOT_MATCH, f"the dataset's SOP Class UID {header.sop_class_uid or '(none)'} is not "
                                            f"the request's {sop_class_uid}; fix the sending system")


def _repath(study: str, tree: str) -> None:
    """Point every instance row of ``study`` at ``tree`` (paths are tree/study/series/sop.dcm)."""
    path = (pw.Value(f"{tree}/").concat(InstanceRow.study_instance_uid).concat("/")
            .concat(InstanceRow.series_instance_uid).concat("/").concat(InstanceRow.sop_instance_uid)
            .concat(trees.SUFFIX))
    InstanceRow.update(path=path).where(InstanceRow.study_instance_uid == study).execute()


def _hold_codes(studies: list[str]) -> dict[str, tuple[str, ...]]:
    """The distinct codes holding each study, in the SPEC's order."""
    found: dict[str, set[str]] = defaultdict(set)
    for start in range(0, len(studies), 500):
        query = (FindingRow.select(FindingRow.study_instance_uid, FindingRow.code)
                 .where(FindingRow.study_instance_uid.in_(studies[start:start + 500]) & (FindingRow.holds == True))  # noqa: E712
                 .distinct().tuples())
        for study, code in query:
            found[study].add(code)
    rank = {code: n for n, code in enumerate(CODES)}
    return {s: tuple(sorted(codes, key=lambda c: rank.get(c, len(rank)))) for s, codes in found.items()}


def _held(row: StudyRow, codes: tuple[str, ...]) -> HeldStudy:
    return HeldStudy(row.study_instance_uid, row.accession_number, row.state_changed_at, row.instance_count, codes)


def _need_who_and_why(user: str, reason: str) -> None:
    if not user.strip() or not reason.strip():
        raise StudyRefused("say who decides and why: --user NAME --reason TEXT (both go to the audit log)")


def _os_failure(exc: OSError, what: str) -> ReceiveFailed:
    kind = OUT_OF_RESOURCES if exc.errno in _RESOURCE_ERRNOS else CANNOT_PROCESS
    advice = ("free space on the storage volume; the sender will retry" if kind == OUT_OF_RESOURCES
              else "check the storage volume and the system log")
    return ReceiveFailed(kind, f"{what}: {exc.strerror or exc}; {advice}.")


def _same_file(path: Path, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def _digest(path: Path) -> tuple[int, str]:
    import hashlib

    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(trees.CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _unlink_quietly(path: Path | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass
