"""The database side, on SQLite and on PostgreSQL: upserts, stable Study UIDs,
overrides, the append-only audit log and additive migrations."""

import datetime as dt
from dataclasses import replace

import peewee
import pytest

from store import models as store_models
from tests.conftest import EXAMPLES
from worklist import models as wm
from worklist import service
from worklist.db import BaseModel, migrate, open_database
from worklist.intake import parse_auths, parse_orders
from worklist.policy import parse_policy

NOW = dt.datetime(2026, 11, 30, 8, 0)
ALL_MODELS = wm.MODELS + store_models.MODELS
POLICY = parse_policy({"default": {"requires_auth": ["70540-70559", "73718-73725"]}})


def _fresh(url: str) -> peewee.Database:
    db = open_database(url)
    db.connect(reuse_if_open=True)
    if not isinstance(db, peewee.SqliteDatabase):
        db.drop_tables(ALL_MODELS + [_Later], cascade=True, safe=True)
    migrate(db, ALL_MODELS)
    wm.protect_audit_log(db)
    return db


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


def test_import_upserts_and_keeps_assigned_study_uid(db):
    orders, auths = _examples()
    first = service.import_orders(orders, NOW)
    assert (first.created, first.updated) == (3, 0)
    uid = service.find_order("ACC1001").study_instance_uid
    assert uid.startswith("2.25.") or uid.count(".") > 3
    moved = [replace(orders[0], scheduled_start=dt.datetime(2026, 12, 2, 9, 0))]
    again = service.import_orders(moved, NOW)
    assert (again.created, again.updated) == (0, 1)
    after = service.find_order("ACC1001")
    assert after.study_instance_uid == uid and after.scheduled_start == dt.datetime(2026, 12, 2, 9, 0)


def test_order_with_its_own_study_uid_keeps_it(db):
    orders, _ = _examples()
    service.import_orders([replace(orders[0], study_instance_uid="1.2.3.4")], NOW)
    assert service.find_order("ACC1001").study_instance_uid == "1.2.3.4"


def test_reimported_auth_never_gives_back_used_units(db):
    _, auths = _examples()
    service.import_auths(auths, NOW)
    wm.AuthRow.update(units_used=1).where(wm.AuthRow.auth_number == "PA-778899").execute()
    service.import_auths(auths, NOW)
    assert service.auth_on("PA-778899").units_used == 1


def test_decisions_of_the_examples(db):
    orders, auths = _examples()
    service.import_orders(orders, NOW)
    service.import_auths(auths, NOW)
    decisions = service.decide_all(service.orders_where(), POLICY, NOW.date())
    assert [(d.accession_number, d.served, d.auth_number) for d in decisions] == [
        ("ACC1001", True, "PA-778899"), ("ACC1002", False, "PA-112233"), ("ACC1003", True, None)]
    assert decisions[1].codes == ("AUTH_DATE_OUT_OF_RANGE", "AUTH_LATERALITY_MISMATCH")


def test_override_serves_and_is_audited(db):
    orders, auths = _examples()
    service.import_orders(orders, NOW)
    service.add_override("ACC1002", "dr.who", "acute trauma", NOW)
    (d,) = service.decide_all([service.find_order("ACC1002")], POLICY, NOW.date())
    assert d.served and d.override.user == "dr.who"
    event = wm.AuditEvent.select().where(wm.AuditEvent.action == "order.override").get()
    assert (event.user, event.subject, event.reason) == ("dr.who", "ACC1002", "acute trauma")


def test_override_of_unknown_order_is_refused(db):
    with pytest.raises(LookupError, match="no order"):
        service.add_override("NOPE", "u", "r", NOW)
    assert not wm.OverrideRow.select().exists()


def test_audit_log_refuses_update_and_delete(db):
    wm.audit(NOW, "u", "test", "S")
    with pytest.raises(peewee.DatabaseError, match="append-only"):
        with db.atomic():
            wm.AuditEvent.update(user="someone else").execute()
    with pytest.raises(peewee.DatabaseError, match="append-only"):
        with db.atomic():
            wm.AuditEvent.delete().execute()
    assert wm.AuditEvent.get().user == "u"


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


def test_reimport_does_not_undo_what_mpps_reported(db):
    orders, _ = _examples()
    service.import_orders(orders, NOW)
    wm.OrderRow.update(status="completed").where(wm.OrderRow.accession_number == "ACC1001").execute()
    service.import_orders(orders, NOW)
    assert service.find_order("ACC1001").status == "completed"
    service.import_orders([replace(orders[0], status="cancelled")], NOW)
    assert service.find_order("ACC1001").status == "cancelled"
