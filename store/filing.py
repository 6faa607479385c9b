"""Receiving and filing one instance (SPEC rules 3 and 4): :meth:`Filing.receive`.

The header is read (no pixel data, :func:`store.header.read_header`), reconciled with its
order (:func:`store.reconcile.reconcile`; the order check is cached per association in a
:class:`Session`), the study's state decided (:func:`store.reconcile.study_state`), the
file written durably into the tree of that state (:class:`store.archive.Archive`) and
indexed (:func:`store.index.record_instance`). Only then may the caller acknowledge the
C-STORE. The rules kept here (one tree per study, re-sent instances replace, the order
of writes, the in-flight link) are in :mod:`store.service`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from store import archive as trees
from store import index
from store.archive import RESOURCE_ERRNOS, ArchiveWriteError, StoredFile, unlink_quietly
from store.header import InstanceHeader, UnreadableInstance, read_header
from store.index import IndexedInstance, IndexedStudy
from store.models import HELD
from store.placement import TREE_OF, Placement
from store.reconcile import Reconciliation, accession_of, reconcile, study_state
from worklist.gating import AUTH_EXHAUSTED, BASIS_AUTH, BASIS_NOT_REQUIRED, BASIS_OVERRIDE, auth_problems
from worklist.orders import Order
from worklist.policy import PayerPolicy
from worklist.service import auths_for_patients, overrides_for

log = logging.getLogger("store.service")  # the store's log lines keep one logger name

#: Prefix of the second name a received file has in ``incoming/`` until it is indexed.
INFLIGHT = "inflight-"

#: ReceiveFailed kinds (the gateway maps each to a C-STORE status).
OUT_OF_RESOURCES = trees.OUT_OF_RESOURCES
CANNOT_PROCESS = trees.CANNOT_PROCESS
DOES_NOT_MATCH = "does_not_match"


class ReceiveFailed(Exception):
    """An instance was not stored; nothing of it is left in a tree or the index.

    ``kind`` is :data:`OUT_OF_RESOURCES` (the sender should retry later),
    :data:`CANNOT_PROCESS` or :data:`DOES_NOT_MATCH` (the dataset is not the instance
    the request names).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


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


class Filing(Placement):
    """The part of :class:`store.service.Store` that receives and files instances."""

    policy: PayerPolicy
    hold_codes: frozenset[str]
    _incoming: Path  # the archive's incoming/, resolved
    _links_work: bool  # cleared when the volume refuses hard links

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
                unlink_quietly(source)  # not filed: a copy made above, or the sender's file

    def check_order(self, accession: str, day: dt.date) -> OrderCheck:
        """The order with ``accession`` and whether it was authorized on ``day``.

        Authorized when the payer policy needs no auth for its CPT code, when an override
        exists, or when an auth for its payer and patient has no problem on that day. An
        exhausted auth still counts when the exhausted unit is the one this order used
        (its own exam completed, SPEC rule 6): images normally arrive after that.
        """
        row = index.order_row(accession)
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
                unlink_quietly(temp)
            raise _os_failure(exc, f"could not copy {source.name} into {self.archive.incoming}") from exc
        return temp

    def _file(self, source: Path, header: InstanceHeader, found: Reconciliation, check: OrderCheck,
              calling_ae: str) -> Received:
        study, series, sop = header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        with self._study_lock(study):
            row = index.ROWS.study(study)
            previous = row.state if row is not None else None
            state = study_state(previous, found)
            tree = TREE_OF[state]
            existing = index.ROWS.instance(sop)
            link = self._inflight_link(source)
            try:
                stored = self.archive.write_new(tree, study, series, sop, source)
            except ArchiveWriteError as exc:
                unlink_quietly(link)
                raise ReceiveFailed(exc.kind, str(exc)) from exc
            except ValueError as exc:  # a UID unfit for a file name (read_header checks this too)
                unlink_quietly(link)
                raise ReceiveFailed(CANNOT_PROCESS, str(exc)) from exc
            changes_state = row is not None and previous != state
            now = self.clock()
            try:
                with index.ONE_WRITER, index.transaction():
                    self._index(row, existing, header, found, check, state, stored, calling_ae, now, changes_state)
            except Exception as exc:
                self._undo_write(existing, stored, header, link)
                text = str(exc).lower()
                kind = OUT_OF_RESOURCES if "full" in text or "no space" in text else CANNOT_PROCESS
                raise ReceiveFailed(kind, f"could not index instance {sop} ({exc}); it was not stored. "
                                          "Check the database; the sender will retry.") from exc
            unlink_quietly(link)
            old = Path(existing.path) if existing is not None else None
            if old is not None and old != stored.path and not (changes_state and existing.study_instance_uid == study):
                self._remove_file(old)  # a re-send filed under another study or series
            moved = 0
            if changes_state or (row is not None and row.pending_files):
                moved = self._settle_or_log(study)
        return Received(sop, study, found.accession_used, state,
                        tuple(f.code for f in found.hold_findings), tuple(f.code for f in found.warn_findings),
                        stored, replaced=existing is not None, moved=moved)

    def _index(self, row: IndexedStudy | None, existing: IndexedInstance | None, header: InstanceHeader,
               found: Reconciliation, check: OrderCheck, state: str, stored: StoredFile, calling_ae: str,
               now: dt.datetime, settle: bool) -> None:
        """Index the filed instance (:func:`store.index.record_instance`); ``settle`` when it changes the study's state."""
        order_accession = check.order.accession_number if check.order is not None else ""
        index.record_instance(row, existing, header, found, order_accession, state, stored, calling_ae, now,
                              TREE_OF[state] if settle else None)

    def _undo_write(self, existing: IndexedInstance | None, stored: StoredFile, header: InstanceHeader,
                    link: Path | None) -> None:
        """The index could not be written: take the new file back out where that is possible."""
        if existing is None or Path(existing.path) != stored.path:
            self._remove_file(stored.path)
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
        raise ReceiveFailed(DOES_NOT_MATCH, f"the dataset's SOP Instance UID {header.sop_instance_uid} is not the "
                                            f"request's {sop_instance_uid}; fix the sending system")
    if sop_class_uid and header.sop_class_uid != sop_class_uid:
        raise ReceiveFailed(DOES_NOT_MATCH, f"the dataset's SOP Class UID {header.sop_class_uid or '(none)'} is not "
                                            f"the request's {sop_class_uid}; fix the sending system")


def _os_failure(exc: OSError, what: str) -> ReceiveFailed:
    kind = OUT_OF_RESOURCES if exc.errno in RESOURCE_ERRNOS else CANNOT_PROCESS
    advice = ("free space on the storage volume; the sender will retry" if kind == OUT_OF_RESOURCES
              else "check the storage volume and the system log")
    return ReceiveFailed(kind, f"{what}: {exc.strerror or exc}; {advice}.")
