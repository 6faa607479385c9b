"""The database's schema version, and the steps that bring an older database up to it.

The database carries its version in the one-row table ``schema_version``. Version 1 is
the schema of 0.1.0, which had no such table: a database with the 0.1.0 tables and no
version is version 1. Each later version is one step in :data:`STEPS`, a small function
``(db) -> None`` whose docstring says what it changes and in which release; step ``i``
(from 0) takes the database from version ``i + 1`` to ``i + 2``, so :data:`SCHEMA_VERSION`
is ``len(STEPS) + 1``.

:func:`upgrade` runs every time a process opens the database (``gateway.app.open_database_of``):

- at :data:`SCHEMA_VERSION` it only reads (no write lock, so a command does not wait for
  a running import), and checks that every table and column of the models is there;
- an empty database is created at :data:`SCHEMA_VERSION` directly, from the models;
- an older one runs the missing steps and records the new version, all in one transaction
  (both databases have transactional DDL): an upgrade that fails leaves the database as
  it was. One process upgrades at a time (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a
  transaction-level advisory lock), and the next finds the work done;
- a newer one (a later release wrote it) is refused with :class:`SchemaTooNew` and left
  untouched.

A step never imports the models (a model describes the latest schema, a step one moment
in the past): it names its table and columns, with peewee's ``SchemaMigrator``
(``add_column``, ``add_index``, ...) so that it runs on SQLite and PostgreSQL alike.
A release that changes a model adds a step; ``tests/test_schema.py`` fails until it does
(the schema the steps make from the previous release's must equal the models': tables,
columns, indexes, triggers), and :func:`upgrade` refuses with :class:`SchemaMismatch` a
database that lacks a model's table or column rather than let a query fail later.

The additive :func:`infra.db.migrate` no longer runs when the database is opened: the
steps are the only way an existing database changes, so its recorded version always says
what it holds (a silent repair after the steps would hide a missing step and make the
version lie).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Sequence

import peewee as pw
from playhouse.migrate import PostgresqlMigrator, SchemaMigrator, SqliteMigrator, migrate as run_migrations

from infra.errors import GatekeeperError

log = logging.getLogger(__name__)

#: The table holding the version (one row).
VERSION_TABLE = "schema_version"
#: The tables of version 1 (0.1.0): a database with all of them and no version table is version 1.
V1_TABLES = ("orders", "auths", "overrides", "mpps", "audit_log", "studies", "instances", "findings")
#: The "version" of a database without any table of the gatekeeper's.
EMPTY = 0
#: Key of the PostgreSQL advisory lock that makes one process upgrade at a time.
_PG_LOCK_KEY = 0x6761746B  # "gatk"


class SchemaTooNew(GatekeeperError):
    """The database was written by a later release than this program."""


class SchemaMismatch(GatekeeperError):
    """The database lacks tables or columns its version says it has (damaged, or changed by hand)."""


Step = Callable[[pw.Database], None]


# ---------------------------------------------------------------- the steps, oldest first


def add_studies_reopened_at(db: pw.Database) -> None:
    """0.2.0 (version 1 -> 2): add ``studies.reopened_at``, a nullable DATETIME: when an
    instance that does not match moved an archived study back to held. Existing studies get
    NULL (0.1.0 did not record it)."""
    _add_column(db, "studies", "reopened_at", pw.DateTimeField(null=True))


def add_orders_report_status(db: pw.Database) -> None:
    """0.3.0 (version 2 -> 3): add orders.report_status and orders.report_status_at: the RIS's
    report status of an order (HL7 ORU) and when it was reached. Existing orders get "" and NULL."""
    _add_column(db, "orders", "report_status", pw.CharField(max_length=16, default=""))
    _add_column(db, "orders", "report_status_at", pw.DateTimeField(null=True))


def add_necessity_policies(db: pw.Database) -> None:
    """0.3.0 (version 3 -> 4): add the table ``necessity_policies`` (rule 7): per payer, the CPT
    codes and ranges a policy covers and the ICD-10-CM prefixes that justify them."""

    class NecessityPolicy(pw.Model):  # the table as 0.3.0 made it, not the current model
        payer_id = pw.CharField()
        cpt = pw.TextField()
        covered_icd10 = pw.TextField()
        imported_at = pw.DateTimeField()

        class Meta:
            database = db
            table_name = "necessity_policies"

    if "necessity_policies" not in db.get_tables():
        db.create_tables([NecessityPolicy])
        run_migrations(migrator(db).add_index("necessity_policies", ("payer_id",), False))


def add_users_table(db: pw.Database) -> None:
    """0.3.0 (version 4 -> 5): add the ``users`` table of the review desk and the API: a unique
    ``name``, its ``role``, an argon2id ``password_hash``, ``disabled``, ``created_at`` and
    ``password_changed_at``. No user exists until ``gatekeeper users add``."""

    class Users(pw.Model):  # the table as this step creates it, not the current model
        name = pw.CharField(unique=True)
        role = pw.CharField()
        password_hash = pw.CharField()
        disabled = pw.BooleanField(default=False)
        created_at = pw.DateTimeField()
        password_changed_at = pw.DateTimeField()

        class Meta:
            database = db
            table_name = "users"

    db.create_tables([Users], safe=True)


def add_audit_outbox(db: pw.Database) -> None:
    """0.3.0 (version 5 -> 6): add table ``audit_outbox``, the cursor of the audit trail's
    delivery to a syslog collector: ``name`` (unique), ``last_id`` (the last audit event
    sent), ``owner`` and ``lease_until`` (which gateway sends), ``sent_at``. Empty: the
    first ``serve`` with ``[audit.syslog]`` set sends the audit log from its first event."""

    class AuditOutbox(pw.Model):  # the table as this step makes it, not the model of today
        name = pw.CharField(unique=True)
        last_id = pw.IntegerField(default=0)
        owner = pw.CharField(default="")
        lease_until = pw.FloatField(default=0.0)
        sent_at = pw.DateTimeField(null=True)

        class Meta:
            database = db
            table_name = "audit_outbox"
            legacy_table_names = False  # index names as the models make them (audit_outbox_name)

    db.create_tables([AuditOutbox], safe=True)


def add_query_retrieve_attributes(db: pw.Database) -> None:
    """0.3.0 (version 6 -> 7): add the attributes the Query/Retrieve SCP matches and returns,
    all VARCHAR NOT NULL, filled at receive time from the header: ``studies.patient_name``,
    ``birth_date``, ``patient_sex``, ``study_time``, ``study_id``, ``study_description``,
    ``referring_physician``; ``instances.modality``, ``series_number``, ``series_description``,
    ``instance_number``. Existing rows get empty values (their files are not read again): such
    studies are still found by UID, patient ID, accession number and study date, and their
    empty attributes match only universal keys. Also indexes ``studies.patient_id`` and
    ``studies.study_date``, which Q/R lookups narrow by."""
    for column, length in (("patient_name", 200), ("birth_date", 8), ("patient_sex", 16), ("study_time", 16),
                           ("study_id", 16), ("study_description", 64), ("referring_physician", 200)):
        _add_column(db, "studies", column, pw.CharField(max_length=length, default=""))
    for column, length in (("modality", 16), ("series_number", 12), ("series_description", 64),
                           ("instance_number", 12)):
        _add_column(db, "instances", column, pw.CharField(max_length=length, default=""))
    for column in ("patient_id", "study_date"):
        _add_index(db, "studies", column)


def add_feed_answers(db: pw.Database) -> None:
    """0.3.0 (version 7 -> 8): add the table feed_answers: the answer (HL7 ACK) given to each
    message of the RIS feed by sender and control ID, so that a message sent again gets the
    same answer and changes nothing."""

    class FeedAnswers(pw.Model):  # the table as this step makes it, not the model of today
        sending_application = pw.CharField(max_length=227)
        sending_facility = pw.CharField(max_length=227)
        control_id = pw.CharField(max_length=199)
        message_type = pw.CharField(max_length=16)
        code = pw.CharField(max_length=2)
        answer = pw.TextField()
        received_at = pw.DateTimeField(index=True)

        class Meta:
            database = db
            legacy_table_names = False  # as infra.db.BaseModel: names the indexes after the table
            table_name = "feed_answers"
            indexes = ((("sending_application", "sending_facility", "control_id"), True),)

    if "feed_answers" not in db.get_tables():
        db.create_tables([FeedAnswers])


def add_forward_queue(db: pw.Database) -> None:
    """0.3.0 (version 8 -> 9): add the table ``forward_queue``, one row per instance and
    ``[forward.NAME]`` destination (state, attempts, generation, next attempt, times sent
    and committed, last error and status, commitment transaction, the sender's lease),
    unique on (sop_instance_uid, destination). Existing studies are not queued: only those
    archived from then on are forwarded."""

    class ForwardQueue(pw.Model):  # the table as 0.3.0 made it (a step never imports the models)
        sop_instance_uid = pw.CharField(max_length=64)
        study_instance_uid = pw.CharField(max_length=64, index=True)
        destination = pw.CharField(max_length=64)
        state = pw.CharField(max_length=10)
        attempts = pw.IntegerField(default=0)
        generation = pw.IntegerField(default=1)
        next_attempt_at = pw.DateTimeField()
        enqueued_at = pw.DateTimeField()
        sent_at = pw.DateTimeField(null=True)
        committed_at = pw.DateTimeField(null=True)
        last_error = pw.TextField(default="")
        last_status = pw.IntegerField(null=True)
        transaction_uid = pw.CharField(max_length=64, null=True, index=True)
        claim = pw.CharField(max_length=40, null=True, index=True)
        claimed_until = pw.DateTimeField(null=True)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = "forward_queue"
            indexes = (
                (("sop_instance_uid", "destination"), True),
                (("state", "next_attempt_at"), False),
            )

    if "forward_queue" not in db.get_tables():
        db.create_tables([ForwardQueue])


#: Every step in order; step ``i`` takes version ``i + 1`` to ``i + 2``.
STEPS: tuple[Step, ...] = (
    add_studies_reopened_at,
    add_orders_report_status,
    add_necessity_policies,
    add_users_table,
    add_audit_outbox,
    add_query_retrieve_attributes,
    add_feed_answers,
    add_forward_queue,
)

#: The version this program writes and reads.
SCHEMA_VERSION = len(STEPS) + 1


# ---------------------------------------------------------------- upgrading


def upgrade(db: pw.Database, models: Sequence[type[pw.Model]]) -> list[str]:
    """Bring ``db`` to :data:`SCHEMA_VERSION`; return what was done (empty when nothing was).

    ``models`` are every table of the product, bound to ``db``: an empty database is
    created from them, and an up-to-date one is checked against them. Raises
    :class:`SchemaTooNew` for a database of a later release and :class:`SchemaMismatch`
    for one that lacks what its version promises; neither changes anything.
    """
    found = version_of(db)  # outside any transaction: only reads
    _refuse_if_newer(found)
    if found == SCHEMA_VERSION:
        _check(db, models)
        return []
    with _exclusive(db):
        found = version_of(db)  # another process may have upgraded while we waited
        _refuse_if_newer(found)
        done = _upgrade_from(db, found, models)
        _check(db, models)  # before COMMIT: an upgrade that does not reach the models is rolled back
    for line in done:
        log.info("database: %s", line)
    return done


def version_of(db: pw.Database) -> int:
    """The database's schema version: :data:`EMPTY` (0) when it has none of the gatekeeper's
    tables, 1 for the 0.1.0 tables without a version table, else the recorded version."""
    tables = set(db.get_tables())
    if VERSION_TABLE in tables:
        rows = db.execute_sql(f"SELECT version FROM {VERSION_TABLE}").fetchall()
        if len(rows) != 1:
            raise SchemaMismatch(f"the database's {VERSION_TABLE} table has {len(rows)} rows instead of one, so it "
                                 f"was changed by hand: restore a backup")
        return int(rows[0][0])
    present = [t for t in V1_TABLES if t in tables]
    if not present:
        return EMPTY
    if len(present) < len(V1_TABLES):
        absent = ", ".join(t for t in V1_TABLES if t not in tables)
        raise SchemaMismatch(f"the database has some of the gatekeeper's tables but not {absent}, so it is "
                             f"damaged or belongs to another program: restore a backup or use another database")
    return 1


def _refuse_if_newer(found: int) -> None:
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the database is at schema version {found} but this gatekeeper knows versions up to {SCHEMA_VERSION}, "
            f"so it was left untouched: upgrade the gatekeeper to the release that wrote it, or restore a backup "
            f"taken before that upgrade")


def _upgrade_from(db: pw.Database, found: int, models: Sequence[type[pw.Model]]) -> list[str]:
    if found == SCHEMA_VERSION:
        return []
    if found == EMPTY:
        db.create_tables(models)
        _set_version(db, SCHEMA_VERSION)
        return [f"created the tables at schema version {SCHEMA_VERSION}"]
    done = []
    for version, step in enumerate(STEPS[found - 1:], start=found + 1):
        step(db)
        _set_version(db, version)  # each step records itself: right even if a step one day needs its own transaction
        done.append(f"upgraded the schema from version {version - 1} to {version} ({step.__name__})")
    return done


@contextlib.contextmanager
def _exclusive(db: pw.Database):
    """A transaction only one process at a time may be in (the upgrade's)."""
    if isinstance(db, pw.SqliteDatabase):
        with db.atomic(lock_type="IMMEDIATE"):  # the write lock from BEGIN on
            yield
    else:
        with db.atomic():
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))  # released at COMMIT or ROLLBACK
            yield


def _set_version(db: pw.Database, version: int) -> None:
    db.execute_sql(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
                   f"(id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)")
    db.execute_sql(f"DELETE FROM {VERSION_TABLE}")
    db.execute_sql(f"INSERT INTO {VERSION_TABLE} (id, version) VALUES (1, {db.param})", (version,))


def _check(db: pw.Database, models: Sequence[type[pw.Model]]) -> None:
    """Raise :class:`SchemaMismatch` when ``db`` lacks a table or column of ``models``."""
    missing = _missing(db, models)
    if missing:
        raise SchemaMismatch(
            f"the database is at schema version {SCHEMA_VERSION} but lacks {', '.join(missing)}, so it was damaged "
            f"or changed by hand (or a release changed a table without a schema step): restore a backup")


def _missing(db: pw.Database, models: Sequence[type[pw.Model]]) -> list[str]:
    """Tables and columns of ``models`` that ``db`` lacks (``table`` or ``table.column``)."""
    tables = set(db.get_tables())
    missing = []
    for model in models:
        table = model._meta.table_name
        if table not in tables:
            missing.append(f"table {table}")
            continue
        have = {c.name for c in db.get_columns(table)}
        missing += [f"column {table}.{f.column_name}" for f in model._meta.sorted_fields if f.column_name not in have]
    return missing


# ---------------------------------------------------------------- what steps are made of


def migrator(db: pw.Database) -> SchemaMigrator:
    """peewee's schema migrator for ``db`` (SQLite or PostgreSQL)."""
    return SqliteMigrator(db) if isinstance(db, pw.SqliteDatabase) else PostgresqlMigrator(db)


def _add_index(db: pw.Database, table: str, column: str) -> None:
    """Add the non-unique index peewee names ``table_column`` unless it is there."""
    if f"{table}_{column}" in {i.name for i in db.get_indexes(table)}:
        return
    run_migrations(migrator(db).add_index(table, (column,), False))


def _add_column(db: pw.Database, table: str, column: str, field: pw.Field) -> None:
    """Add ``table.column`` unless it is there (development builds between two releases
    added new columns themselves, without recording a version)."""
    if column in {c.name for c in db.get_columns(table)}:
        return
    run_migrations(migrator(db).add_column(table, column, field))
