"""The audit outbox: sends the audit log, event by event in id order, to a collector.

The audit log itself is the outbox: every process (``serve``, a CLI command on another
machine sharing the PostgreSQL database) writes its events there, in its own
transaction; a thread of ``gatekeeper serve`` tails the log by id from a cursor stored
in the database (table ``audit_outbox``, one row per destination name), so that:

- an event is sent after it is committed, never from inside a DICOM operation or a
  command (nothing of the trail is on a hot path);
- nothing is lost across a restart or a collector outage: the cursor moves only past
  what was handed to the transport; a failed send is retried with back-off (doubling,
  up to ``retry_max_seconds``), and a restart resumes at the cursor;
- nothing is sent twice in normal operation: one gateway at a time sends (a lease on the
  cursor row, renewed every half lease and taken over when it lapses; gateways sharing a
  database compare wall clocks, so keep them in step with NTP), and the cursor is moved
  only by its holder. A crash between a send and the cursor's update sends those
  events again (at least once, never silently dropped);
- an id not yet committed is waited for: PostgreSQL hands out ids at INSERT, so event 11
  may commit before event 10. A gap at the cursor is waited for up to ``GAP_SECONDS``
  (a transaction that rolled back leaves a gap for ever) before it is passed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

import peewee as pw

from infra import audit
from infra.db import BaseModel

log = logging.getLogger("infra.audit_outbox")

#: Seconds one gateway's claim on the cursor lasts without being renewed.
LEASE_SECONDS = 30.0
#: Seconds a gap in the ids at the cursor is waited for (an event not yet committed) before it is passed.
GAP_SECONDS = 60.0


class AuditOutbox(BaseModel):
    """Where sending the audit log to one destination has got to, and which gateway sends."""

    name = pw.CharField(unique=True)  # the destination, e.g. "syslog"
    last_id = pw.IntegerField(default=0)  # id of the last audit event handed to the transport
    owner = pw.CharField(default="")  # the gateway process that sends (host:pid:random)
    lease_until = pw.FloatField(default=0.0)  # wall-clock seconds (time.time) the owner's claim lasts
    sent_at = pw.DateTimeField(null=True)  # wall-clock time of the last send

    class Meta:
        table_name = "audit_outbox"


MODELS = [AuditOutbox]


@dataclass(frozen=True)
class Gap:
    """A gap in the ids just after the cursor, first seen at ``since`` (monotonic seconds)."""

    after: int
    since: float


def sendable(cursor: int, ids: Sequence[int], gap: Gap | None, now: float,
             wait: float = GAP_SECONDS) -> tuple[list[int], Gap | None]:
    """The ids (ascending, all above ``cursor``) that may be sent now, and the gap to remember.

    Ids are sent in order while they follow one another. At a gap right after the cursor
    nothing is sent until the gap has been seen for ``wait`` seconds; then it is passed.
    A gap further on ends the batch (the next round finds it at the cursor).
    """
    chosen: list[int] = []
    expected = cursor + 1
    for id_ in ids:
        if id_ != expected:
            if chosen:
                break
            if gap is None or gap.after != cursor:
                return [], Gap(cursor, now)
            if now - gap.since < wait:
                return [], gap
        chosen.append(id_)
        expected = id_ + 1
    return chosen, None


@dataclass
class OutboxConfig:
    name: str = "syslog"
    batch: int = 100
    poll_seconds: float = 2.0
    retry_first_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    gap_seconds: float = GAP_SECONDS


class Outbox:
    """Tails the audit log into ``send`` (one event; raises, e.g. OSError, when it did not go out)."""

    def __init__(self, db: pw.Database, send: Callable[[audit.AuditEvent], None], config: OutboxConfig,
                 wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db, self.send, self.config = db, send, config
        self.wall, self.monotonic = wall, monotonic
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._gap: Gap | None = None
        self._cursor: int | None = None  # last_id, known while the lease is held
        self._held_until = 0.0
        self.failures = 0
        self.sent = 0

    # -- one round ----------------------------------------------------------------

    def once(self) -> int:
        """Send what is ready; return how many events went out (0 when another gateway sends)."""
        cursor = self._claim()
        if cursor is None:
            return 0
        events = audit.events_after(cursor, self.config.batch)
        ids, self._gap = sendable(cursor, [e.id for e in events], self._gap, self.monotonic(),
                                  self.config.gap_seconds)
        if not ids:
            return 0
        if ids[0] != cursor + 1:
            log.warning("audit trail: audit events %d to %d never committed (or are not committed after %.0f s); "
                        "sending from %d on", cursor + 1, ids[0] - 1, self.config.gap_seconds, ids[0])
        done = 0
        try:
            for event in events[:len(ids)]:
                self.send(event)
                done += 1
        finally:  # past what went out, also when the send after it failed
            if done:
                self._advance(cursor, events[done - 1].id)
                self.sent += done
        return done

    def _claim(self) -> int | None:
        """The cursor, while this gateway holds the lease on it; None when another gateway does.

        A round while more than half the lease is left only reads: an idle gateway writes
        to the database once per half lease, not once per poll.
        """
        now = self.wall()
        if self._cursor is not None and self._held_until - now > LEASE_SECONDS / 2:
            return self._cursor
        if AuditOutbox.get_or_none(AuditOutbox.name == self.config.name) is None:
            AuditOutbox.insert(name=self.config.name, last_id=0).on_conflict_ignore().execute()
        took = (AuditOutbox.update(owner=self.owner, lease_until=now + LEASE_SECONDS)
                .where((AuditOutbox.name == self.config.name)
                       & ((AuditOutbox.owner == self.owner) | (AuditOutbox.lease_until < now)))
                .execute())
        if took != 1:
            self._cursor = None
            return None
        self._held_until = now + LEASE_SECONDS
        self._cursor = AuditOutbox.get(AuditOutbox.name == self.config.name).last_id
        return self._cursor

    def _advance(self, old: int, new: int) -> None:
        moved = (AuditOutbox.update(last_id=new, sent_at=dt.datetime.fromtimestamp(self.wall()).replace(microsecond=0))
                 .where((AuditOutbox.name == self.config.name) & (AuditOutbox.owner == self.owner)
                        & (AuditOutbox.last_id == old))
                 .execute())
        if moved == 1:
            self._cursor = new
            return
        self._cursor = None  # read it again, with the lease, next round
        log.warning("audit trail: another gateway took over sending while events %d to %d were sent; "
                    "they may reach the collector twice", old + 1, new)

    def release(self) -> None:
        """Give up the lease (a clean stop), so another gateway may send at once."""
        self._cursor = None
        (AuditOutbox.update(lease_until=0.0)
         .where((AuditOutbox.name == self.config.name) & (AuditOutbox.owner == self.owner)).execute())

    # -- the thread ------------------------------------------------------------------

    def run(self, stop: threading.Event, describe: str = "the collector") -> None:
        """Send until ``stop`` is set: at once while there is a backlog, every ``poll_seconds`` otherwise,
        with back-off after a failure."""
        try:
            while not stop.is_set():
                wait = self._round(describe)
                stop.wait(wait)
        finally:
            try:
                self.release()
            except Exception:  # a database gone at shutdown: the lease lapses by itself
                pass
            self.db.close()  # this thread's connection

    def _round(self, describe: str) -> float:
        try:
            done = self.once()
        except Exception as exc:  # a collector or the database unreachable: retry later, never stop
            self.failures += 1
            wait = min(self.config.retry_max_seconds, self.config.retry_first_seconds * 2 ** (self.failures - 1))
            if self.failures == 1 or self.failures % 20 == 0:
                log.warning("audit trail: cannot send to %s (%s); events stay in the audit log and are sent "
                            "when it is back (retrying in %.0f s, attempt %d)", describe, exc, wait, self.failures)
            return wait
        if self.failures:
            log.info("audit trail: %s takes messages again after %d failed attempts", describe, self.failures)
            self.failures = 0
        return 0.0 if done >= self.config.batch else self.config.poll_seconds
