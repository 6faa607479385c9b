"""The database, opened from a URL and passed down: SQLite by default, PostgreSQL by URL.

SQLite runs in WAL mode with ``synchronous=FULL`` so that a row committed before a
C-STORE success status survives a power cut; PostgreSQL works the same through a
``postgresql://`` URL.

There is no process-wide handle: :func:`open_database` returns the database, the
composition root (:mod:`gateway.app`) binds the models to it and hands it to every use
case, which opens its transactions with ``db.atomic()``. Peewee keeps the binding on the
model classes, so one process works on one database at a time.

:func:`migrate` brings any existing database up to the models: it creates missing
tables, columns and indexes, so an upgrade never needs the database wiped by hand. A
column added later must be nullable or carry a default.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import peewee
from playhouse import db_url
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate as run_migrations

from infra.errors import InvalidInput

log = logging.getLogger(__name__)


#: The type of an open database, for the use cases' signatures.
Database = peewee.Database


class BaseModel(peewee.Model):
    """Every table's model; bound to a database by :func:`bind`."""

    class Meta:
        legacy_table_names = False


def open_database(url: str) -> peewee.Database:
    """Open ``sqlite:///path`` or ``postgresql://...`` (not yet connected, no models bound)."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return peewee.SqliteDatabase(
            str(path),
            pragmas={
                "journal_mode": "wal",
                "synchronous": "full",
                "foreign_keys": 1,
                "busy_timeout": 15000,
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
    """Create what is missing (tables, columns, indexes); return what was done."""
    done = []
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
