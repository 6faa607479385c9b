"""The audit outbox: the audit log sent in id order from a cursor in the database, once, across
restarts and collector outages; one gateway sends at a time; ids not yet committed are waited for."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from infra import audit
from infra.audit_outbox import LEASE_SECONDS, AuditOutbox, Gap, Outbox, OutboxConfig, sendable

AT = dt.datetime(2026, 12, 1, 9, 0)


# ---------------------------------------------------------------- which ids may go (pure)


@pytest.mark.parametrize("cursor, ids, chosen", [
    (0, [], []),
    (0, [1, 2, 3], [1, 2, 3]),
    (5, [6, 7], [6, 7]),
    (0, [1, 2, 4, 5], [1, 2]),  # a gap further on ends the batch
])
def test_ids_that_follow_one_another_go(cursor, ids, chosen):
    assert sendable(cursor, ids, None, now=100.0) == (chosen, None)


def test_a_gap_at_the_cursor_is_waited_for_then_passed():
    chosen, gap = sendable(2, [4, 5], None, now=100.0, wait=60)
    assert (chosen, gap) == ([], Gap(2, 100.0))
    assert sendable(2, [4, 5], gap, now=159.9, wait=60) == ([], gap)  # not yet
    assert sendable(2, [3, 4, 5], gap, now=120.0, wait=60) == ([3, 4, 5], None)  # it committed meanwhile
    assert sendable(2, [4, 5, 7], gap, now=160.0, wait=60) == ([4, 5], None)  # passed; the next gap ends the batch


def test_a_gap_seen_at_another_cursor_starts_its_own_wait():
    assert sendable(9, [11], Gap(2, 0.0), now=100.0, wait=60) == ([], Gap(9, 100.0))


# ---------------------------------------------------------------- the outbox on a database


class Collector:
    """A send function that keeps what it got, and fails while ``down`` (or after ``fail_after`` more)."""

    def __init__(self):
        self.got: list[int] = []
        self.down = False
        self.fail_after: int | None = None

    def __call__(self, event: audit.AuditEvent) -> None:
        if self.down or self.fail_after == 0:
            raise ConnectionRefusedError("collector down")
        if self.fail_after is not None:
            self.fail_after -= 1
        self.got.append(event.id)


class Wall:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(n: int = 1, action: str = "study.released") -> list[int]:
    return [audit.record(AT, "tech1", action, f"1.2.3.{i}", "why") for i in range(n)]


def outbox(app, collector, wall=None, monotonic=None, **config) -> Outbox:
    return Outbox(app.db, collector, OutboxConfig(**{"batch": 100, **config}), wall=wall or Wall(),
                  monotonic=monotonic or (lambda: 0.0))


def cursor() -> int:
    return AuditOutbox.get(AuditOutbox.name == "syslog").last_id


def test_events_go_in_id_order_and_the_cursor_follows(app):
    ids = record(3)
    got = Collector()
    box = outbox(app, got)
    assert box.once() == 3
    assert got.got == ids and cursor() == ids[-1]
    assert box.once() == 0 and got.got == ids  # nothing twice
    more = record(2)
    assert box.once() == 2 and got.got == ids + more


def test_events_written_before_the_first_start_are_sent_too(app):
    ids = record(2)  # e.g. by `gatekeeper held release` before any serve ran with [audit.syslog]
    assert AuditOutbox.select().count() == 0
    got = Collector()
    outbox(app, got).once()
    assert got.got == ids


def test_a_restart_resumes_at_the_cursor_without_sending_twice(app):
    first = record(2)
    got = Collector()
    box = outbox(app, got)
    box.once()
    box.release()  # a clean stop
    later = record(2)  # written while no serve ran (a CLI command)
    again = Collector()
    assert outbox(app, again).once() == 2
    assert again.got == later and got.got == first


def test_a_restart_after_a_crash_waits_for_the_lease_then_resumes(app):
    record(1)
    wall = Wall()
    crashed = outbox(app, Collector(), wall=wall)
    crashed.once()  # holds the lease; never releases (killed)
    later = record(1)
    got = Collector()
    successor = outbox(app, got, wall=wall)
    assert successor.once() == 0  # the dead process's lease still holds
    wall.now += LEASE_SECONDS + 1
    assert successor.once() == 1 and got.got == later


def test_an_outage_loses_nothing_and_sends_what_went_out_only_once(app):
    ids = record(5)
    got = Collector()
    got.fail_after = 2  # the collector goes away after two messages
    box = outbox(app, got)
    with pytest.raises(ConnectionRefusedError):
        box.once()
    assert got.got == ids[:2] and cursor() == ids[1]
    got.down, got.fail_after = True, None
    with pytest.raises(ConnectionRefusedError):
        box.once()
    assert cursor() == ids[1]
    got.down = False
    assert box.once() == 3
    assert got.got == ids


def test_the_wait_doubles_while_the_collector_is_down_and_is_capped(app, caplog):
    record(1)
    got = Collector()
    got.down = True
    box = outbox(app, got, retry_first_seconds=1, retry_max_seconds=5, poll_seconds=2)
    with caplog.at_level(logging.INFO, logger="infra.audit_outbox"):
        waits = [box._round("the collector") for _ in range(5)]
        assert waits == [1, 2, 4, 5, 5]
        got.down = False
        assert box._round("the collector") == 2  # sent; back to polling
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "events stay in the audit log" in warnings[0].getMessage()
    assert any("takes messages again after 5 failed attempts" in r.getMessage() for r in caplog.records)
    assert len(got.got) == 1


def test_a_backlog_is_sent_without_waiting_between_batches(app):
    record(5)
    box = outbox(app, Collector(), batch=2, poll_seconds=3)
    assert [box._round("c"), box._round("c"), box._round("c"), box._round("c")] == [0.0, 0.0, 3, 3]


def test_one_gateway_sends_at_a_time_and_the_other_takes_over_after_a_clean_stop(app):
    record(2)
    wall = Wall()
    one, two = Collector(), Collector()
    first, second = outbox(app, one, wall=wall), outbox(app, two, wall=wall)
    assert first.once() == 2 and second.once() == 0
    record(1)
    assert second.once() == 0 and first.once() == 1
    first.release()
    record(1)
    assert second.once() == 1
    assert len(one.got) == 3 and len(two.got) == 1 and not set(one.got) & set(two.got)


def test_an_idle_gateway_renews_its_lease_once_per_half_lease_and_otherwise_only_reads(app):
    record(1)
    wall = Wall()
    box = outbox(app, Collector(), wall=wall)
    box.once()
    held = AuditOutbox.get().lease_until
    wall.now += LEASE_SECONDS / 2 - 1
    assert box.once() == 0 and AuditOutbox.get().lease_until == held
    wall.now += 2
    assert box.once() == 0 and AuditOutbox.get().lease_until == wall.now + LEASE_SECONDS


def test_a_gateway_that_lost_its_lease_sends_nothing_until_it_has_it_again(app):
    record(1)
    wall = Wall()
    slow, other = Collector(), Collector()
    first, second = outbox(app, slow, wall=wall), outbox(app, other, wall=wall)
    first.once()
    wall.now += LEASE_SECONDS + 1  # first stalled past its lease; second takes over
    later = record(1)
    assert second.once() == 1 and other.got == later
    assert first.once() == 0 and slow.got == [1]  # first finds the lease gone
    record(1)
    assert first.once() == 0  # and stays out while second holds it


def test_an_id_not_yet_committed_is_waited_for(app):
    record(1)
    got = Collector()
    clock = [0.0]
    box = outbox(app, got, monotonic=lambda: clock[0], gap_seconds=60)
    box.once()
    # id 2 is taken by a transaction still open (PostgreSQL); id 3 commits first
    audit.AuditEvent.create(id=3, at=AT, user="u", action="study.released", subject="1.2.3", reason="", detail="{}")
    assert box.once() == 0 and got.got == [1]
    clock[0] = 30.0
    audit.AuditEvent.create(id=2, at=AT, user="u", action="study.released", subject="1.2.2", reason="", detail="{}")
    assert box.once() == 2 and got.got == [1, 2, 3]


def test_a_gap_that_never_fills_is_passed_after_the_wait(app, caplog):
    record(1)
    got = Collector()
    clock = [0.0]
    box = outbox(app, got, monotonic=lambda: clock[0], gap_seconds=60)
    box.once()
    audit.AuditEvent.create(id=5, at=AT, user="u", action="study.released", subject="1.2.5", reason="", detail="{}")
    assert box.once() == 0
    clock[0] = 61.0
    with caplog.at_level(logging.WARNING, logger="infra.audit_outbox"):
        assert box.once() == 1
    assert got.got == [1, 5]
    assert "audit events 2 to 4 never committed" in caplog.text


def test_the_outbox_on_postgresql(pg_url, tmp_path):
    """The same cursor and lease on PostgreSQL (ON CONFLICT, the conditional updates)."""
    from gateway.app import open_database_of
    from gateway.settings import load
    from tests.conftest import write_settings
    from tests.test_schema import _drop_everything

    _drop_everything(pg_url)
    db = open_database_of(load(write_settings(tmp_path, database_url=pg_url), environ={}))
    try:
        ids = [audit.record(AT, "tech1", "study.released", f"1.2.{i}") for i in range(3)]
        got, other = Collector(), Collector()
        wall = Wall()
        first = Outbox(db, got, OutboxConfig(), wall=wall)
        second = Outbox(db, other, OutboxConfig(), wall=wall)
        assert first.once() == 3 and second.once() == 0
        assert got.got == ids and cursor() == ids[-1]
        first.release()
        more = audit.record(AT, "tech1", "study.released", "1.2.9")
        assert second.once() == 1 and other.got == [more]
    finally:
        db.close()
        _drop_everything(pg_url)
