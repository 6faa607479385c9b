"""The database: one peewee proxy shared by every model, opened from a URL.

SQLite (the default) runs in WAL mode with ``synchronous=FULL`` so that a row
committed before a C-STORE success status survives a power cut; PostgreSQL works the
same through a ``postgresql://`` URL. :func:`migrate` brings any existing database up
to the models: it creates missing tables, columns and indexes, so an upgrade never
needs the database wiped by hand. A column added later must be nullable or carry a
default.
"""

from __future__ import annotations

import logging
from pathlib import Path

import peewee
from playhouse import db_url
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate as run_migrations

log = logging.getLogger(__name__)

#: Every model binds to this proxy; :func:`open_database` points it at a real database.
database = peewee.DatabaseProxy()


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


def open_database(url: str) -> peewee.Database:
    """Open ``sqlite:///path`` or ``postgresql://...`` and bind every model to it."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        db = peewee.SqliteDatabase(
            str(path),
            pragmas={
                "journal_mode": "wal",
                "synchronous": "full",
                "foreign_keys": 1,
                "busy_timeout": 15000,
            },
        )
    elif url.startswith(("postgres://", "postgresql://")):
        db = db_url.connect(url)
    else:
        raise ValueError(
            f"database.url {url!r} is not supported; use sqlite:///path/to/file.db or "
            f"postgresql://user@host:port/database"
        )
    database.initialize(db)
    return db


def migrate(db: peewee.Database, models: list[type[peewee.Model]]) -> list[str]:
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
