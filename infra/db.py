"""The database, opened from a URL and passed down: SQLite by default, PostgreSQL by URL.

SQLite runs in WAL mode with ``synchronous=FULL`` so that a row committed before a
C-STORE success status survives a power cut; PostgreSQL works the same through a
``postgresql://`` URL.

Several processes may write one SQLite file at once (two ``orders import``, the server
and a command). SQLite opened as :class:`SqliteDatabase` begins every top-level
transaction ``IMMEDIATE``: it takes the write lock at ``BEGIN``, waiting up to
:data:`BUSY_TIMEOUT_MS` for another writer, instead of reading first and failing with
"database is locked" when it must upgrade to a write lock another process took in the
meantime (SQLite cannot wait there). A wait that still times out is raised as
:class:`~infra.errors.StorageFailure` whose message is one sentence for the person,
never peewee's ``OperationalError``; nothing was written.

There is no process-wide handle: :func:`open_database` returns the database, the
composition root (:mod:`gateway.app`) binds the models to it and hands it to every use
case, which opens its transactions with ``db.atomic()``. Peewee keeps the binding on the
model classes, so one process works on one database at a time.

:mod:`infra.schema` brings a database to the program's schema version when it is opened
(versioned steps, one transaction). :func:`migrate` is the older additive helper (missing
tables, columns and indexes); tests and benchmarks use it on scratch databases.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import time
from pathlib import Path
from typing import Sequence

import peewee
from playhouse import db_url
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate as run_migrations

from infra.errors import InvalidInput, StorageFailure

log = logging.getLogger(__name__)


#: The type of an open database, for the use cases' signatures.
Database = peewee.Database


class BaseModel(peewee.Model):
    """Every table's model; bound to a database by :func:`bind`."""

    class Meta:
        legacy_table_names = False


#: How long (ms) an SQLite connection waits for another process's write lock before giving up.
BUSY_TIMEOUT_MS = 15_000


class SqliteDatabase(peewee.SqliteDatabase):
    """SQLite whose top-level transactions begin ``IMMEDIATE`` and whose lock time-outs read
    as one sentence.

    ``db.atomic()`` (and ``db.transaction()``) at the top level issues ``BEGIN IMMEDIATE``
    (peewee's ``lock_type``); nested blocks stay savepoints. Every use case writes inside
    ``db.atomic()``, so a writer waits for the lock up front, up to the busy timeout,
    rather than failing half-way. A "database is locked" raised by ``BEGIN``, by a statement
    in the block (also through a raw cursor), by ``COMMIT``, by a statement outside any
    transaction or while connecting becomes :class:`~infra.errors.StorageFailure`; the
    transaction is rolled back first. A read-only ``atomic()`` block takes the write lock
    too, so blocks that only read should not use one (readers never wait in WAL mode).
    """

    def __init__(self, database, **kwargs):
        kwargs.setdefault("lock_type", "IMMEDIATE")
        super().__init__(database, **kwargs)

    def transaction(self, *args, **kwargs):
        # _atomic calls this for a top-level block; nested blocks are savepoints inside it.
        return _BusyIsFailure(self, super().transaction(*args, **kwargs), args, kwargs)

    def execute_sql(self, *args, **kwargs):
        with busy_is_failure(self):
            return super().execute_sql(*args, **kwargs)

    def connect(self, *args, **kwargs):
        # Two processes opening a new file at once race to switch it to WAL, and SQLite
        # answers "locked" at once where waiting could deadlock: try again until the busy timeout.
        deadline = time.monotonic() + self.busy_timeout_ms() / 1000
        while True:
            try:
                return super().connect(*args, **kwargs)
            except peewee.OperationalError as exc:
                if not _is_locked(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise _busy(self) from exc
                time.sleep(0.05)

    def busy_timeout_ms(self) -> int:
        """The connection's busy timeout (a test may lower it with ``db.pragma``), else the configured one."""
        if not self.is_closed():
            with contextlib.suppress(Exception):
                return int(self.connection().execute("PRAGMA busy_timeout").fetchone()[0])
        return int(dict(self._pragmas).get("busy_timeout", BUSY_TIMEOUT_MS))


def _is_locked(exc: BaseException) -> bool:
    """SQLITE_BUSY ("database is locked"), raw from sqlite3 or wrapped by peewee."""
    return isinstance(exc, (sqlite3.OperationalError, peewee.OperationalError)) and "database is locked" in str(exc)


def _busy(db: SqliteDatabase) -> StorageFailure:
    seconds = f"{db.busy_timeout_ms() / 1000:g}"
    return StorageFailure(f"the database is busy: another process kept it locked for more than {seconds} s "
                          f"and nothing was changed; try again")


@contextlib.contextmanager
def busy_is_failure(db: SqliteDatabase):
    """Raise a lock time-out inside the block as :class:`StorageFailure`, one sentence."""
    try:
        yield
    except (sqlite3.OperationalError, peewee.OperationalError) as exc:
        if _is_locked(exc):
            raise _busy(db) from exc
        raise


class _BusyIsFailure:
    """A top-level transaction (peewee's ``_transaction``) whose lock time-outs are
    :class:`StorageFailure`; usable as a context manager or a decorator like the original."""

    def __init__(self, db: SqliteDatabase, txn, args: tuple, kwargs: dict):
        self.db, self.txn, self._args = db, txn, (args, kwargs)

    def __enter__(self):
        with busy_is_failure(self.db):  # BEGIN IMMEDIATE timed out: no transaction was opened
            return self.txn.__enter__()

    def __exit__(self, exc_type, exc_val, exc_tb):
        with busy_is_failure(self.db):  # COMMIT refused: peewee has rolled back
            handled = self.txn.__exit__(exc_type, exc_val, exc_tb)  # rolls back on an exception
        if exc_val is not None and _is_locked(exc_val):
            raise _busy(self.db) from exc_val
        return handled

    def __getattr__(self, name):  # commit(), rollback() of the transaction itself
        return getattr(self.txn, name)

    def __call__(self, fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with self.db.transaction(*self._args[0], **self._args[1]):
                return fn(*args, **kwargs)
        return inner


def open_database(url: str) -> peewee.Database:
    """Open ``sqlite:///path`` or ``postgresql://...`` (not yet connected, no models bound)."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteDatabase(
            str(path),
            timeout=BUSY_TIMEOUT_MS / 1000,  # the busy handler from the first statement (the pragmas below)
            pragmas={
                "busy_timeout": BUSY_TIMEOUT_MS,
                "journal_mode": "wal",
                "synchronous": "full",
                "foreign_keys": 1,
            },
        )
    if url.startswith(("postgres://", "postgresql://")):
        return db_url.connect(url)
    raise InvalidInput(
        f"database.url {url!r} is not supported; use sqlite:///path/to/file.db or "
        f"postgresql://user@host:port/database"
    )


def bind(db: peewee.Database, models: Sequence[type[peewee.Model]]) -> None:
    """Point ``models`` at ``db`` (the only place a model learns its database)."""
    db.bind(models, bind_refs=False, bind_backrefs=False)


def migrate(db: peewee.Database, models: Sequence[type[peewee.Model]]) -> list[str]:
    """Create what is missing (tables, columns, indexes); return what was done.

    Every process runs this when it opens the database. An up-to-date database is only
    looked at (no write lock, so a command does not wait for a running import); otherwise
    the tables and columns are brought up in one transaction (``IMMEDIATE`` on SQLite: one
    process migrates at a time and the next finds the work done). Missing indexes are then
    created with ``IF NOT EXISTS``, which takes no lock when they exist.
    """
    done = []
    if _tables_and_columns_present(db, models):
        for model in models:
            model._schema.create_indexes(safe=True)
        return done
    migrator = SqliteMigrator(db) if isinstance(db, peewee.SqliteDatabase) else PostgresqlMigrator(db)
    with db.atomic():
        existing = set(db.get_tables())
        for model in models:
            table = model._meta.table_name
            if table not in existing:
                model.create_table(safe=True)
                done.append(f"created table {table}")
                continue
            have = {c.name for c in db.get_columns(table)}
            for fld in model._meta.sorted_fields:
                if fld.column_name not in have:
                    if not fld.null and fld.default is None:
                        raise RuntimeError(
                            f"cannot add column {table}.{fld.column_name}: a new column must be "
                            f"nullable or have a default"
                        )
                    run_migrations(migrator.add_column(table, fld.column_name, fld))
                    done.append(f"added column {table}.{fld.column_name}")
            model._schema.create_indexes(safe=True)
    for line in done:
        log.info("database: %s", line)
    return done


def _tables_and_columns_present(db: peewee.Database, models: Sequence[type[peewee.Model]]) -> bool:
    existing = set(db.get_tables())
    for model in models:
        if model._meta.table_name not in existing:
            return False
        have = {c.name for c in db.get_columns(model._meta.table_name)}
        if any(f.column_name not in have for f in model._meta.sorted_fields):
            return False
    return True


def upsert_many(db: peewee.Database, model: type[peewee.Model], rows: list[dict], key: str,
                keep: tuple[str, ...] = ()) -> None:
    """INSERT ... ON CONFLICT (key) DO UPDATE for many rows with one prepared statement.

    Peewee builds SQL per row, which costs more than the database itself for bulk
    imports; this builds it once and hands the rows to ``executemany``. Columns named
    in ``keep``, and those the rows leave out (written with their defaults), are set on
    insert but left alone on update. Works on SQLite and PostgreSQL alike.
    """
    if not rows:
        return
    q = db.quote[0] + "{}" + db.quote[1]  # the database's identifier quotes
    # Columns the rows do not name are written with their defaults on insert only.
    defaults = {
        f.name: (f.default() if callable(f.default) else f.default)
        for f in model._meta.sorted_fields
        if f.name not in rows[0] and not f.primary_key
    }
    keep = tuple(keep) + tuple(defaults)
    rows = [{**row, **defaults} for row in rows]
    fields = [model._meta.fields[name] for name in rows[0]]
    columns = ", ".join(q.format(f.column_name) for f in fields)
    marks = ", ".join([db.param] * len(fields))
    updates = ", ".join(
        f"{q.format(f.column_name)} = EXCLUDED.{q.format(f.column_name)}"
        for f in fields if f.name != key and f.name not in keep
    )
    sql = (
        f"INSERT INTO {q.format(model._meta.table_name)} ({columns}) VALUES ({marks}) "
        f"ON CONFLICT ({q.format(model._meta.fields[key].column_name)}) DO UPDATE SET {updates}"
    )
    params = [tuple(f.db_value(row[f.name]) for f in fields) for row in rows]
    db.cursor().executemany(sql, params)


def batches(items: Sequence, size: int = 500):
    """``items`` in slices of ``size`` (for ``IN (...)`` lists and bulk writes)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def redacted(url: str) -> str:
    """The database URL without its password, for logs and messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}@{host}"
    return url
