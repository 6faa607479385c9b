"""The database side, on SQLite and on PostgreSQL: upserts, stable Study UIDs,
overrides, the append-only audit log and additive migrations."""

import datetime as dt
import sqlite3
import threading
from dataclasses import replace

import peewee
import pytest

from gateway.app import MODELS as ALL_MODELS
from infra import audit
from infra.db import BaseModel, bind, migrate, open_database
from infra.errors import NotFound, StorageFailure
from tests.conftest import EXAMPLES
from worklist import models as wm
from worklist import records
from worklist.gate import Gate
from worklist.intake import parse_auths, parse_orders
from worklist.policy import parse_policy

NOW = dt.datetime(2026, 11, 30, 8, 0)
POLICY = parse_policy({"default": {"requires_auth": ["70540-70559", "73718-73725"]}})


def _fresh(url: str) -> peewee.Database:
    db = open_database(url)
    bind(db, ALL_MODELS + [_Later])
    db.connect(reuse_if_open=True)
    if not isinstance(db, peewee.SqliteDatabase):
        db.drop_tables(ALL_MODELS + [_Later], cascade=True, safe=True)
        db.execute_sql("DROP TABLE IF EXISTS schema_version")
    migrate(db, ALL_MODELS)
    audit.protect(db)
    return db


@pytest.fixture
def gate(db) -> Gate:
    return Gate(db, POLICY, lambda: NOW)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gk.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    database = _fresh(url)
    yield database
    database.close()


def _examples():
    return parse_orders((EXAMPLES / "orders.json").read_text()), parse_auths((EXAMPLES / "auths.json").read_text())


def test_sqlite_runs_in_wal_mode(tmp_path):
    db = _fresh(f"sqlite:///{tmp_path / 'gk.db'}")
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()


def test_import_upserts_and_keeps_assigned_study_uid(gate):
    orders, auths = _examples()
    first = gate.import_orders(orders)
    assert (first.created, first.updated) == (3, 0)
    uid = gate.find_order("ACC1001").study_instance_uid
    assert uid.startswith("2.25.") or uid.count(".") > 3
    moved = [replace(orders[0], scheduled_start=dt.datetime(2026, 12, 2, 9, 0))]
    again = gate.import_orders(moved)
    assert (again.created, again.updated) == (0, 1)
    after = gate.find_order("ACC1001")
    assert after.study_instance_uid == uid and after.scheduled_start == dt.datetime(2026, 12, 2, 9, 0)


def test_order_with_its_own_study_uid_keeps_it(gate):
    orders, _ = _examples()
    gate.import_orders([replace(orders[0], study_instance_uid="1.2.3.4")])
    assert gate.find_order("ACC1001").study_instance_uid == "1.2.3.4"


def test_reimported_auth_never_gives_back_used_units(gate):
    _, auths = _examples()
    gate.import_auths(auths)
    wm.AuthRow.update(units_used=1).where(wm.AuthRow.auth_number == "PA-778899").execute()
    gate.import_auths(auths)
    assert records.auth("PA-778899").units_used == 1


def test_decisions_of_the_examples(gate):
    orders, auths = _examples()
    gate.import_orders(orders)
    gate.import_auths(auths)
    decisions = gate.decide(list(gate.orders(['ACC1001', 'ACC1002', 'ACC1003']).values()))
    assert [(d.accession_number, d.served, d.auth_number) for d in decisions] == [
        ("ACC1001", True, "PA-778899"), ("ACC1002", False, "PA-112233"), ("ACC1003", True, None)]
    assert decisions[1].codes == ("AUTH_DATE_OUT_OF_RANGE", "AUTH_LATERALITY_MISMATCH")


def test_override_serves_and_is_audited(gate):
    orders, auths = _examples()
    gate.import_orders(orders)
    gate.override("ACC1002", user="dr.who", reason="acute trauma")
    (d,) = gate.decide([gate.find_order("ACC1002")])
    assert d.served and d.override.user == "dr.who"
    event = audit.AuditEvent.select().where(audit.AuditEvent.action == "order.override").get()
    assert (event.user, event.subject, event.reason) == ("dr.who", "ACC1002", "acute trauma")


def test_override_of_unknown_order_is_refused(gate):
    with pytest.raises(NotFound, match="no order"):
        gate.override("NOPE", user="u", reason="r")
    assert not wm.OverrideRow.select().exists()


def test_audit_log_refuses_update_and_delete(db):
    audit.record(NOW, "u", "test", "S")
    with pytest.raises(peewee.DatabaseError, match="append-only"):
        with db.atomic():
            audit.AuditEvent.update(user="someone else").execute()
    with pytest.raises(peewee.DatabaseError, match="append-only"):
        with db.atomic():
            audit.AuditEvent.delete().execute()
    assert audit.AuditEvent.get().user == "u"


class _Later(BaseModel):
    """A model as a later release might have it: a table with a new column."""

    name = peewee.CharField()

    class Meta:
        table_name = "later_release"


def test_migration_adds_missing_columns_without_wiping(db):
    migrate(db, [_Later])
    _Later.create(name="kept")
    extra = peewee.IntegerField(default=7)
    _Later._meta.add_field("extra", extra)
    try:
        done = migrate(db, [_Later])
        assert done == ["added column later_release.extra"]
        row = _Later.get()
        assert (row.name, row.extra) == ("kept", 7)
        assert migrate(db, [_Later]) == []
    finally:
        _Later._meta.remove_field("extra")
        db.drop_tables([_Later])


def test_reimport_does_not_undo_what_mpps_reported(gate):
    orders, _ = _examples()
    gate.import_orders(orders)
    wm.OrderRow.update(status="completed").where(wm.OrderRow.accession_number == "ACC1001").execute()
    gate.import_orders(orders)
    assert gate.find_order("ACC1001").status == "completed"
    gate.import_orders([replace(orders[0], status="cancelled")])
    assert gate.find_order("ACC1001").status == "cancelled"


# ---------------------------------------------------------------- SQLite: several writing processes


@pytest.fixture
def sqlite_db(tmp_path):
    database = _fresh(f"sqlite:///{tmp_path / 'gk.db'}")
    yield database
    database.close()


@pytest.fixture
def other_writer(sqlite_db):
    """Another process's connection to the same file, holding the write lock (until it rolls back)."""
    other = sqlite3.connect(sqlite_db.database, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    yield other
    if other.in_transaction:
        other.execute("ROLLBACK")
    other.close()


def test_sqlite_transactions_take_the_write_lock_at_begin(sqlite_db):
    other = sqlite3.connect(sqlite_db.database, isolation_level=None, timeout=0)
    with sqlite_db.atomic():
        # a transaction that has written nothing yet already holds the lock
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")
        with sqlite_db.atomic():  # nested blocks are savepoints inside it
            wm.OverrideRow.select().count()
    other.execute("BEGIN IMMEDIATE")  # released at commit
    other.execute("ROLLBACK")
    other.close()


def test_lock_held_past_the_busy_timeout_is_one_sentence(sqlite_db, other_writer):
    sqlite_db.pragma("busy_timeout", 50)
    gate = Gate(sqlite_db, POLICY, lambda: NOW)
    orders, auths = _examples()
    for attempt in (lambda: gate.import_orders(orders), lambda: gate.import_auths(auths),
                    lambda: wm.OrderRow.update(status="cancelled").execute()):  # also outside a transaction
        with pytest.raises(StorageFailure) as err:
            attempt()
        message = str(err.value)
        assert message == ("the database is busy: another process kept it locked for more than 0.05 s and "
                           "nothing was changed; try again")
    other_writer.execute("ROLLBACK")
    assert not wm.OrderRow.select().exists() and not sqlite_db.in_transaction()
    assert gate.import_orders(orders).created == 3  # the connection is usable afterwards


def test_lock_released_within_the_busy_timeout_is_waited_for(sqlite_db):
    locked, release = threading.Event(), threading.Event()

    def other_writer():
        other = sqlite3.connect(sqlite_db.database, isolation_level=None, timeout=0)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO audit_log (at, user, action, subject, reason, detail) VALUES ('2026-11-30', 'u', 'a', 's', '', '{}')")
        locked.set()
        release.wait(5)
        other.execute("COMMIT")
        other.close()

    writer = threading.Thread(target=other_writer)
    writer.start()
    assert locked.wait(5)
    threading.Timer(0.3, release.set).start()
    orders, _ = _examples()
    assert Gate(sqlite_db, POLICY, lambda: NOW).import_orders(orders).created == 3
    writer.join(5)


def test_opening_an_up_to_date_database_takes_no_write_lock(sqlite_db, other_writer):
    # Every command migrates when it opens; it must not wait for a running import.
    sqlite_db.close()
    sqlite_db.connect()  # a new connection, as a command opens it
    sqlite_db.pragma("busy_timeout", 50)
    assert migrate(sqlite_db, ALL_MODELS) == []
    audit.protect(sqlite_db)
