"""C-STORE speed with a large index: receiving into an index already holding N instances
against receiving into an empty one, on SQLite and on PostgreSQL.

    python3 bench/index_scale.py [--rows N] [--count C] [--kib K] [--rounds R]
                                 [--only sqlite|pg] [--pg-url URL] [--keep DIR]

For each database, two gateway folders are prepared, each with its own index: one empty,
one holding N synthetic instances (default 1,000,000) with their studies. SQLite is the
shipped ``var/gatekeeper.db`` of each folder; PostgreSQL uses two databases next to the
one of ``--pg-url`` (default ``$GATEKEEPER_TEST_PG_URL``, else postgresql://postgres@127.0.0.1:5432/test), named
``<db>_empty`` and ``<db>_filled``, created (and the empty one dropped first) through
that URL, so the role needs CREATEDB.

The synthetic rows: studies of 50 instances in series of 4 (so N / 50 studies and N / 4
series), every study archived, with its own accession number, order accession and
patient (none of them the examples' ACC1001 / MRN5001, so they are not prior studies of
what is sent), received over the last year. They are inserted in batches of 10,000 rows,
one transaction per batch (``executemany`` on SQLite, ``execute_values`` on PostgreSQL).
No files are behind them: receiving reads the index (the study, the instance, prior
studies of the order), never the files of other studies. Every column is given, so every
NOT NULL and unique constraint of the schema holds (the index has no foreign keys). The
fill time is printed. With ``--keep DIR`` the filled SQLite folder is kept in DIR and the
PostgreSQL ``<db>_filled`` database is kept too; the next run with the same ``--rows``
reuses them instead of filling again (with another ``--rows`` it fills them anew).

Then ``gatekeeper serve`` runs on each folder (as bench/store.py starts it: shipped
settings, examples imported, scheduled jobs off) and each round sends C new instances
(default 300 of 256 KiB, studies of 50, order ACC1001) on one association with DCMTK's
storescu to every server, the order of empty and filled turning from round to round
(the machine may be shared and noisy). It prints the median instances per second of
each, every run, and the ratio filled / empty per database (goal >= 0.90).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path.pop(0)  # run as a script: bench/http.py would shadow the standard library's http
sys.path.insert(0, str(ROOT))

from bench.store import gatekeeper_folder, make_batches, run_gatekeeper, stop, storescu, timed  # noqa: E402
from infra.db import open_database  # noqa: E402
from store.models import InstanceRow, StudyRow  # noqa: E402

#: The test suite's PostgreSQL server and database (scripts/test.sh), unless --pg-url names another.
PG_URL = os.environ.get("GATEKEEPER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
STUDY_SIZE = 50
SERIES_SIZE = 4
BATCH = 10_000
#: received_from of the synthetic instances (how a kept database is recognised).
SYNTHETIC_AE = "SYNTH"


# ------------------------------------------------------------------ gateway folders


def pg_database(base: str, suffix: str, *, fresh: bool) -> str:
    """The URL of database ``<db of base>_<suffix>``, created if missing (dropped first if ``fresh``)."""
    import psycopg2

    parts = urlsplit(base)
    name = f"{parts.path.lstrip('/')}_{suffix}"
    conn = psycopg2.connect(base)
    conn.autocommit = True
    with conn.cursor() as cur:
        if fresh:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if not cur.fetchone():
            cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return urlunsplit(parts._replace(path="/" + name))


# ------------------------------------------------------------------ synthetic rows


def _columns(model) -> list:
    return [f for f in model._meta.sorted_fields if f.name != "id"]


def _row(fields: list, values: dict) -> tuple:
    """A value for every column: ``values``, else the field's default, else NULL (nullable only)."""
    out = []
    for f in fields:
        if f.name in values:
            out.append(values[f.name])
        elif f.default is not None and not callable(f.default):
            out.append(f.default)
        elif f.null:
            out.append(None)
        else:
            raise ValueError(f"no value for the NOT NULL column {f.column_name}")
    return tuple(out)


def synthetic_rows(rows: int, start: dt.datetime):
    """(study rows, instance rows) as value tuples, one study of STUDY_SIZE instances at a time."""
    study_fields, instance_fields = _columns(StudyRow), _columns(InstanceRow)
    for s in range((rows + STUDY_SIZE - 1) // STUDY_SIZE):
        count = min(STUDY_SIZE, rows - s * STUDY_SIZE)
        study = f"2.25.4242.{s}"
        at = (start + dt.timedelta(minutes=s * 525_600 / max(1, rows // STUDY_SIZE))).strftime("%Y-%m-%d %H:%M:%S")
        day = at[:10].replace("-", "")
        study_row = _row(study_fields, {
            "study_instance_uid": study, "state": "archived", "accession_number": f"S{s:09d}",
            "order_accession": f"S{s:09d}", "patient_id": f"SYN{s:07d}", "study_date": day,
            "first_received_at": at, "last_received_at": at, "state_changed_at": at, "instance_count": count,
            "patient_name": f"SYNTH^PATIENT{s}", "study_time": "080000"})
        instances = []
        for n in range(count):
            sop = f"{study}.{n + 1}"
            instances.append(_row(instance_fields, {
                "sop_instance_uid": sop, "study_instance_uid": study,
                "series_instance_uid": f"{study}.0.{n // SERIES_SIZE + 1}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
                "transfer_syntax_uid": "1.2.840.10008.1.2.1", "path": f"archive/synthetic/{study}/{sop}.dcm",
                "size": 262_144, "sha256": "0" * 64, "received_from": SYNTHETIC_AE, "received_at": at,
                "modality": "MR", "series_number": str(n // SERIES_SIZE + 1), "instance_number": str(n + 1)}))
        yield study_row, instances


def synthetic_count(url: str) -> int:
    db = open_database(url)
    try:
        return db.execute_sql("SELECT COUNT(*) FROM instances WHERE received_from = %s" % db.param,
                              (SYNTHETIC_AE,)).fetchone()[0]
    finally:
        db.close()


def fill(url: str, rows: int) -> float:
    """Insert ``rows`` synthetic instances and their studies; seconds taken."""
    db = open_database(url)
    started = time.perf_counter()
    postgres = url.startswith("postgres")
    if postgres:
        from psycopg2.extras import execute_values
    tables = {}
    for model in (StudyRow, InstanceRow):
        names = ", ".join(f.column_name for f in _columns(model))
        tables[model] = f"INSERT INTO {model._meta.table_name} ({names}) VALUES "
    try:
        conn = db.connection()
        studies, instances = [], []

        def flush():
            with db.atomic():
                cur = db.cursor()
                for model, values in ((StudyRow, studies), (InstanceRow, instances)):
                    if not values:
                        continue
                    if postgres:
                        execute_values(cur, tables[model] + "%s", values, page_size=1000)
                    else:
                        marks = "(" + ", ".join("?" * len(values[0])) + ")"
                        cur.executemany(tables[model] + marks, values)
            studies.clear()
            instances.clear()

        for study_row, instance_rows in synthetic_rows(rows, dt.datetime(2025, 11, 30, 8, 0)):
            studies.append(study_row)
            instances.extend(instance_rows)
            if len(instances) >= BATCH:
                flush()
        flush()
        if postgres:
            conn.autocommit = True
            db.execute_sql("VACUUM ANALYZE studies")
            db.execute_sql("VACUUM ANALYZE instances")
        else:
            db.execute_sql("ANALYZE")
    finally:
        db.close()
    return time.perf_counter() - started


# -------------------------------------------------------------------------------- main


def prepare(url_of, folder: Path, rows: int, keep: bool) -> dict:
    """A gateway folder with an empty or filled index: {"folder", "env", "port", "url", "fill_s", "reused"}.
    A kept index holding another count of synthetic instances is made again."""
    url = url_of(folder, fresh=not keep)
    env, port = gatekeeper_folder(folder, database_url=url)  # the examples' import creates the schema
    found = synthetic_count(url) if rows else 0
    setup = {"folder": folder, "url": url, "fill_s": None, "reused": keep and rows and found == rows}
    if not setup["reused"]:
        if found:  # a kept index of another size
            shutil.rmtree(folder, ignore_errors=True)
            setup["url"] = url = url_of(folder, fresh=True)
            env, port = gatekeeper_folder(folder, database_url=url)
        if rows:
            setup["fill_s"] = fill(url, rows)
    setup.update(env=env, port=port)
    return setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic instances in the filled index")
    parser.add_argument("--count", type=int, default=300, help="instances sent per run (default 300)")
    parser.add_argument("--kib", type=int, default=256, help="size of each instance in KiB (default 256)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, medians kept (default 5)")
    parser.add_argument("--only", choices=("sqlite", "pg"), help="one database only")
    parser.add_argument("--pg-url", default=PG_URL, help=f"PostgreSQL server and base name (default {PG_URL})")
    parser.add_argument("--keep", type=Path, help="folder keeping the filled SQLite index (and the PostgreSQL "
                                                  "_filled database) for the next run")
    args = parser.parse_args()
    dcmtk = storescu()
    if not dcmtk:
        raise SystemExit("DCMTK's storescu is needed (Debian package dcmtk)")
    work = Path(tempfile.mkdtemp(prefix="bench-index-", dir=os.environ.get("BENCH_DIR")))
    kept = args.keep.resolve() if args.keep else work
    kinds = [k for k in ("sqlite", "pg") if args.only in (None, k)]
    servers: dict = {}
    try:
        for kind in kinds:
            for state, rows in (("empty", 0), ("filled", args.rows)):
                folder = (kept if state == "filled" else work) / f"{kind}-{state}"
                if state == "empty":
                    shutil.rmtree(folder, ignore_errors=True)
                if kind == "sqlite":
                    def url_of(f, fresh):
                        return f"sqlite:///{f / 'var' / 'gatekeeper.db'}"
                else:
                    def url_of(f, fresh, state=state):
                        return pg_database(args.pg_url, state, fresh=fresh or state == "empty")
                setup = prepare(url_of, folder, rows, bool(args.keep) and state == "filled")
                if setup["fill_s"] is not None:
                    print(f"{kind}: filled {rows} instances ({rows // STUDY_SIZE} studies) in {setup['fill_s']:.0f} s",
                          flush=True)
                elif setup["reused"]:
                    print(f"{kind}: reusing the kept index of {rows} instances", flush=True)
                setup["process"] = run_gatekeeper(folder, setup["env"], setup["port"])
                servers[(kind, state)] = setup
        rates: dict = {key: [] for key in servers}
        for r in range(args.rounds):
            for kind in kinds:
                for state in (("empty", "filled") if r % 2 == 0 else ("filled", "empty")):
                    batch = work / f"send-{kind}-{state}-{r}"
                    batches = make_batches(batch, args.count, args.kib, 1)
                    rates[(kind, state)].append(timed(None, servers[(kind, state)]["port"], "GATEKEEPER",
                                                      batches, dcmtk))
                    shutil.rmtree(batch)
            print(f"round {r + 1}: " + ", ".join(f"{k} {s} {v[-1]:.1f}/s" for (k, s), v in rates.items()), flush=True)
        print(f"C-STORE of {args.count} instances of {args.kib} KiB on 1 association (DCMTK storescu), "
              f"median of {args.rounds} interleaved rounds, index empty against {args.rows} instances:")
        for kind in kinds:
            empty, filled = (statistics.median(rates[(kind, s)]) for s in ("empty", "filled"))
            print(f"  {kind:6}: empty {empty:6.1f}/s, filled {filled:6.1f}/s, filled/empty {filled / empty:.2f} "
                  f"(goal >= 0.90)  runs: empty {', '.join(f'{x:.1f}' for x in rates[(kind, 'empty')])}; "
                  f"filled {', '.join(f'{x:.1f}' for x in rates[(kind, 'filled')])}")
    finally:
        for setup in servers.values():
            stop(setup["process"])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
