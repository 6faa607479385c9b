"""Backup and restore of one gateway: its database and the files of its storage root.

A backup is a folder::

    database.sqlite  or  database.pgdump     the database (SQLite file, or pg_dump --format=custom)
    store/archive/...  store/held/...  store/rejected/...   the stored instances, same paths as the root
    manifest.json                            written last: no manifest, no backup

:func:`backup` takes the database first, then the files, and copies only the files that
the database copy indexes (its ``instances`` table), each to the path that copy gives it.
So a restored gateway has a file for every instance its database knows and no file it
does not know, as of the moment of the database copy: what the server receives later is
in the next backup. While the server runs, a study may change between the two steps: a
file found in another tree than the copy says (released, rejected meanwhile) is copied
to the path the copy says (the restored gateway finishes such moves at its start); a
file gone from every tree (purged meanwhile) is listed under ``missing``; a file whose
content is no longer the one indexed (received again, corrected meanwhile) is copied as
it is now and listed under ``changed``. Neither stops the backup.

* SQLite: the online backup API (:meth:`sqlite3.Connection.backup`, one step, so one read
  transaction: consistent while other processes write), then the copy is switched out
  of WAL into one self-contained file and checked (``PRAGMA quick_check``).
* PostgreSQL: a REPEATABLE READ transaction exports its snapshot, reads the instance
  list and keeps the snapshot open while ``pg_dump --snapshot`` dumps exactly that state.

:func:`restore` fills an empty gateway (no row in any table, no file in the trees, no
process running on it): it verifies every checksum of the manifest before it writes
anything (:func:`verify`), copies the files into the storage root, then puts the
database in place last (SQLite: a verified copy renamed over the database file;
PostgreSQL: ``pg_restore --single-transaction``). When a step fails, the files it wrote
are removed again and the gateway is left empty as it was.

Copies are always real copies (never hard links: a backup must survive the disk), streamed
in 1 MiB chunks, hashed (SHA-256) as they go, fsynced, created readable by the owner only.
A database password is never printed nor put on a command line: the PostgreSQL tools get
it through ``PGPASSWORD``. This module reads the store's ``instances`` table by name
(``path``, ``size``, ``sha256``: :class:`store.models.InstanceRow`), as infra/ may not
import store/.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

from infra.db import redacted
from infra.durable import fsync_dir, fsync_file
from infra.errors import GatekeeperError, InvalidInput, OutOfResources, Refused, StorageFailure
from infra.schema import SCHEMA_VERSION, VERSION_TABLE

#: Version of the backup folder's layout, written in the manifest.
FORMAT = 1
MANIFEST = "manifest.json"
STORE = "store"
SQLITE = "sqlite"
POSTGRESQL = "postgresql"
#: The database file of a backup, by kind of database.
DATABASE_FILE = {SQLITE: "database.sqlite", POSTGRESQL: "database.pgdump"}
#: The trees of the storage root that are backed up (not incoming/: temporary files; not .locks/).
TREES = ("archive", "held", "rejected")
INCOMING = "incoming"
LOCK_SUFFIX = ".lock"
CHUNK_SIZE = 1024 * 1024
#: Room kept free on the target volume beyond what the copies need.
SPARE_BYTES = 16 * 1024 * 1024
PACKAGE = "imaging-gatekeeper"


class DamagedBackup(Refused):
    """A file of the backup is missing or differs from its checksum in the manifest."""


class NotEmpty(Refused):
    """The gateway to restore into holds data, or a process is running on it."""


@dataclass(frozen=True)
class FileEntry:
    """One copied file: its path (relative to the storage root, or to the backup for the database), size, SHA-256."""

    path: str
    size: int
    sha256: str

    def as_json(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """What a backup holds (``manifest.json``)."""

    gatekeeper_version: str
    created_at: dt.datetime
    database_kind: str  # SQLITE or POSTGRESQL
    database: FileEntry  # the database file, relative to the backup folder
    files: tuple[FileEntry, ...]  # relative to the storage root (under store/ in the backup)
    #: Indexed by the database copy but gone from every tree before they could be copied.
    missing: tuple[str, ...] = ()
    #: Copied with another content than the database copy indexes (replaced meanwhile).
    changed: tuple[str, ...] = ()
    #: The database's schema version (:mod:`infra.schema`); None when it records none (0.1.0).
    schema_version: int | None = None
    source_database: str = ""  # redacted URL, for the person reading the manifest
    source_storage_root: str = ""

    @property
    def files_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def as_json(self) -> dict:
        return {
            "format": FORMAT,
            "gatekeeper_version": self.gatekeeper_version,
            "created_at": self.created_at.isoformat(),
            "database": {"kind": self.database_kind, "schema_version": self.schema_version,
                         **self.database.as_json()},
            "source": {"database": self.source_database, "storage_root": self.source_storage_root},
            "files": [f.as_json() for f in self.files],
            "missing": list(self.missing),
            "changed": list(self.changed),
        }

    @classmethod
    def from_json(cls, data: object, where: Path) -> "Manifest":
        """The manifest of ``data`` (parsed JSON); :class:`InvalidInput` naming what is wrong."""
        def bad(what: str) -> InvalidInput:
            return InvalidInput(f"{where} is not a gatekeeper backup manifest: {what}")

        if not isinstance(data, dict):
            raise bad("it is not a JSON object")
        if data.get("format") != FORMAT:
            raise bad(f"format {data.get('format')!r}, this gatekeeper reads format {FORMAT}")
        try:
            created_at = dt.datetime.fromisoformat(data["created_at"])
            db = data["database"]
            kind = db["kind"]
            if kind not in DATABASE_FILE or db["path"] != DATABASE_FILE[kind]:
                raise bad(f"database {kind!r} in {db['path']!r}")
            database = _entry(db)
            schema_version = db.get("schema_version")
            if schema_version is not None and not isinstance(schema_version, int):
                raise bad(f"schema_version {schema_version!r}")
            files = tuple(_entry(f) for f in data["files"])
            missing = tuple(str(p) for p in data.get("missing", ()))
            changed = tuple(str(p) for p in data.get("changed", ()))
            source = data.get("source") or {}
        except InvalidInput:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"a field is missing or has the wrong type ({exc!r})") from None
        seen = set()
        for f in files:
            if _store_path(f.path) is None:
                raise bad(f"file path {f.path!r} is not inside {', '.join(TREES)}")
            if f.path in seen:
                raise bad(f"file {f.path} is listed twice")
            seen.add(f.path)
        return cls(gatekeeper_version=str(data.get("gatekeeper_version", "")), created_at=created_at,
                   database_kind=kind, database=database, files=files, missing=missing, changed=changed,
                   schema_version=schema_version,
                   source_database=str(source.get("database", "")),
                   source_storage_root=str(source.get("storage_root", "")))


#: What to do when the database cannot be reached or read (appended to such errors).
_SQLITE_ADVICE = " Check database.url and that the database file is readable, then try again."
_PG_ADVICE = " Check database.url and that the PostgreSQL server runs and lets this user in, then try again."

def _entry(data: dict) -> FileEntry:
    path, size, digest = data["path"], data["size"], data["sha256"]
    if not isinstance(path, str) or not isinstance(size, int) or size < 0 or not isinstance(digest, str) \
            or len(digest) != 64:
        raise ValueError(f"bad file entry {data!r}")
    return FileEntry(path, size, digest.lower())


# ------------------------------------------------------------------------------ backup


def backup(db_url: str, storage_root: str | os.PathLike[str], dest: str | os.PathLike[str],
           now: dt.datetime) -> Manifest:
    """Back up the database at ``db_url`` and the files of ``storage_root`` into the new or empty folder ``dest``.

    The database first, then the files it indexes, then ``manifest.json``. Raises
    :class:`InvalidInput` (``dest`` is a file or inside the storage root, unsupported
    URL), :class:`Refused` (``dest`` is not empty), :class:`OutOfResources` or
    :class:`StorageFailure`. A backup that fails after writing something leaves ``dest``
    without a manifest (incomplete, and said so); a folder it made and left empty is removed.
    """
    kind = database_kind(db_url)
    root, dest = Path(storage_root), Path(dest)
    if dest.resolve().is_relative_to(root.resolve()):
        raise InvalidInput(f"{dest} is inside the storage root {root}; write the backup elsewhere, best on "
                           f"another disk")
    created = not dest.exists()
    _prepare_dest(dest)
    try:
        if kind == SQLITE:
            database, version, indexed = _dump_sqlite(sqlite_path(db_url), dest / DATABASE_FILE[SQLITE])
        else:
            database, version, indexed = _dump_postgresql(db_url, dest / DATABASE_FILE[POSTGRESQL])
        _check_room(dest, sum(size for _, size, _ in indexed), "the backup")
        files, missing, changed = _copy_indexed(root, dest / STORE, indexed)
        manifest = Manifest(
            gatekeeper_version=gatekeeper_version(), created_at=now, database_kind=kind, database=database,
            files=tuple(files), missing=tuple(missing), changed=tuple(changed), schema_version=version,
            source_database=redacted(db_url), source_storage_root=str(root),
        )
        _write_manifest(dest, manifest)
    except OSError as exc:
        raise _os_error(exc, f"could not write the backup in {dest}. {_left_behind(dest, created)}") from exc
    except GatekeeperError as exc:
        raise type(exc)(f"{exc} {_left_behind(dest, created)}") from exc
    return manifest


def _left_behind(dest: Path, created: bool) -> str:
    """What a failed backup leaves in ``dest``, in words (an untouched folder it made is removed)."""
    try:
        if not any(dest.iterdir()):
            if created:
                dest.rmdir()
            return "Nothing was written."
    except OSError:
        pass
    return f"The backup in {dest} is incomplete (no {MANIFEST}): delete it."


def on_same_disk(dest: str | os.PathLike[str], storage_root: str | os.PathLike[str]) -> bool:
    """Whether ``dest`` is on the file system of ``storage_root`` (a backup there dies with the disk)."""
    try:
        return os.stat(dest).st_dev == os.stat(storage_root).st_dev
    except OSError:
        return False


def gatekeeper_version() -> str:
    """The installed gatekeeper's version (from its package metadata)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def database_kind(db_url: str) -> str:
    if db_url.startswith("sqlite:///"):
        return SQLITE
    if db_url.startswith(("postgres://", "postgresql://")):
        return POSTGRESQL
    raise InvalidInput(f"database.url {redacted(db_url)!r} is not supported; use sqlite:///path/to/file.db or "
                       f"postgresql://user@host:port/database")


def sqlite_path(db_url: str) -> Path:
    return Path(db_url[len("sqlite:///"):])


def _prepare_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise InvalidInput(f"{dest} is a file; give a new or empty folder for the backup")
    if dest.is_dir() and any(dest.iterdir()):
        raise Refused(f"{dest} is not empty; give a new or empty folder for the backup")
    try:
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, f"could not create the backup folder {dest}") from exc


def _dump_sqlite(source: Path, target: Path) -> tuple[FileEntry, int | None, list[tuple[str, int, str]]]:
    """Copy the database with SQLite's online backup API; (its entry, schema version, the instances it indexes)."""
    if not source.is_file():
        raise InvalidInput(f"the database file {source} does not exist; check database.url")
    try:
        src = sqlite3.connect(source, timeout=15)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)  # one step: one read transaction, a consistent copy while others write
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
                check = dst.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise StorageFailure(f"the copy of the database {source} fails SQLite's check ({check}); "
                                         f"the database itself may be damaged.")
                version, indexed = _indexed_sqlite(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise StorageFailure(f"could not copy the database {source}: {exc}. Check that DEST has room and that the "
                             "database file is readable, then try again.") from exc
    os.chmod(target, 0o600)
    fsync_file(target)
    size, digest = file_digest(target)
    return FileEntry(target.name, size, digest), version, indexed


def _indexed_sqlite(conn: sqlite3.Connection) -> tuple[int | None, list[tuple[str, int, str]]]:
    """(schema version, the instances' path, size and SHA-256) of the database copy."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    version = None
    if VERSION_TABLE in tables:
        row = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
        version = None if row is None else int(row[0])
    if "instances" not in tables:
        return version, []
    return version, [tuple(r) for r in conn.execute("SELECT path, size, sha256 FROM instances ORDER BY path")]


def _dump_postgresql(url: str, target: Path) -> tuple[FileEntry, int | None, list[tuple[str, int, str]]]:
    """``pg_dump`` of the snapshot in which the instance list was read; (its entry, schema version, the instances)."""
    tool = _pg_tool("pg_dump")
    import psycopg2

    try:
        conn = psycopg2.connect(url, connect_timeout=10)
    except psycopg2.Error as exc:
        raise StorageFailure(f"could not connect to {redacted(url)}: {_scrub(str(exc), url)}.{_PG_ADVICE}") from None
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
            version, indexed = None, []
            cur.execute(f"SELECT to_regclass('{VERSION_TABLE}')")
            if cur.fetchone()[0] is not None:
                cur.execute(f"SELECT version FROM {VERSION_TABLE}")
                row = cur.fetchone()
                version = None if row is None else int(row[0])
            cur.execute("SELECT to_regclass('instances')")
            if cur.fetchone()[0] is not None:
                cur.execute("SELECT path, size, sha256 FROM instances ORDER BY path")
                indexed = [tuple(r) for r in cur.fetchall()]
        # The transaction stays open (and with it the snapshot) until pg_dump is done.
        _run_pg([tool, "--format=custom", f"--snapshot={snapshot}", "--no-password", f"--file={target}"], url)
    except psycopg2.Error as exc:
        raise StorageFailure(f"could not read the database {redacted(url)}: {_scrub(str(exc), url)}.{_PG_ADVICE}") from None
    finally:
        conn.close()
    os.chmod(target, 0o600)
    fsync_file(target)
    size, digest = file_digest(target)
    return FileEntry(target.name, size, digest), version, indexed


def _copy_indexed(root: Path, store: Path, indexed: Iterable[tuple[str, int, str]]
                  ) -> tuple[list[FileEntry], list[str], list[str]]:
    files, missing, changed = [], [], []
    made: set[Path] = set()
    for path, _size, digest in indexed:
        relative = _store_path(path)
        copied = None
        if relative is not None:
            for _attempt in range(2):  # a study moved between two looks is looked for once more
                source = _locate(root, relative)
                if source is None:
                    continue
                try:
                    copied = _copy_file(source, store / relative, made=made)
                    break
                except FileNotFoundError as exc:
                    if exc.filename not in (source, str(source)):
                        raise  # not the source vanishing: a failure of the backup's own folder
        if copied is None:
            missing.append(path)
            continue
        size, copied_digest = copied
        files.append(FileEntry(path, size, copied_digest))
        if copied_digest != digest:
            changed.append(path)
    _fsync_dirs(made)
    return files, missing, changed


def _locate(root: Path, relative: PurePosixPath) -> Path | None:
    """The file at ``relative``, else the same instance's file in another tree, else None."""
    tail = PurePosixPath(*relative.parts[1:])
    for tree in (relative.parts[0], *(t for t in TREES if t != relative.parts[0])):
        candidate = root / tree / tail
        if candidate.is_file():
            return candidate
    return None


def _write_manifest(dest: Path, manifest: Manifest) -> None:
    temp = dest / (MANIFEST + ".part")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(manifest.as_json(), f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, dest / MANIFEST)
    fsync_dir(dest)


# ------------------------------------------------------------------------------ verify


def read_manifest(src: str | os.PathLike[str]) -> Manifest:
    """The manifest of the backup in ``src``; :class:`InvalidInput` when there is none or it is malformed."""
    src = Path(src)
    if not src.is_dir():
        raise InvalidInput(f"{src} is not a folder; give the folder a backup was written into")
    path = src / MANIFEST
    if not path.is_file():
        raise InvalidInput(f"{src} holds no {MANIFEST}: it is not a gatekeeper backup, or an incomplete one "
                           f"(a backup writes its manifest last)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{path} cannot be read as JSON ({exc})") from None
    return Manifest.from_json(data, path)


def verify(src: str | os.PathLike[str]) -> Manifest:
    """Check every file of the backup in ``src`` against its size and SHA-256 in the manifest.

    Raises :class:`DamagedBackup` naming the first file that is missing or differs.
    """
    src = Path(src)
    manifest = read_manifest(src)
    for name, entry in [(manifest.database.path, manifest.database),
                        *((f"{STORE}/{f.path}", f) for f in manifest.files)]:
        path = src / name
        try:
            size, digest = file_digest(path)
        except FileNotFoundError:
            raise DamagedBackup(f"the backup in {src} is damaged: {name} is missing. "
                                f"Restore from another backup.") from None
        except OSError as exc:
            raise DamagedBackup(f"the backup in {src} is damaged: {name} cannot be read ({exc.strerror}). "
                                f"Restore from another backup.") from None
        if (size, digest) != (entry.size, entry.sha256):
            raise DamagedBackup(f"the backup in {src} is damaged: {name} differs from its SHA-256 in "
                                f"{MANIFEST}. Restore from another backup.")
    return manifest


# ------------------------------------------------------------------------------ restore


def restore(src: str | os.PathLike[str], db_url: str, storage_root: str | os.PathLike[str]) -> Manifest:
    """Fill the empty gateway (``db_url``, ``storage_root``) from the backup in ``src``.

    Nothing is written before every checksum is verified and the gateway is found empty
    and not running. Files first, the database last; on a failure the files written are
    removed again. The caller must have closed its own connection to the database.
    Raises :class:`InvalidInput` (not a backup, another kind of database),
    :class:`DamagedBackup`, :class:`NotEmpty`, :class:`OutOfResources`, :class:`StorageFailure`.
    """
    src, root = Path(src), Path(storage_root)
    manifest = verify(src)
    kind = database_kind(db_url)
    if manifest.database_kind != kind:
        raise InvalidInput(f"the backup in {src} holds a {manifest.database_kind} database and this gateway's "
                           f"database.url is {kind} ({redacted(db_url)}); restore into a gateway with a "
                           f"{manifest.database_kind} database")
    if (manifest.schema_version or 0) > SCHEMA_VERSION:
        raise Refused(f"the backup in {src} holds a database at schema version {manifest.schema_version} (written "
                      f"by gatekeeper {manifest.gatekeeper_version}) and this gatekeeper knows versions up to "
                      f"{SCHEMA_VERSION}; restore it with that release or a later one")
    _refuse_if_running(root)
    _refuse_if_database_not_empty(db_url, kind)
    _refuse_if_store_not_empty(root)
    _check_room(root, manifest.files_bytes, "the restore")
    if kind == SQLITE:
        target = sqlite_path(db_url)
        target.parent.mkdir(parents=True, exist_ok=True)
        _check_room(target.parent, manifest.database.size, "the restore")
        _leave_wal(target)
    written: list[Path] = []
    made: set[Path] = set()
    try:
        for tree in TREES:
            _make_dirs(root / tree, made)
        for entry in manifest.files:
            final = root / entry.path
            _copy_file(src / STORE / entry.path, final, made=made, expect=entry)
            written.append(final)
        _fsync_dirs(made)
        if kind == SQLITE:
            _restore_sqlite(src / manifest.database.path, sqlite_path(db_url), manifest.database)
        else:
            _restore_postgresql(src / manifest.database.path, db_url)
    except BaseException as exc:
        _undo(written, made)
        if isinstance(exc, OSError):
            raise _os_error(exc, f"could not restore into {root}; nothing was kept") from exc
        raise
    return manifest


def _refuse_if_running(root: Path) -> None:
    """Refuse when a gatekeeper process holds its folder in ``incoming/`` (a server runs on this root)."""
    incoming = root / INCOMING
    if not incoming.is_dir():
        return
    for lock in sorted(incoming.glob("*" + LOCK_SUFFIX)):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NotEmpty(f"a gatekeeper process is running on the storage root {root} (it holds "
                           f"{INCOMING}/{lock.name}); stop it before restoring") from None
        finally:
            os.close(fd)


def _refuse_if_database_not_empty(db_url: str, kind: str) -> None:
    """Refuse when a table has a row; the schema's version row alone does not count (a new gateway has it)."""
    table = _sqlite_table_with_rows(sqlite_path(db_url)) if kind == SQLITE else _pg_table_with_rows(db_url)
    if table:
        raise NotEmpty(f"this gateway is not empty: table {table} of its database {redacted(db_url)} has rows; "
                       f"restore only into a new gateway (new database, empty storage root)")


def _sqlite_table_with_rows(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(path, timeout=5)
        try:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
                if r[0] != VERSION_TABLE]
            for table in tables:
                if conn.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone() is not None:
                    return table
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageFailure(f"could not read the database {path}: {exc}.{_SQLITE_ADVICE}") from exc
    return None


def _pg_table_with_rows(url: str) -> str | None:
    import psycopg2
    from psycopg2 import sql

    try:
        conn = psycopg2.connect(url, connect_timeout=10)
    except psycopg2.Error as exc:
        raise StorageFailure(f"could not connect to {redacted(url)}: {_scrub(str(exc), url)}.{_PG_ADVICE}") from None
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()")
            others = cur.fetchone()[0]
            if others:
                raise NotEmpty(f"{others} other session(s) are connected to the database {redacted(url)}; stop "
                               f"the gatekeeper processes (and other clients) using it before restoring")
            cur.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = "
                        "'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') "
                        "ORDER BY table_schema, table_name")
            for schema, table in cur.fetchall():
                if (schema, table) == ("public", VERSION_TABLE):
                    continue
                cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.{})").format(
                    sql.Identifier(schema), sql.Identifier(table)))
                if cur.fetchone()[0]:
                    return table if schema == "public" else f"{schema}.{table}"
    except psycopg2.Error as exc:
        raise StorageFailure(f"could not read the database {redacted(url)}: {_scrub(str(exc), url)}.{_PG_ADVICE}") from None
    finally:
        conn.close()
    return None


def _refuse_if_store_not_empty(root: Path) -> None:
    for tree in TREES:
        folder = root / tree
        if not folder.is_dir():
            continue
        for dirpath, _dirs, names in os.walk(folder):
            if names:
                found = (Path(dirpath) / sorted(names)[0]).relative_to(root)
                raise NotEmpty(f"this gateway is not empty: its storage root {root} holds {found}; restore only "
                               f"into a new gateway (new database, empty storage root)")


def _leave_wal(path: Path) -> None:
    """Switch the (empty) target database out of WAL mode, so no ``-wal`` file outlives it.

    SQLite allows that only to the one connection open: another process using the
    database makes it fail, and the restore is refused before anything is written.
    """
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(path, timeout=2)
        try:
            mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise NotEmpty(f"another process has the database {path} open; stop it before restoring") from None
        raise StorageFailure(f"could not open the database {path}: {exc}.{_SQLITE_ADVICE}") from exc
    if mode != "delete":
        raise NotEmpty(f"another process has the database {path} open; stop it before restoring")
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _restore_sqlite(backup_file: Path, target: Path, entry: FileEntry) -> None:
    """Copy the verified database file next to ``target``, then rename it over ``target``."""
    temp = target.with_name(target.name + ".restoring")
    temp.unlink(missing_ok=True)
    try:
        _copy_file(backup_file, temp, expect=entry)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def _restore_postgresql(dump: Path, url: str) -> None:
    """``pg_restore`` in one transaction: the (empty) tables are replaced, or nothing changes."""
    tool = _pg_tool("pg_restore")
    _run_pg([tool, "--clean", "--if-exists", "--no-owner", "--no-acl", "--single-transaction",
             "--no-password", str(dump)], url)


def _undo(written: list[Path], made: set[Path]) -> None:
    for path in written:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass


# ------------------------------------------------------------------------------ files


def file_digest(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of the file at ``path``, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _copy_file(source: Path, target: Path, made: set[Path] | None = None,
               expect: FileEntry | None = None) -> tuple[int, str]:
    """Copy ``source`` to the new file ``target`` (owner-only, fsynced, mtime kept); (size, SHA-256).

    The source is opened first: a source that vanished raises FileNotFoundError before
    anything is created. With ``expect``, a copy of other content is removed and raises
    :class:`DamagedBackup`.
    """
    with open(source, "rb") as src:
        _make_dirs(target.parent, made)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        digest, size = hashlib.sha256(), 0
        try:
            with open(fd, "wb") as dst:
                while chunk := src.read(CHUNK_SIZE):
                    dst.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            stat = os.fstat(src.fileno())
            os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            if expect is not None and (size, digest.hexdigest()) != (expect.size, expect.sha256):
                raise DamagedBackup(f"{source} changed while it was restored (it differs from its SHA-256 in "
                                    f"{MANIFEST}); nothing was kept")
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    return size, digest.hexdigest()


def _make_dirs(folder: Path, made: set[Path] | None) -> None:
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        if made is not None:
            made.add(path)


def _store_path(path: str) -> PurePosixPath | None:
    """``path`` as a relative path inside one of the trees, or None when it is not one."""
    p = PurePosixPath(path)
    if p.is_absolute() or len(p.parts) < 2 or p.parts[0] not in TREES or any(
            part in ("", ".", "..") for part in p.parts) or "\\" in path or "\0" in path:
        return None
    return p


def _check_room(folder: Path, needed: int, what: str) -> None:
    while not folder.exists() and folder.parent != folder:  # a folder still to be made: its volume
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return
    free = stats.f_bavail * stats.f_frsize
    if free < needed + SPARE_BYTES:
        raise OutOfResources(f"{folder} has {free // 2**20} MiB free and {what} needs {needed // 2**20 + 1} MiB "
                             f"(and {SPARE_BYTES // 2**20} MiB to spare); nothing more was written.")


def _fsync_dirs(made: set[Path]) -> None:
    """Make the files in the folders ``made`` and the folders themselves durable (deepest first)."""
    for folder in sorted(made | {p.parent for p in made}, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)


def _os_error(exc: OSError, what: str) -> OutOfResources | StorageFailure:
    cls = OutOfResources if exc.errno in (errno.ENOSPC, errno.EDQUOT) else StorageFailure
    return cls(f"{what} ({exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}).")


# ------------------------------------------------------------------------------ PostgreSQL tools


def _pg_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StorageFailure(f"{name} is not installed: install the PostgreSQL client tools of the server's major "
                             f"version (Debian: postgresql-client) and try again.")
    return path


def _libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment that gives the password (PGPASSWORD)."""
    env = dict(os.environ)
    parts = urlsplit(url)
    if parts.password is None:
        return url, env
    env["PGPASSWORD"] = unquote(parts.password)
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}@{host}")), env


def _run_pg(argv: list[str], url: str) -> None:
    target, env = _libpq_target(url)
    argv = [*argv[:1], f"--dbname={target}", *argv[1:]]
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except OSError as exc:
        raise StorageFailure(f"could not run {Path(argv[0]).name}: {exc.strerror}. Check that the PostgreSQL client "
                             "tools are installed and executable (Debian: postgresql-client).") from None
    if done.returncode != 0:
        lines = [line for line in _scrub(done.stderr, url).splitlines() if line.strip()]
        why = "; ".join(lines[:3]) or f"exit status {done.returncode}"
        raise StorageFailure(f"{Path(argv[0]).name} failed on {redacted(url)}: {why}. Fix what it names and run "
                         "the command again.")


def _scrub(text: str, url: str) -> str:
    """``text`` without the URL's password, should a tool or driver repeat it."""
    password = urlsplit(url).password
    if password:
        text = text.replace(unquote(password), "***").replace(password, "***")
    return " ".join(text.split())  # libpq's messages span lines; the command line prints one
