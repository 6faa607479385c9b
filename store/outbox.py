"""The forwarding queue (rule 10 of docs/rules.md): its rows, and what every part does with them.

:class:`Outbox` keeps one :class:`store.models.ForwardRow` per instance and destination.
The rules are :mod:`store.forwarding` (pure); this module reads and writes the rows:

- **Queueing** happens in the transaction that makes a study archived: the C-STORE of a
  clean instance (:meth:`Outbox.instance_archived`, called by :mod:`store.receiving`), a
  release or a correction (:meth:`Outbox.study_archived`, called by :mod:`store.review`).
  A study that is not archived is never queued, and a sender only takes rows of studies
  that are archived at that moment (a study held again waits, its rows pending).
- **Taking work** (:meth:`Outbox.claim`): the oldest due row names a study and a
  destination; every due row of that pair (up to :data:`BATCH_LIMIT`) is leased to the
  caller under a fresh claim token until ``now + lease``. On PostgreSQL the rows are
  selected ``FOR UPDATE SKIP LOCKED``, so gateways sharing the database never take the
  same row; on SQLite one sender runs per database. A sender killed mid-send leaves its
  lease, which expires (or, on SQLite, is given up at the next start,
  :meth:`Outbox.release_claims`): nothing is lost; the one instance in flight may be
  sent twice, and the destination keeps it once (same SOP Instance UID).
- **Outcomes** (:meth:`Outbox.sent`, :meth:`Outbox.attempt_failed`, ...) are recorded per
  instance as soon as they are known, and only for the generation the sender claimed:
  a row queued again meanwhile (a correction) stays pending.
- **Looking** (:meth:`Outbox.groups`, :meth:`Outbox.figures`) and **retry**
  (:meth:`Outbox.retry`), and the **retention** of forwarded studies
  (:meth:`Outbox.remove_forwarded`).

The queue's times come from its own clock, the wall clock (``gateway.app``), even when
``GATEKEEPER_NOW`` fixes the gateway's: retries must see time pass.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import peewee as pw

from infra import audit
from infra.clock import Clock, wall_clock
from infra.errors import InvalidInput, NotFound
from store import forwarding as rules
from store.archive import ARCHIVE_TREE, Archive
from store.forwarding import COMMITTED, FAILED, PENDING, SENT, Destination, ForwardFigures
from store.header import read_header
from store.index import Index
from store.models import ForwardRow, InstanceRow, StudyRow
from store.placement import Placement
from store.states import ARCHIVED

log = logging.getLogger("store.outbox")

#: Instances leased in one claim (one association).
BATCH_LIMIT = 1000
#: Seconds a claim lasts unless the sender renews it (it does while it sends).
LEASE_SECONDS = 60
#: A study is taken once no instance of it was queued for this many seconds, so that a
#: study arriving instance by instance goes on one association rather than one per instance.
QUIET_SECONDS = 2
#: The audit log's ``user`` of the retention job.
RETENTION_USER = "job:forward_purge"


@dataclass(frozen=True)
class SendItem:
    """One leased row with what the sender needs to send its instance."""

    row_id: int
    generation: int
    attempts: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path  # absolute


@dataclass(frozen=True)
class Batch:
    """The instances of one study leased for one destination: one association."""

    destination: Destination
    study_instance_uid: str
    claim: str
    items: tuple[SendItem, ...]


@dataclass(frozen=True)
class QueueGroup:
    """The rows of one study for one destination, as ``forward list`` shows them."""

    study_instance_uid: str
    destination: str
    counts: dict[str, int]
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str
    last_status: int | None
    enqueued_at: dt.datetime
    instances: tuple[dict, ...] = ()

    @property
    def state(self) -> str:
        """The group's state in one word: failed, pending, sent or committed (the least advanced wins)."""
        for state in (FAILED, PENDING, SENT, COMMITTED):
            if self.counts.get(state):
                return state
        return PENDING


@dataclass(frozen=True)
class ForwardRetention:
    candidates: int
    removed: int
    files_deleted: int
    retention_days: int


class Outbox:
    """The forwarding queue over the store's database."""

    def __init__(self, db: pw.Database, index: Index, archive: Archive, placement: Placement,
                 destinations: dict[str, Destination], *, clock: Clock = wall_clock,
                 forwarded_retention_days: int = 0, lease_seconds: int = LEASE_SECONDS,
                 batch_limit: int = BATCH_LIMIT, quiet_seconds: int = QUIET_SECONDS) -> None:
        self.db = db
        self.index = index
        self.archive = archive
        self.placement = placement
        self.destinations = dict(destinations)
        self.clock = clock
        self.forwarded_retention_days = forwarded_retention_days
        self.lease_seconds = lease_seconds
        self.batch_limit = batch_limit
        self.quiet_seconds = quiet_seconds
        #: Called (no arguments) after rows were queued, so a sender in this process wakes at once.
        self.listeners: list[Callable[[], None]] = []
        self._filters = any(d.modalities for d in self.destinations.values())
        self._postgres = not isinstance(db, pw.SqliteDatabase)

    # ------------------------------------------------------------------ queueing (caller's transaction)

    def instance_archived(self, sop: str, study: str, *, modality: str, received_from: str, replaced: bool) -> int:
        """Queue one instance of an archived study (clean on arrival) for every destination that wants it.

        Runs inside the caller's transaction. ``replaced``: the instance was received
        before, so its content may differ and it is sent again. Returns the rows queued.
        """
        if not self.destinations:
            return 0
        wanted = [d for d in self.destinations.values()
                  if rules.wants(d, modality=modality, received_from=received_from, corrected=False)]
        return self._queue([(sop, study)], wanted, changed=replaced)

    def study_archived(self, study: str, *, corrected: bool) -> int:
        """Queue every instance of ``study``, just released (``corrected`` False) or corrected.

        Runs inside the caller's transaction. A correction queues every instance again,
        already sent or not (the destination gets the corrected instances under the same
        UIDs), to the sender's own AE too; a release queues what was not sent yet.
        """
        if not self.destinations:
            return 0
        queued = 0
        for instance in self.index.study_instances(study):
            modality = self._modality(instance) if self._filters else ""
            wanted = [d for d in self.destinations.values()
                      if rules.wants(d, modality=modality, received_from=instance.received_from, corrected=corrected)]
            queued += self._queue([(instance.sop_instance_uid, study)], wanted, changed=corrected)
        return queued

    def _modality(self, instance: InstanceRow) -> str:
        try:
            return read_header(self.archive.root / instance.path).modality
        except Exception:  # unreadable now: no modality, so only unfiltered destinations take it
            return ""

    def _queue(self, instances: list[tuple[str, str]], destinations: list[Destination], *, changed: bool) -> int:
        if not destinations:
            return 0
        now = self.clock()
        names = [d.name for d in destinations]
        queued = 0
        for sop, study in instances:
            current = {r.destination: r for r in ForwardRow.select(
                ForwardRow.id, ForwardRow.destination, ForwardRow.state)
                .where((ForwardRow.sop_instance_uid == sop) & ForwardRow.destination.in_(names))}
            for name in names:
                row = current.get(name)
                action = rules.enqueue_action(row.state if row else None, changed=changed)
                if action == rules.INSERT:
                    ForwardRow.insert(sop_instance_uid=sop, study_instance_uid=study, destination=name,
                                      state=PENDING, next_attempt_at=now, enqueued_at=now).execute()
                elif action == rules.RESET:
                    self._requeue(ForwardRow.id == row.id, now, study=study)
                else:
                    continue
                queued += 1
        if queued:
            self._notify()
        return queued

    @staticmethod
    def _requeue(where, now: dt.datetime, study: str | None = None) -> int:
        values = dict(state=PENDING, attempts=0, generation=ForwardRow.generation + 1, next_attempt_at=now,
                      enqueued_at=now, sent_at=None, committed_at=None, last_error="", last_status=None,
                      transaction_uid=None, claim=None, claimed_until=None)
        if study is not None:
            values["study_instance_uid"] = study
        return ForwardRow.update(**values).where(where).execute()

    def _notify(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # a listener never breaks the transaction that queued
                log.exception("forwarding listener failed")

    # ------------------------------------------------------------------ taking work

    @contextlib.contextmanager
    def _write(self):
        """One short write transaction (on SQLite in turn with the filing path's, see Index.one_writer)."""
        lock = self.index.one_writer if not self._postgres else contextlib.nullcontext()
        with lock, self.db.atomic():
            yield

    def _due(self, now: dt.datetime, names: list[str] | None = None):
        return ((ForwardRow.state == PENDING) & (ForwardRow.next_attempt_at <= now)
                & (ForwardRow.claimed_until.is_null() | (ForwardRow.claimed_until < now))
                & ForwardRow.destination.in_(names if names is not None else list(self.destinations)))

    def claim(self, exclude: Iterable[str] = ()) -> Batch | None:
        """Lease the due rows of the oldest due (study, destination) of an archived study; None when none is due.

        Destinations named in ``exclude`` (resting after a failed association) are skipped.
        """
        names = [n for n in self.destinations if n not in set(exclude)]
        if not names:
            return None
        now = self.clock()
        token = uuid.uuid4().hex
        archived = StudyRow.select(StudyRow.study_instance_uid).where(
            (StudyRow.state == ARCHIVED) & StudyRow.pending_files.is_null())
        arriving = ForwardRow.select(ForwardRow.study_instance_uid).where(
            (ForwardRow.state == PENDING) & (ForwardRow.attempts == 0)
            & (ForwardRow.enqueued_at > now - dt.timedelta(seconds=self.quiet_seconds)))
        with self._write():
            first = (ForwardRow.select(ForwardRow.id, ForwardRow.study_instance_uid, ForwardRow.destination)
                     .where(self._due(now, names) & ForwardRow.study_instance_uid.in_(archived)
                            & ForwardRow.study_instance_uid.not_in(arriving))
                     .order_by(ForwardRow.next_attempt_at, ForwardRow.id).limit(1))
            if self._postgres:
                first = first.for_update(skip_locked=True)
            head = first.first()
            if head is None:
                return None
            rows = (ForwardRow.select(ForwardRow.id)
                    .where(self._due(now) & (ForwardRow.study_instance_uid == head.study_instance_uid)
                           & (ForwardRow.destination == head.destination))
                    .order_by(ForwardRow.id).limit(self.batch_limit))
            if self._postgres:
                rows = rows.for_update(skip_locked=True)
            ids = [r.id for r in rows]
            until = now + dt.timedelta(seconds=self.lease_seconds)
            ForwardRow.update(claim=token, claimed_until=until).where(ForwardRow.id.in_(ids) & self._due(now)).execute()
        leased = list(ForwardRow.select(ForwardRow, InstanceRow.sop_class_uid, InstanceRow.transfer_syntax_uid,
                                        InstanceRow.path)
                      .join(InstanceRow, pw.JOIN.LEFT_OUTER,
                            on=(InstanceRow.sop_instance_uid == ForwardRow.sop_instance_uid))
                      .where(ForwardRow.claim == token).order_by(ForwardRow.id).objects())
        items, gone = [], []
        for row in leased:
            if not row.path:
                gone.append(row)
                continue
            items.append(SendItem(row.id, row.generation, row.attempts, row.sop_instance_uid, row.sop_class_uid,
                                  row.transfer_syntax_uid, self.archive.root / row.path))
        batch = Batch(self.destinations[head.destination], head.study_instance_uid, token, tuple(items))
        for row in gone:
            self.give_up(batch, SendItem(row.id, row.generation, row.attempts, row.sop_instance_uid, "", "", Path()),
                         "the instance is no longer stored on the gateway")
        return batch if items else self.claim(exclude)

    def renew(self, batch: Batch) -> None:
        """Extend the lease of the rows of ``batch`` still leased."""
        until = self.clock() + dt.timedelta(seconds=self.lease_seconds)
        with self._write():
            ForwardRow.update(claimed_until=until).where(ForwardRow.claim == batch.claim).execute()

    def unclaim(self, batch: Batch) -> int:
        """Give back the rows of ``batch`` still leased (the sender stops before sending them)."""
        with self._write():
            return ForwardRow.update(claim=None, claimed_until=None).where(ForwardRow.claim == batch.claim).execute()

    def release_claims(self) -> int:
        """Give up every lease (SQLite, at the start of the one sender: a killed one left them)."""
        with self._write():
            return ForwardRow.update(claim=None, claimed_until=None).where(ForwardRow.claim.is_null(False)).execute()

    # ------------------------------------------------------------------ outcomes

    def _mine(self, batch: Batch, item: SendItem):
        return (ForwardRow.id == item.row_id) & (ForwardRow.generation == item.generation) & (
            ForwardRow.claim == batch.claim)

    def sent(self, batch: Batch, item: SendItem, status: int, note: str = "") -> bool:
        """The destination accepted the instance (success or warning ``status``)."""
        with self._write():
            return ForwardRow.update(state=SENT, sent_at=self.clock(), attempts=ForwardRow.attempts + 1,
                                     last_status=status, last_error=note, claim=None, claimed_until=None).where(
                self._mine(batch, item)).execute() == 1

    def attempt_failed(self, batch: Batch, items: Iterable[SendItem], error: str, status: int | None) -> int:
        """These instances were not sent (refused, or the peer lost): try again after the back-off,
        or fail them once their attempts are used up. Returns how many are now failed."""
        now = self.clock()
        failed = 0
        with self._write():
            for item in items:
                attempts = item.attempts + 1
                when = rules.next_attempt(now, attempts)
                values = dict(attempts=attempts, last_error=error[:2000], last_status=status, claim=None,
                              claimed_until=None)
                if when is None:
                    values.update(state=FAILED)
                else:
                    values.update(next_attempt_at=when)
                if ForwardRow.update(**values).where(self._mine(batch, item)).execute() and when is None:
                    failed += 1
        return failed

    def give_up(self, batch: Batch, item: SendItem, error: str, status: int | None = None) -> None:
        """This instance cannot be sent as it is: failed now (``forward retry`` queues it again)."""
        with self._write():
            ForwardRow.update(state=FAILED, attempts=ForwardRow.attempts + 1, last_error=error[:2000],
                              last_status=status, claim=None, claimed_until=None).where(
                self._mine(batch, item)).execute()

    def commitment_requested(self, batch: Batch, items: Iterable[SendItem], transaction_uid: str) -> None:
        """A Storage Commitment request for these sent instances went out under ``transaction_uid``."""
        ids = [i.row_id for i in items]
        with self._write():
            ForwardRow.update(transaction_uid=transaction_uid).where(
                ForwardRow.id.in_(ids) & (ForwardRow.state == SENT)).execute()

    def commitment_result(self, transaction_uid: str, committed: Iterable[str],
                          failed: Iterable[tuple[str, int | None]]) -> tuple[int, int]:
        """The destination's N-EVENT-REPORT: (instances now committed, instances now failed).

        Only rows sent under ``transaction_uid`` change; an unknown transaction changes nothing.
        """
        now = self.clock()
        done = lost = 0
        of_transaction = (ForwardRow.transaction_uid == transaction_uid) & (ForwardRow.state == SENT)
        with self._write():
            for sop in committed:
                done += ForwardRow.update(state=COMMITTED, committed_at=now).where(
                    of_transaction & (ForwardRow.sop_instance_uid == sop)).execute()
            for sop, reason in failed:
                why = f"0x{reason:04X}" if reason is not None else "none given"
                lost += ForwardRow.update(
                    state=FAILED, last_status=reason,
                    last_error=f"the destination's storage commitment report lists it as failed (reason {why})").where(
                    of_transaction & (ForwardRow.sop_instance_uid == sop)).execute()
        return done, lost

    # ------------------------------------------------------------------ looking and retrying

    def groups(self, state: str | None = None, study: str | None = None, instances: bool = False) -> list[QueueGroup]:
        """The queue per study and destination, oldest first; with ``state``, only groups having rows in it."""
        if state is not None and state not in rules.FORWARD_STATES:
            raise InvalidInput(f"unknown state {state!r}; use one of {', '.join(rules.FORWARD_STATES)}")
        query = ForwardRow.select().order_by(ForwardRow.enqueued_at, ForwardRow.id)
        if study:
            query = query.where(ForwardRow.study_instance_uid == study)
        grouped: dict[tuple[str, str], list[ForwardRow]] = defaultdict(list)
        for row in query:
            grouped[(row.study_instance_uid, row.destination)].append(row)
        out = []
        for (uid, name), rows in grouped.items():
            counts = Counter(r.state for r in rows)
            if state is not None and not counts.get(state):
                continue
            pending = [r.next_attempt_at for r in rows if r.state == PENDING]
            worst = max(rows, key=lambda r: (r.state == FAILED, bool(r.last_error), r.attempts))
            out.append(QueueGroup(
                uid, name, {s: counts.get(s, 0) for s in rules.FORWARD_STATES}, max(r.attempts for r in rows),
                min(pending) if pending else None, worst.last_error, worst.last_status,
                min(r.enqueued_at for r in rows),
                tuple(dict(sop_instance_uid=r.sop_instance_uid, state=r.state, attempts=r.attempts,
                           last_status=r.last_status, last_error=r.last_error) for r in rows) if instances else ()))
        return out

    def retry(self, *, study: str | None = None, all_failed: bool = False, user: str = "operator") -> int:
        """Queue again now (attempts from 0): every failed or waiting row of ``study``, or every failed row.

        Audited (``forward.retry``). Raises :class:`NotFound` for a study without queue rows.
        """
        if bool(study) == bool(all_failed):
            raise InvalidInput("name one study (its Study Instance UID) or --all-failed")
        now = self.clock()
        if study:
            if not ForwardRow.select().where(ForwardRow.study_instance_uid == study).exists():
                raise NotFound(f"study {study} has nothing in the forwarding queue; 'gatekeeper forward list' "
                               "shows what is queued")
            where = (ForwardRow.study_instance_uid == study) & ForwardRow.state.in_([FAILED, PENDING])
        else:
            where = ForwardRow.state == FAILED
        with self._write():
            studies = sorted({uid for (uid,) in ForwardRow.select(ForwardRow.study_instance_uid).where(where).tuples()})
            count = self._requeue(where, now)
            audit.record(now, user, rules.AUDIT_RETRY, study or "all-failed", "queued again on request",
                         instances=count, studies=studies[:100])
        if count:
            self._notify()
        return count

    def figures(self) -> ForwardFigures:
        """Backlog per destination, instances by state, oldest pending age, failures by status."""
        now = self.clock()
        by_state: dict[str, dict[str, int]] = {name: {s: 0 for s in rules.FORWARD_STATES} for name in self.destinations}
        for name, state, count in (ForwardRow.select(ForwardRow.destination, ForwardRow.state, pw.fn.COUNT(ForwardRow.id))
                                   .group_by(ForwardRow.destination, ForwardRow.state).tuples()):
            by_state.setdefault(name, {s: 0 for s in rules.FORWARD_STATES})[state] = count
        oldest = ForwardRow.select(pw.fn.MIN(ForwardRow.enqueued_at)).where(ForwardRow.state == PENDING).scalar()
        if isinstance(oldest, str):  # SQLite hands an aggregate back as text
            oldest = dt.datetime.fromisoformat(oldest)
        failures: dict[str, int] = {}
        for status, count in (ForwardRow.select(ForwardRow.last_status, pw.fn.COUNT(ForwardRow.id))
                              .where(ForwardRow.state == FAILED).group_by(ForwardRow.last_status).tuples()):
            failures["none" if status is None else f"0x{status:04X}"] = count
        return ForwardFigures({name: counts[PENDING] for name, counts in by_state.items()}, by_state,
                              max(0.0, (now - oldest).total_seconds()) if oldest else None, failures)

    # ------------------------------------------------------------------ retention

    def remove_forwarded(self) -> ForwardRetention:
        """Delete the local copy of archived studies every destination has (``storage.forwarded_retention_days``).

        The study becomes ``purged`` (its row, findings and queue rows stay as the record);
        audited (``study.removed_after_forwarding``). Never a held study: the rule asks for
        an archived one, checked again under the study's lock.
        """
        days = self.forwarded_retention_days
        if days <= 0 or not self.destinations:
            return ForwardRetention(0, 0, 0, days)
        candidates = [uid for (uid,) in ForwardRow.select(ForwardRow.study_instance_uid).distinct()
                      .join(StudyRow, on=(StudyRow.study_instance_uid == ForwardRow.study_instance_uid))
                      .where(StudyRow.state == ARCHIVED).tuples()]
        removed = files = 0
        for uid in candidates:
            with self.placement.lock(uid):
                row = self.index.study_row(uid)
                if row is None or not self._retention_due(row):
                    continue
                size, count = self.index.indexed_size(uid)
                deleted = self.archive.remove_study(ARCHIVE_TREE, uid)
                now = self.clock()
                with self.db.atomic():
                    if self.index.mark_removed_after_forwarding(uid, now) is None:
                        continue
                    audit.record(now, RETENTION_USER, rules.AUDIT_REMOVED_AFTER_FORWARDING, uid,
                                 f"every destination has it, past the {days}-day retention",
                                 accession_number=row.accession_number, files_deleted=deleted, bytes_freed=size,
                                 instance_rows_deleted=count, destinations=sorted(self.destinations))
            removed += 1
            files += deleted
            log.info("removed the local copy of forwarded study %s (accession %s): %d files deleted", uid,
                     row.accession_number or "none", deleted)
        return ForwardRetention(len(candidates), removed, files, days)

    def _retention_due(self, row: StudyRow) -> bool:
        uid = row.study_instance_uid
        items = [rules.QueueItem(r.sop_instance_uid, r.destination, r.state,
                                 r.committed_at if self.destinations.get(r.destination, None) is not None
                                 and self.destinations[r.destination].storage_commitment else (r.sent_at or r.committed_at))
                 for r in ForwardRow.select().where(ForwardRow.study_instance_uid == uid)]
        sops = [i.sop_instance_uid for i in self.index.study_instances(uid)]
        return rules.retention_due(study_state=row.state, instances=sops, items=items,
                                   destinations=self.destinations, now=self.clock(), days=self.forwarded_retention_days)
