"""Schema versions, on SQLite and on PostgreSQL: a database made by the previous release
(0.1.0, schema version 1) is upgraded in place when the program opens it, an empty one is
created at the current version, and one newer than the program is refused untouched.

The 0.1.0 database is built from ``tests/schemas/v1_*.sql``, the schema 0.1.0's own code
created (``tests/schemas/dump_schema.py`` wrote them from a checkout of that release);
the rows are inserted with 0.1.0's columns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import sqlite3
import threading
from pathlib import Path

import peewee
import pytest

from gateway.app import MODELS, open_database_of
from gateway.settings import load
from infra import schema
from infra.audit import AuditEvent
from infra.db import bind, open_database
from store.models import FindingRow, InstanceRow, StudyRow
from tests.conftest import write_settings
from worklist.gate import Gate
from worklist.models import AuthRow, OrderRow
from worklist.policy import parse_policy

SCHEMAS = Path(__file__).resolve().parent / "schemas"
NOW = dt.datetime(2026, 12, 2, 9, 0)
POLICY = parse_policy({"default": {"requires_auth": ["73718-73725"]}})
#: Every table the tests may leave behind on the shared PostgreSQL database.
TABLES = [m._meta.table_name for m in MODELS] + [schema.VERSION_TABLE]

# Rows as 0.1.0 wrote them (its columns, no ``studies.reopened_at``).
V1_ROWS = {
    "orders": dict(
        accession_number="ACC2001", status="scheduled", patient_id="P2001", patient_issuer="", patient_name="DOE^JANE",
        birth_date="1970-01-02", sex="F", cpt="73721", description="MRI KNEE", modality="MR", body_part="KNEE",
        laterality="L", scheduled_start="2026-12-01 10:15:00", station_ae="MR1", station_name="", location="",
        ordering_npi="1234567893", ordering_name="", facility_npi="1245319599", payer_id="ACME_HEALTH", member_id="",
        plan_type="", diagnoses="M23.2", study_instance_uid="1.2.826.0.1.3680043.2.1", requested_procedure_id="RP1",
        scheduled_procedure_step_id="SPS1", auth_unit_used=None, last_decision="served", last_reasons="",
        imported_at="2026-11-28 09:00:00", updated_at="2026-11-28 09:00:00"),
    "auths": dict(
        auth_number="PA-2001", payer_id="ACME_HEALTH", patient_id="P2001", cpt_codes="73721", facility_npi="1245319599",
        ordering_npi="1234567893", valid_from="2026-11-01", valid_to="2026-12-31", units=1, units_used=0,
        laterality="L", body_part="KNEE", status="approved", imported_at="2026-11-28 09:00:00",
        updated_at="2026-11-28 09:00:00"),
    "studies": dict(
        study_instance_uid="1.2.826.0.1.3680043.2.1", state="held", accession_number="ACC2001",
        order_accession="ACC2001", patient_id="P2001", study_date="20261201", first_received_at="2026-12-01 10:30:00",
        last_received_at="2026-12-01 10:31:00", held_at="2026-12-01 10:30:00", state_changed_at="2026-12-01 10:30:00",
        age_flagged_at=None, instance_count=1, pending_files=None),
    "instances": dict(
        sop_instance_uid="1.2.826.0.1.3680043.2.1.1.1", study_instance_uid="1.2.826.0.1.3680043.2.1",
        series_instance_uid="1.2.826.0.1.3680043.2.1.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1", path="held/1.2.826.0.1.3680043.2.1/1.dcm", size=5_000_000_000,
        sha256="0" * 64, received_from="MR1", received_at="2026-12-01 10:30:00"),
    "findings": dict(
        study_instance_uid="1.2.826.0.1.3680043.2.1", sop_instance_uid="1.2.826.0.1.3680043.2.1.1.1",
        code="PATIENT_ID_MISMATCH", instance_value="P9", order_value="P2001", message="patient ID differs",
        holds=True, found_at="2026-12-01 10:30:00"),
    "audit_log": dict(
        at="2026-11-28 09:00:00", user="import", action="orders.import", subject="orders", reason="",
        detail='{"created": 1, "updated": 0}'),
}


# ---------------------------------------------------------------- databases


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gk.db'}"
        return
    pg = request.getfixturevalue("pg_url")
    _drop_everything(pg)
    yield pg
    _drop_everything(pg)


@contextlib.contextmanager
def raw(url: str):
    """A plain DB-API connection to ``url`` (not peewee's), committed and closed at the end."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///"):])
    else:
        import psycopg2

        conn = psycopg2.connect(url)
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def _drop_everything(pg_url: str) -> None:
    with raw(pg_url) as conn:
        conn.cursor().execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)} CASCADE; "
                              "DROP FUNCTION IF EXISTS audit_log_append_only() CASCADE")


def build_v1(url: str, rows: bool = True) -> None:
    """The database 0.1.0 created at ``url``, from its dumped schema, with one row a table."""
    kind = "sqlite" if url.startswith("sqlite:") else "postgres"
    ddl = (SCHEMAS / f"v1_{kind}.sql").read_text()
    with raw(url) as conn:
        if kind == "sqlite":
            conn.executescript(ddl)
        else:
            conn.cursor().execute(ddl)  # pg_dump's statements, without its session settings
        mark = "?" if kind == "sqlite" else "%s"
        for table, row in V1_ROWS.items() if rows else ():
            columns = ", ".join(f'"{c}"' for c in row)
            conn.cursor().execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join([mark] * len(row))})",
                                  tuple(row.values()))


def settings_for(url: str, tmp_path: Path):
    folder = tmp_path / "gateway"
    folder.mkdir(exist_ok=True)
    return load(write_settings(folder, database_url=url), environ={})


def recorded_version(url: str) -> int | None:
    with raw(url) as conn:
        cur = conn.cursor()
        try:
            cur.execute(f"SELECT version FROM {schema.VERSION_TABLE}")
        except Exception:
            return None
        return cur.fetchone()[0]


def describe(db: peewee.Database) -> dict:
    """Tables with their columns (type, null, primary key, default), indexes and triggers."""
    shape = {}
    for table in db.get_tables():
        columns = {c.name: (c.data_type.lower(), c.null, c.primary_key, _default(c.default))
                   for c in db.get_columns(table)}
        if not isinstance(db, peewee.SqliteDatabase):  # PostgreSQL's data_type lacks the length of a varchar
            for name, length in db.execute_sql(
                    "SELECT column_name, character_maximum_length FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = %s", (table,)).fetchall():
                columns[name] += (length,)
        indexes = {(i.name, tuple(i.columns), i.unique) for i in db.get_indexes(table)}
        shape[table] = {"columns": columns, "indexes": indexes, "triggers": _triggers(db, table)}
    return shape


def _default(default) -> str | None:
    return None if default is None else str(default).replace("public.", "")


def _triggers(db: peewee.Database, table: str) -> set[str]:
    if isinstance(db, peewee.SqliteDatabase):
        sql = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?"
    else:
        sql = "SELECT DISTINCT trigger_name FROM information_schema.triggers WHERE event_object_table = %s"
    return {name for (name,) in db.execute_sql(sql, (table,)).fetchall()}


def opened(url: str) -> peewee.Database:
    """``url`` opened with the models bound, as a process opens it, without upgrading it."""
    db = open_database(url)
    bind(db, MODELS)
    db.connect(reuse_if_open=True)
    return db


# ---------------------------------------------------------------- from 0.1.0 to now


def test_a_0_1_0_database_is_upgraded_in_place(url, tmp_path):
    build_v1(url)
    db = opened(url)
    assert schema.version_of(db) == 1
    assert "reopened_at" not in {c.name for c in db.get_columns("studies")}
    db.close()

    db = open_database_of(settings_for(url, tmp_path))  # what serve and check do
    try:
        assert schema.version_of(db) == schema.SCHEMA_VERSION
        assert recorded_version(url) == schema.SCHEMA_VERSION
        assert "reopened_at" in {c.name for c in db.get_columns("studies")}

        # the rows are intact and read through the current models and use cases
        for model in (OrderRow, AuthRow, StudyRow, InstanceRow, FindingRow, AuditEvent):
            assert model.select().count() == 1
        order = Gate(db, POLICY, lambda: NOW).find_order("ACC2001")
        assert (order.patient_id, order.cpt, order.laterality, order.birth_date) == ("P2001", "73721", "L",
                                                                                      dt.date(1970, 1, 2))
        assert order.scheduled_start == dt.datetime(2026, 12, 1, 10, 15)
        study = StudyRow.get()
        assert (study.state, study.held_at, study.reopened_at) == ("held", dt.datetime(2026, 12, 1, 10, 30), None)
        assert InstanceRow.get().size == 5_000_000_000 and FindingRow.get().holds is True
        assert AuthRow.get().valid_to == dt.date(2026, 12, 31)

        # the new column and the old sequences work
        StudyRow.update(reopened_at=NOW).execute()
        assert StudyRow.get().reopened_at == NOW
        AuditEvent.create(at=NOW, user="u", action="a", subject="s")
        assert AuditEvent.select().count() == 2

        # the audit log is still append-only
        with pytest.raises(peewee.DatabaseError, match="append-only"):
            with db.atomic():
                AuditEvent.update(user="someone else").execute()
        with pytest.raises(peewee.DatabaseError, match="append-only"):
            with db.atomic():
                AuditEvent.delete().execute()
        assert AuditEvent.select().where(AuditEvent.user == "import").count() == 1
        before = describe(db)
    finally:
        db.close()

    # opening again does nothing
    db = opened(url)
    try:
        assert schema.upgrade(db, MODELS) == []
        assert describe(db) == before and recorded_version(url) == schema.SCHEMA_VERSION
    finally:
        db.close()
    open_database_of(settings_for(url, tmp_path)).close()
    db = opened(url)
    assert describe(db) == before
    db.close()


def test_the_steps_make_of_0_1_0_exactly_the_schema_of_the_models(url, tmp_path):
    """A model changed without a step fails here: the upgraded 0.1.0 database must equal a
    database created from the models (tables, columns, indexes, triggers)."""
    build_v1(url, rows=False)
    db = open_database_of(settings_for(url, tmp_path))
    upgraded = describe(db)
    db.close()
    if url.startswith("sqlite:"):
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        _drop_everything(url)
    db = open_database_of(settings_for(url, tmp_path))
    created = describe(db)
    db.close()
    assert set(upgraded) == set(created) == {*TABLES}
    for table in created:
        assert upgraded[table] == created[table], table


def test_an_upgrade_that_fails_leaves_the_database_as_it_was(url, monkeypatch):
    def breaks(db):
        """9.9.9 (version 2 -> 3): fails half-way."""
        db.execute_sql("CREATE TABLE half_done (id INTEGER)")
        raise RuntimeError("the step failed")

    monkeypatch.setattr(schema, "STEPS", (*schema.STEPS, breaks))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.STEPS) + 1)
    build_v1(url)
    db = opened(url)
    try:
        with pytest.raises(RuntimeError, match="the step failed"):
            schema.upgrade(db, MODELS)
        assert not db.in_transaction()
        tables = set(db.get_tables())
        assert schema.VERSION_TABLE not in tables and "half_done" not in tables
        assert "reopened_at" not in {c.name for c in db.get_columns("studies")}
        assert schema.version_of(db) == 1
    finally:
        db.close()


def test_two_processes_opening_a_0_1_0_database_at_once_upgrade_it_once(url):
    build_v1(url)
    db = opened(url)
    db.close()
    start, results = threading.Barrier(2), []

    def open_it():  # peewee gives each thread its own connection, as each process has
        start.wait(5)
        try:
            results.append(schema.upgrade(db, MODELS))
        except Exception as exc:
            results.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(map(len, results)) == [0, len(schema.STEPS)], results
    assert recorded_version(url) == schema.SCHEMA_VERSION


# ---------------------------------------------------------------- empty, newer, damaged


def test_an_empty_database_is_created_at_the_current_version(url, tmp_path):
    db = opened(url)
    assert schema.version_of(db) == schema.EMPTY
    assert schema.upgrade(db, MODELS) == [f"created the tables at schema version {schema.SCHEMA_VERSION}"]
    db.close()
    assert recorded_version(url) == schema.SCHEMA_VERSION
    db = open_database_of(settings_for(url, tmp_path))
    try:
        assert set(db.get_tables()) == set(TABLES)
        assert "reopened_at" in {c.name for c in db.get_columns("studies")}
        AuditEvent.create(at=NOW, user="u", action="a", subject="s")
        with pytest.raises(peewee.DatabaseError, match="append-only"):
            with db.atomic():
                AuditEvent.delete().execute()
    finally:
        db.close()


TOO_NEW = (f"the database is at schema version {schema.SCHEMA_VERSION + 1} but this gatekeeper knows versions up "
           f"to {schema.SCHEMA_VERSION}, so it was left "
           "untouched: upgrade the gatekeeper to the release that wrote it, or restore a backup taken before "
           "that upgrade")


def _make_version_3(url: str, tmp_path: Path) -> None:
    """A database as a later release might leave it: the next version, with a column this program does not know."""
    open_database_of(settings_for(url, tmp_path)).close()
    with raw(url) as conn:
        conn.cursor().execute(f"UPDATE {schema.VERSION_TABLE} SET version = {schema.SCHEMA_VERSION + 1}")
        conn.cursor().execute("ALTER TABLE orders ADD COLUMN later_release_column INTEGER")


def test_a_database_newer_than_the_program_is_refused_and_left_untouched(url, tmp_path):
    _make_version_3(url, tmp_path)
    db = opened(url)
    before = describe(db)
    db.close()
    with pytest.raises(schema.SchemaTooNew) as refused:
        open_database_of(settings_for(url, tmp_path))
    assert str(refused.value) == TOO_NEW
    db = opened(url)
    try:
        assert describe(db) == before and recorded_version(url) == schema.SCHEMA_VERSION + 1
    finally:
        db.close()


def test_the_command_line_says_the_one_sentence(tmp_path, capsys, monkeypatch):
    from gateway.cli.main import main

    url = f"sqlite:///{tmp_path / 'gk.db'}"
    _make_version_3(url, tmp_path)
    monkeypatch.setenv("GATEKEEPER_NOW", "2026-11-30T08:00:00")
    code = main(["--config", str(tmp_path / "gateway" / "settings.toml"), "jobs", "list"])
    assert (code, capsys.readouterr().err) == (1, f"gatekeeper: {TOO_NEW}\n")


def test_a_database_missing_what_its_version_promises_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'gk.db'}"
    with raw(url) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    db = opened(url)
    with pytest.raises(schema.SchemaMismatch, match="some of the gatekeeper's tables but not auths, overrides"):
        schema.upgrade(db, MODELS)
    assert set(db.get_tables()) == {"orders"}
    db.close()

    url = f"sqlite:///{tmp_path / 'other.db'}"
    open_database_of(settings_for(url, tmp_path)).close()
    with raw(url) as conn:
        conn.execute("DROP TABLE findings")
    with pytest.raises(schema.SchemaMismatch, match=f"^the database is at schema version {schema.SCHEMA_VERSION} but lacks table findings"):
        open_database_of(settings_for(url, tmp_path))


def test_opening_an_up_to_date_database_takes_no_write_lock(tmp_path):
    # Every command opens the database; it must not wait for a running import.
    url = f"sqlite:///{tmp_path / 'gk.db'}"
    open_database_of(settings_for(url, tmp_path)).close()
    other = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    try:
        db = opened(url)
        db.pragma("busy_timeout", 50)
        assert schema.upgrade(db, MODELS) == []
        db.close()
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_each_step_says_what_it_changes_and_in_which_release():
    assert schema.SCHEMA_VERSION == len(schema.STEPS) + 1
    for version, step in enumerate(schema.STEPS, start=2):
        doc = step.__doc__ or ""
        assert re.match(rf"\d+\.\d+\.\d+ \(version {version - 1} -> {version}\): \S", doc), step.__name__
