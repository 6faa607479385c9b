"""Receiving and filing one instance (rules 3 and 4 of docs/rules.md): :meth:`Receiving.receive`.

The header is read (no pixel data, :func:`store.header.read_header`), the order looked up
and its authorization on the study date asked of the worklist gate (the same decision
the worklist serves by; cached per association in a :class:`Session`), the instance
reconciled (:func:`store.reconcile.reconcile`), the study's state decided
(:func:`store.reconcile.study_state`), the file written durably into the tree of that
state (:class:`store.archive.Archive`) and indexed (:meth:`store.index.Index.record_instance`).
Only then may the caller acknowledge the C-STORE.

Rules kept here:

- **One tree per study.** Every file of a study is in the tree of its state. When an
  archived study becomes held (an instance that fails reconciliation arrives), its
  archived files move to ``held/`` with it, so the operator reviews the whole study.
- **Re-sent instances replace.** An instance received again (same SOP Instance UID)
  replaces the stored file atomically, the index row is updated in place (never a second
  row) and its findings are derived again.
- **Order of writes.** File first (fsynced, renamed into place, folder fsynced), then the
  index in one transaction, then the acknowledgement. Before the rename a second name
  (hard link ``inflight-*`` in this process's incoming folder) of the received file is
  made, and removed once the index row is committed. A crash in between leaves the link:
  the next start's recovery (:mod:`store.recovery`) files the instance again from it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infra import audit
from infra.clock import Clock
from infra.errors import InvalidInput, OutOfResources, StorageFailure
from store.archive import RESOURCE_ERRNOS, WRITE_ERRORS, Ahead, Archive, StoredFile, unlink_quietly
from store.header import InstanceHeader, read_header
from store.integrity import check_whole
from store.index import Index, IndexedInstance
from store.placement import TREE_OF, Placement
from store.reconcile import PriorStudy, Reconciliation, accession_of, reconcile, study_state
from store.states import ARCHIVED, HELD
from worklist.gating import Authorization
from worklist.orders import Order

log = logging.getLogger("store.receiving")

#: Prefix of the second name a received file has in ``incoming/`` until it is indexed.
INFLIGHT = "inflight-"
#: Audit action when a non-matching instance moves an archived study back to held.
AUDIT_REOPENED = "study.reopened"

#: The worklist's question: the order with an accession number and its authorization on a day
#: (:meth:`worklist.gate.Gate.authorization`).
Authorizer = Callable[[str, dt.date], tuple[Order | None, Authorization | None]]
#: The archived studies a new study of an order may duplicate (rule 7, :class:`store.reconcile.PriorStudy`).
PriorLookup = Callable[[Order], tuple[PriorStudy, ...]]


class DatasetMismatch(InvalidInput):
    """The dataset is not the instance the C-STORE request names (PS3.4 B.2.3, 0xA900)."""


@dataclass(frozen=True)
class OrderCheck:
    """The order an accession number names, and whether it may be performed on the study date."""

    order: Order | None
    authorization: Authorization | None

    @property
    def authorized(self) -> bool:
        return self.authorization is not None and self.authorization.authorized


@dataclass(frozen=True)
class Received:
    """What :meth:`Receiving.receive` did with one instance."""

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
            text += f", {self.moved} earlier {'file' if self.moved == 1 else 'files'} of the study moved to held"
        if self.replaced:
            text += ", re-sent (replaced)"
        return text


@dataclass
class Session:
    """Per-association memory: the order check of each (accession, day) already seen.

    An association sends one study or a few, so the order and auth look-ups are done
    once per accession rather than once per instance. A session lives as long as its
    association; the next association looks again, so an order or auth changed in the
    meantime is seen.
    """

    checks: dict[tuple[str, dt.date], OrderCheck] = field(default_factory=dict)
    #: The archived studies each (study, order) may duplicate, looked up at the study's first instance.
    priors: dict[tuple[str, str], tuple[PriorStudy, ...]] = field(default_factory=dict)

    def order_check(self, accession: str, day: dt.date, authorizer: Authorizer) -> OrderCheck:
        key = (accession, day)
        found = self.checks.get(key)
        if found is None:
            found = self.checks[key] = OrderCheck(*authorizer(accession, day)) if accession else OrderCheck(None, None)
        return found

    def priors_of(self, study: str, order: Order | None, lookup: PriorLookup | None) -> tuple[PriorStudy, ...]:
        """The archived studies ``study`` may duplicate: once per study and order in an association."""
        if order is None or lookup is None:
            return ()
        key = (study, order.accession_number)
        found = self.priors.get(key)
        if found is None:
            found = self.priors[key] = lookup(order)
        return found


class Receiving:
    """Files received instances: reconcile, write durably, index."""

    def __init__(self, archive: Archive, index: Index, placement: Placement, authorizer: Authorizer, *,
                 hold_codes: frozenset[str], clock: Clock, priors: PriorLookup | None = None) -> None:
        self.archive = archive
        self.index = index
        self.placement = placement
        self.authorizer = authorizer
        self.priors = priors
        self.hold_codes = frozenset(hold_codes)
        self.clock = clock
        self._links_work = True  # cleared when the volume refuses hard links
        #: The forwarding queue (:class:`store.outbox.Outbox`); a clean instance of an
        #: archived study is queued in the transaction that indexes it.
        self.outbox = None

    def receive(
        self,
        path: str | os.PathLike[str],
        calling_ae: str = "",
        *,
        session: Session | None = None,
        sop_class_uid: str = "",
        sop_instance_uid: str = "",
        written: tuple[int, str] | None = None,
    ) -> Received:
        """Reconcile and file the Part 10 file at ``path`` (rules 3 and 4).

        A file directly in this process's incoming folder is consumed: renamed into place,
        or deleted when it cannot be filed. Any other file is copied first and left alone.
        ``sop_class_uid`` and ``sop_instance_uid``, when given, are those of the C-STORE
        request, and the dataset must carry the same. A dataset that is not whole under its
        transfer syntax (truncated, mis-encoded, pixel data short: :mod:`store.integrity`) is
        refused before anything else reads it. Returns once the file is durable and
        indexed; raises :class:`~store.header.UnreadableInstance` (or its
        :class:`~store.integrity.IncompleteInstance`), :class:`DatasetMismatch`,
        :class:`~infra.errors.OutOfResources` or :class:`~infra.errors.StorageFailure`.
        ``written``, for a file in the incoming folder, is its size and SHA-256 as its writer
        computed them (:meth:`store.archive.Archive.sync_ahead`): it is then not read again
        for them.
        """
        source = path if isinstance(path, Path) else Path(path)  # Path(a Path) parses it again
        if not self.archive.is_incoming(source):
            source, written = self._copy_in(source), None
        # The file's fsync runs on another thread while this one checks, reads and reconciles;
        # the rename into the tree waits for it (Archive.sync_ahead).
        synced = self.archive.sync_ahead(source, written)
        try:
            try:
                check_whole(source)  # the whole dataset, under its syntax, before anything else reads it
                header = read_header(source)
            except OSError as exc:
                raise _os_failure(exc, f"could not read the received file {source.name}") from exc
            _check_request(header, sop_class_uid, sop_instance_uid)
            session = session or Session()
            check = session.order_check(accession_of(header), self.study_day(header), self.authorizer)
            found = self.reconcile(header, check, session.priors_of(header.study_instance_uid, check.order, self.priors))
            return self._file(source, header, found, check, calling_ae, synced)
        finally:
            if not synced.cancel():
                synced.wait()  # not filed: let the hash and sync finish before the file goes (filed: done already)
            if not source.name.startswith(INFLIGHT) and source.exists():
                unlink_quietly(source)  # not filed: a copy made above, or the sender's file

    def reconcile(self, header: InstanceHeader, check: OrderCheck, priors: tuple[PriorStudy, ...] = ()) -> Reconciliation:
        """Rules 3 and 7 for one instance against its order, the order's authorization and the
        archived studies it may duplicate."""
        return reconcile(header, check.order, order_authorized=check.authorized, hold_codes=self.hold_codes,
                         priors=priors)

    def study_day(self, header: InstanceHeader) -> dt.date:
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
        except OSError as exc:
            unlink_quietly(temp)
            raise _os_failure(exc, f"could not copy {source.name} into {self.archive.incoming}") from exc
        return temp

    def _file(self, source: Path, header: InstanceHeader, found: Reconciliation, check: OrderCheck,
              calling_ae: str, synced: Ahead | None = None) -> Received:
        study, series, sop = header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        with self.placement.lock(study):
            row, existing = self.index.lookup(study, sop)
            previous = row.state if row is not None else None
            state = study_state(previous, found)
            tree = TREE_OF[state]
            link = self._inflight_link(source)
            try:
                stored = self.archive.write_new(tree, study, series, sop, source, synced=synced)
            except WRITE_ERRORS:
                unlink_quietly(link)
                raise
            changes_state = row is not None and previous != state
            now = self.clock()
            order_accession = check.order.accession_number if check.order is not None else ""
            try:
                with self.index.one_writer, self.index.transaction():
                    self.index.record_instance(row, existing, header, found, order_accession, state, stored,
                                               calling_ae, now, tree if changes_state else None)
                    reopened = previous == ARCHIVED and state == HELD
                    if state == ARCHIVED and self.outbox is not None:
                        self.outbox.instance_archived(sop, study, modality=header.modality, received_from=calling_ae,
                                                      replaced=existing is not None)
                    if reopened:
                        audit.record(now, calling_ae or "modality", AUDIT_REOPENED, study,
                                     "an instance that does not match its order arrived for the archived study",
                                     accession_number=found.accession_used, sop_instance_uid=sop,
                                     codes=[f.code for f in found.hold_findings])
            except Exception as exc:
                self._undo_write(existing, stored, header, link)
                text = str(exc).lower()
                kind = OutOfResources if "full" in text or "no space" in text else StorageFailure
                raise kind(f"could not index instance {sop} ({exc}); it was not stored. "
                           "Check the database; the sender will retry.") from exc
            unlink_quietly(link)
            if reopened:
                log.warning("archived study %s (accession %s) is held again: instance %s from %s does not match "
                            "its order (%s); review it with 'gatekeeper held show %s'", study,
                            found.accession_used or "none", sop, calling_ae or "unknown",
                            " ".join(f.code for f in found.hold_findings), study)
            old = Path(existing.path) if existing is not None else None
            if old is not None and old != stored.path and not (changes_state and existing.study_instance_uid == study):
                self.placement.remove_file(old)  # a re-send filed under another study or series
            moved = 0
            if changes_state or (row is not None and row.pending_files):
                moved = self.placement.settle_or_log(study)
        return Received(sop, study, found.accession_used, state,
                        tuple(f.code for f in found.hold_findings), tuple(f.code for f in found.warn_findings),
                        stored, replaced=existing is not None, moved=moved)

    def _undo_write(self, existing: IndexedInstance | None, stored: StoredFile, header: InstanceHeader,
                    link: Path | None) -> None:
        """The index could not be written: take the new file back out where that is possible."""
        if existing is None or Path(existing.path) != stored.path:
            self.placement.remove_file(stored.path)
            unlink_quietly(link)
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
            if exc.errno in RESOURCE_ERRNOS:
                raise _os_failure(exc, "could not prepare the received file") from exc
            self._links_work = False
            log.warning("the storage volume does not support hard links (%s): a crash between filing an "
                        "instance and indexing it can no longer be repaired at start", exc.strerror)
            return None
        return link


def _check_request(header: InstanceHeader, sop_class_uid: str, sop_instance_uid: str) -> None:
    """The dataset must be the instance the C-STORE request names (PS3.4 B.2.3, 0xA900)."""
    if sop_instance_uid and header.sop_instance_uid != sop_instance_uid:
        raise DatasetMismatch(f"the dataset's SOP Instance UID {header.sop_instance_uid} is not the "
                              f"request's {sop_instance_uid}; fix the sending system")
    if sop_class_uid and header.sop_class_uid != sop_class_uid:
        raise DatasetMismatch(f"the dataset's SOP Class UID {header.sop_class_uid or '(none)'} is not "
                              f"the request's {sop_class_uid}; fix the sending system")


def _os_failure(exc: OSError, what: str) -> OutOfResources | StorageFailure:
    if exc.errno in RESOURCE_ERRNOS:
        return OutOfResources(f"{what}: {exc.strerror or exc}; free space on the storage volume; the sender will retry.")
    return StorageFailure(f"{what}: {exc.strerror or exc}; check the storage volume and the system log.")
