"""``gatekeeper backup DEST`` and ``gatekeeper restore SRC`` (infra/backup.py), on SQLite and PostgreSQL.

A source gateway gets the example orders and auths and a few studies (archived, held,
rejected); it is backed up, and the backup restored into a new gateway with its own
settings, which must then serve the same worklist, list the same studies and hold
byte-identical files. Also: a damaged backup and a non-empty gateway are refused before
anything is written, a failed restore leaves the gateway empty, and a backup taken while
the server receives is complete and consistent.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from gateway.app import open_app
from gateway.cli.main import main
from gateway.settings import load
from infra import backup as backups
from infra.errors import StorageFailure
from tests.conftest import EXAMPLE_NOW, EXAMPLES, Clock, write_settings
from tests.dicom_factory import make_instance, write_instance

NOW_ENV = "2026-11-30T08:00:00"
TREES = ("archive", "held", "rejected")


@pytest.fixture
def gk(capsys, monkeypatch):
    """The ``gatekeeper`` command in process for the gateway of a settings file: (exit code, stdout, stderr)."""
    monkeypatch.setenv("GATEKEEPER_NOW", NOW_ENV)
    monkeypatch.delenv("GATEKEEPER_DATABASE_URL", raising=False)

    def call(settings: Path, *args):
        code = main(["--config", str(settings), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def gateway(folder: Path, database_url: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_settings(folder, database_url=database_url)


def instance(**overrides):
    """An instance of ACC1001 (the examples' MRI brain) taken on its scheduled day; keyword overrides."""
    return make_instance(**{"StudyDate": "20261201", **overrides})


def populate(gk, settings: Path, tmp_path: Path) -> dict[str, str]:
    """The examples, an archived study of ACC1001 (two instances), a held one and a rejected one."""
    assert gk(settings, "orders", "import", str(EXAMPLES / "orders.json"))[0] == 0
    assert gk(settings, "auths", "import", str(EXAMPLES / "auths.json"))[0] == 0
    app = open_app(load(settings, environ={}), clock=Clock(EXAMPLE_NOW))
    try:
        studies = {}
        archived = instance()  # ACC1001's patient; its own Study UID only warns
        second = instance(StudyInstanceUID=archived.StudyInstanceUID, SeriesInstanceUID=archived.SeriesInstanceUID,
                          InstanceNumber="2")
        for n, ds in enumerate([archived, second]):
            received = app.store.receive(write_instance(tmp_path / "sent" / f"a{n}.dcm", ds), "MR1")
            assert received.state == "archived", received
        studies["archived"] = archived.StudyInstanceUID
        held = instance(PatientID="MRN9999")
        assert app.store.receive(write_instance(tmp_path / "sent" / "h.dcm", held), "MR1").state == "held"
        studies["held"] = held.StudyInstanceUID
        rejected = instance(AccessionNumber="ACC404")
        assert app.store.receive(write_instance(tmp_path / "sent" / "r.dcm", rejected), "MR1").state == "held"
        app.store.reject(rejected.StudyInstanceUID, user="tech", reason="wrong patient")
        studies["rejected"] = rejected.StudyInstanceUID
    finally:
        app.close()
    return studies


def stored_files(settings: Path) -> dict[str, bytes]:
    root = load(settings, environ={}).storage_root
    return {str(p.relative_to(root)): p.read_bytes() for tree in TREES for p in sorted((root / tree).rglob("*"))
            if p.is_file()}


def views(gk, settings: Path, held_study: str) -> dict[str, object]:
    """What the gateway serves and lists, as its command line prints it."""
    seen = {}
    for name, args in {
        "worklist": ("worklist", "--date", "2026-12-01", "--json"),
        "held": ("held", "list", "--json"),
        "held_show": ("held", "show", held_study, "--json"),
        "studies": ("studies", "list", "--json"),
        "report": ("report", "--since", "2026-11-01", "--json"),
    }.items():
        code, out, err = gk(settings, *args)
        assert code == 0, err
        seen[name] = json.loads(out)
    return seen


def is_empty(settings: Path) -> bool:
    s = load(settings, environ={})
    if any(stored_files(settings)):
        return False
    if s.database_url.startswith("sqlite:///"):
        path = Path(s.database_url[len("sqlite:///"):])
        if not path.exists():
            return True
        with sqlite3.connect(path) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                 "AND name NOT LIKE 'sqlite_%' AND name != 'schema_version'")]
            return all(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] == 0 for t in tables)
    import psycopg2

    with psycopg2.connect(s.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('orders')")
        if cur.fetchone()[0] is None:
            return True
        cur.execute("SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM instances)")
        empty = cur.fetchone()[0] == 0
    conn.close()
    return empty


def round_trip(gk, tmp_path, source_url=None, target_url=None, open_target_first=False):
    source = gateway(tmp_path / "source", source_url)
    studies = populate(gk, source, tmp_path)
    dest = tmp_path / "backup"
    code, out, err = gk(source, "backup", str(dest))
    assert code == 0, err
    assert "Backup written" in out and "gatekeeper:" not in err
    assert "same file system" in out  # tmp_path is one disk
    target = gateway(tmp_path / "target", target_url)
    if open_target_first:  # a gateway started once has its (empty) tables
        assert gk(target, "worklist", "--date", "2026-12-01")[0] == 0
    code, out, err = gk(target, "restore", str(dest))
    assert code == 0, err
    assert "Restored" in out and "4 files" in out
    return source, target, dest, studies


def check_same(gk, source, target, dest, studies):
    manifest = json.loads((dest / "manifest.json").read_text())
    files = stored_files(source)
    assert sorted(f["path"] for f in manifest["files"]) == sorted(files)  # every indexed file, nothing else
    assert {p.split("/")[0] for p in files} == set(TREES)
    assert stored_files(target) == files  # byte-identical, same paths
    before, after = views(gk, source, studies["held"]), views(gk, target, studies["held"])
    assert after == before
    assert [o["served"] for o in after["worklist"]["orders"]] == [True, False, True]
    assert [h["study_instance_uid"] for h in after["held"]["held"]] == [studies["held"]]
    assert [s["study_instance_uid"] for s in after["studies"]["studies"]] == [studies["archived"]]


# --------------------------------------------------------------------------- round trips


def test_backup_and_restore_on_sqlite(gk, tmp_path):
    source, target, dest, studies = round_trip(gk, tmp_path)
    check_same(gk, source, target, dest, studies)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["database"]["kind"] == "sqlite" and manifest["database"]["path"] == "database.sqlite"
    assert manifest["created_at"] == NOW_ENV and manifest["missing"] == [] and manifest["changed"] == []
    assert manifest["database"]["schema_version"] >= 1
    assert sorted(p.name for p in dest.iterdir()) == ["database.sqlite", "manifest.json", "store"]  # no -wal
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in dest.rglob("*") if p.is_file())
    with sqlite3.connect(dest / "database.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    # The restored gateway works on: its held study can be released into archive/.
    assert gk(target, "held", "release", studies["held"], "--user", "t", "--reason", "ok")[0] == 0
    assert (load(target, environ={}).storage_root / "archive" / studies["held"]).is_dir()


def _pg_database(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _psql(admin_url: str, sql: str) -> None:
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", admin_url, "-c", sql], check=True, timeout=60,
                   capture_output=True)


@pytest.fixture
def pg_pair(pg_url):
    """Two new databases on the test server, the source and the target; dropped afterwards.

    Needs PostgreSQL's client tools (Debian: postgresql-client): skipped locally without
    them, a failure under CI like the rest of the PostgreSQL suite.
    """
    absent = [tool for tool in ("psql", "pg_dump", "pg_restore") if shutil.which(tool) is None]
    if absent:
        why = f"{', '.join(absent)} not installed (Debian package postgresql-client)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; under CI the PostgreSQL suite must run")
        pytest.skip(why)
    names = ("gk_backup_test", "gk_restore_test")
    for name in names:
        _psql(pg_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        _psql(pg_url, f"CREATE DATABASE {name}")
    yield tuple(_pg_database(pg_url, n) for n in names)
    for name in names:
        _psql(pg_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.postgres
def test_backup_and_restore_on_postgresql(gk, tmp_path, pg_pair):
    source_url, target_url = pg_pair
    source, target, dest, studies = round_trip(gk, tmp_path, source_url, target_url, open_target_first=True)
    check_same(gk, source, target, dest, studies)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["database"]["kind"] == "postgresql" and (dest / "database.pgdump").is_file()
    assert (dest / "database.pgdump").read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    # The audit log is append-only in the restored database too (its trigger came along).
    import psycopg2

    conn = psycopg2.connect(target_url)
    try:
        with pytest.raises(psycopg2.Error, match="append-only"), conn.cursor() as cur:
            cur.execute("DELETE FROM audit_log")
    finally:
        conn.close()
    # A second restore into the now filled database is refused.
    code, _, err = gk(target, "restore", str(dest))
    assert code == 1 and "not empty" in err


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def backed_up(gk, tmp_path):
    source = gateway(tmp_path / "source")
    studies = populate(gk, source, tmp_path)
    dest = tmp_path / "backup"
    assert gk(source, "backup", str(dest))[0] == 0
    return source, dest, studies


@pytest.mark.parametrize("victim", ["store", "database"])
def test_a_damaged_backup_is_refused_naming_the_file(gk, tmp_path, backed_up, victim):
    _, dest, _ = backed_up
    if victim == "store":
        path = sorted((dest / "store" / "held").rglob("*.dcm"))[0]
    else:
        path = dest / "database.sqlite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed, same size
    path.write_bytes(bytes(data))
    target = gateway(tmp_path / "target")
    code, out, err = gk(target, "restore", str(dest))
    assert code == 1 and out == ""
    assert str(path.relative_to(dest)) in err and "damaged" in err
    assert err.count("\n") == 1  # one sentence
    assert is_empty(target)
    with pytest.raises(backups.DamagedBackup):
        backups.verify(dest)


def test_a_backup_missing_a_file_is_refused(gk, tmp_path, backed_up):
    _, dest, _ = backed_up
    victim = sorted((dest / "store" / "archive").rglob("*.dcm"))[0]
    victim.unlink()
    code, _, err = gk(gateway(tmp_path / "target"), "restore", str(dest))
    assert code == 1 and str(victim.relative_to(dest)) in err and "missing" in err


def test_a_folder_without_manifest_is_bad_input(gk, tmp_path, backed_up):
    _, dest, _ = backed_up
    (dest / "manifest.json").unlink()
    code, _, err = gk(gateway(tmp_path / "target"), "restore", str(dest))
    assert code == 2 and "manifest.json" in err and "incomplete" in err
    code, _, err = gk(gateway(tmp_path / "target"), "restore", str(tmp_path / "nowhere"))
    assert code == 2 and "not a folder" in err


def test_a_manifest_pointing_outside_the_trees_is_bad_input(gk, tmp_path, backed_up):
    _, dest, _ = backed_up
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["files"][0]["path"] = "archive/../../../escape.dcm"
    (dest / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = gk(gateway(tmp_path / "target"), "restore", str(dest))
    assert code == 2 and "escape.dcm" in err
    assert not (tmp_path / "escape.dcm").exists()


def test_restore_into_a_gateway_with_data_is_refused(gk, tmp_path, backed_up):
    source, dest, _ = backed_up
    before = stored_files(source)
    code, out, err = gk(source, "restore", str(dest))  # the source itself: rows and files
    assert code == 1 and out == "" and "not empty" in err and err.count("\n") == 1
    assert stored_files(source) == before

    target = gateway(tmp_path / "target")
    assert gk(target, "orders", "import", str(EXAMPLES / "orders.json"))[0] == 0
    code, _, err = gk(target, "restore", str(dest))
    assert code == 1 and "table" in err and "has rows" in err


def test_restore_into_a_gateway_with_files_but_no_rows_is_refused(gk, tmp_path, backed_up):
    _, dest, _ = backed_up
    target = gateway(tmp_path / "target")
    assert gk(target, "held", "list")[0] == 0  # opens it: empty tables, empty trees
    stray = load(target, environ={}).storage_root / "archive" / "1.2.3" / "4.5" / "6.7.dcm"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    code, _, err = gk(target, "restore", str(dest))
    assert code == 1 and "archive/1.2.3/4.5/6.7.dcm" in err


def test_restore_into_an_opened_empty_gateway_works(gk, tmp_path, backed_up):
    """Empty tables (and the schema's version row) are empty: a gateway that was started once is new."""
    source, dest, studies = backed_up
    target = gateway(tmp_path / "target")
    assert gk(target, "worklist", "--date", "2026-12-01")[0] == 0
    code, _, err = gk(target, "restore", str(dest))
    assert code == 0, err
    assert views(gk, target, studies["held"]) == views(gk, source, studies["held"])


def test_restore_while_a_gatekeeper_runs_on_the_target_is_refused(gk, tmp_path, backed_up):
    _, dest, _ = backed_up
    target = gateway(tmp_path / "target")
    app = open_app(load(target, environ={}), clock=Clock(EXAMPLE_NOW))
    try:
        app.store.archive.incoming  # a running server holds its incoming folder
        code, _, err = gk(target, "restore", str(dest))
        assert code == 1 and "running" in err
        app.store.close()
        code, _, err = gk(target, "restore", str(dest))  # the database is still open in this process
        assert code == 1 and "open" in err
    finally:
        app.close()
    assert is_empty(target)


def test_a_sqlite_backup_is_not_restored_into_postgresql(gk, tmp_path, backed_up):
    _, dest, _ = backed_up
    target = gateway(tmp_path / "target", "postgresql://postgres@127.0.0.1:1/none")
    code, _, err = gk(target, "restore", str(dest))
    assert code == 2 and "sqlite" in err and "postgresql" in err


def test_a_failed_restore_leaves_the_gateway_empty(gk, tmp_path, backed_up, monkeypatch):
    _, dest, _ = backed_up
    target = gateway(tmp_path / "target")

    def fail(*args):
        raise StorageFailure("the disk said no.")

    monkeypatch.setattr(backups, "_restore_sqlite", fail)
    code, _, err = gk(target, "restore", str(dest))
    assert code == 1 and "the disk said no" in err
    assert is_empty(target) and stored_files(target) == {}
    monkeypatch.undo()
    monkeypatch.setenv("GATEKEEPER_NOW", NOW_ENV)
    assert gk(target, "restore", str(dest))[0] == 0  # and can be restored afterwards


def test_backup_refuses_a_folder_that_is_not_empty(gk, tmp_path, backed_up):
    source, dest, _ = backed_up
    code, _, err = gk(source, "backup", str(dest))
    assert code == 1 and "not empty" in err
    (tmp_path / "a-file").write_text("x")
    code, _, err = gk(source, "backup", str(tmp_path / "a-file"))
    assert code == 2 and "is a file" in err
    code, _, err = gk(source, "backup", str(load(source, environ={}).storage_root / "backup"))
    assert code == 2 and "inside the storage root" in err


# --------------------------------------------------------------------------- consistency


def test_only_files_the_database_indexes_are_backed_up(gk, tmp_path):
    source = gateway(tmp_path / "source")
    studies = populate(gk, source, tmp_path)
    root = load(source, environ={}).storage_root
    stray = root / "archive" / "1.2.3" / "4.5" / "6.7.dcm"  # a file nobody indexed
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"stray")
    (root / "incoming" / "rx-left.part").write_bytes(b"partial")
    gone = sorted((root / "held" / studies["held"]).rglob("*.dcm"))[0]  # indexed, but deleted meanwhile
    gone.unlink()
    dest = tmp_path / "backup"
    code, out, err = gk(source, "backup", str(dest))
    assert code == 0
    relative = str(gone.relative_to(root))
    assert "1 file indexed by the database copy was gone" in err and relative in err
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["missing"] == [relative]
    paths = [f["path"] for f in manifest["files"]]
    assert len(paths) == 3 and "archive/1.2.3/4.5/6.7.dcm" not in paths
    assert not (dest / "store" / "incoming").exists() and not (dest / "store" / ".locks").exists()


def test_a_study_released_during_the_backup_is_restored_as_the_database_copy_says(gk, tmp_path, monkeypatch):
    """Database first, then files: a study that moves in between is copied to the path the database copy gives it."""
    source = gateway(tmp_path / "source")
    studies = populate(gk, source, tmp_path)
    original = backups._copy_indexed

    def release_first(root, store, indexed):
        app = open_app(load(source, environ={}), clock=Clock(EXAMPLE_NOW))
        try:
            app.store.release(studies["held"], user="tech", reason="during the backup")
        finally:
            app.close()
        return original(root, store, indexed)

    monkeypatch.setattr(backups, "_copy_indexed", release_first)
    dest = tmp_path / "backup"
    assert gk(source, "backup", str(dest))[0] == 0
    monkeypatch.setattr(backups, "_copy_indexed", original)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["missing"] == [] and manifest["changed"] == []
    held = [f["path"] for f in manifest["files"] if f["path"].startswith("held/")]
    assert len(held) == 1 and studies["held"] in held[0]
    target = gateway(tmp_path / "target")
    assert gk(target, "restore", str(dest))[0] == 0
    code, out, _ = gk(target, "held", "list", "--json")
    assert [h["study_instance_uid"] for h in json.loads(out)["held"]] == [studies["held"]]
    assert held[0] in stored_files(target)


def test_backup_while_the_server_receives(app, server, tmp_path, gk):
    """The in-process server takes C-STOREs while the backup runs; the backup is complete and consistent."""
    app.gate.import_orders_text((EXAMPLES / "orders.json").read_text(), "orders.json")
    app.gate.import_auths_text((EXAMPLES / "auths.json").read_text(), "auths.json")
    statuses, stop = [], threading.Event()
    study = generate_uid()  # one study: a second study of ACC1001 would be held as DUPLICATE_STUDY (rule 7)

    def modality():
        ae = AE(ae_title="MR1")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
        assert assoc.is_established
        try:
            for _ in range(200):
                if stop.is_set():
                    break
                statuses.append(assoc.send_c_store(instance(StudyInstanceUID=study)).Status)
        finally:
            assoc.release()

    sender = threading.Thread(target=modality, daemon=True)
    sender.start()
    deadline = dt.datetime.now() + dt.timedelta(seconds=10)
    while len(statuses) < 5 and dt.datetime.now() < deadline:
        threading.Event().wait(0.05)
    dest = tmp_path / "backup"
    manifest = backups.backup(app.settings.database_url, app.settings.storage_root, dest, app.now())
    stop.set()
    sender.join(30)
    assert not sender.is_alive()
    assert set(statuses) == {0x0000}
    assert backups.verify(dest) == manifest
    assert manifest.missing == () and manifest.changed == ()
    with sqlite3.connect(dest / "database.sqlite") as conn:
        indexed = {r[0]: r[1] for r in conn.execute("SELECT path, sha256 FROM instances")}
    assert {f.path: f.sha256 for f in manifest.files} == indexed
    assert 5 <= len(indexed) <= len(statuses)
    target = gateway(tmp_path / "target")
    code, _, err = gk(target, "restore", str(dest))
    assert code == 0, err
    root = app.settings.storage_root
    restored = stored_files(target)
    assert sorted(restored) == sorted(indexed)
    assert all(restored[p] == (root / p).read_bytes() for p in restored)
    code, out, _ = gk(target, "studies", "list", "--json")
    assert sum(s["instance_count"] for s in json.loads(out)["studies"]) == len(indexed)


# --------------------------------------------------------------------------- passwords


def test_the_password_goes_to_the_tools_by_environment_only():
    target, env = backups._libpq_target("postgresql://gk:s%40cret@db.example:5432/gk?sslmode=require")
    assert target == "postgresql://gk@db.example:5432/gk?sslmode=require"
    assert env["PGPASSWORD"] == "s@cret"
    assert backups._libpq_target("postgresql://gk@db/gk")[0] == "postgresql://gk@db/gk"


def test_no_password_in_a_failure(tmp_path):
    with pytest.raises(StorageFailure) as failure:
        backups.backup("postgresql://gk:hunter2@127.0.0.1:1/gk", tmp_path / "store", tmp_path / "b", EXAMPLE_NOW)
    assert "hunter2" not in str(failure.value) and "gk@127.0.0.1:1/gk" in str(failure.value)


def test_without_pg_dump_the_backup_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(backups.shutil, "which", lambda name: None)
    with pytest.raises(StorageFailure, match="pg_dump is not installed.*postgresql-client.*Nothing was written"):
        backups.backup("postgresql://gk@127.0.0.1:1/gk", tmp_path / "store", tmp_path / "b", EXAMPLE_NOW)
    assert not (tmp_path / "b").exists()
