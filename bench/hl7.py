"""The RIS feed's speed: ORM^O01 NW messages over one MLLP connection to `gatekeeper serve`,
each committed before its ACK, against the same orders imported as one NDJSON file.

    python bench/hl7.py [N ...]            (default 1000 10000; SQLite, and PostgreSQL when
                                            GATEKEEPER_TEST_PG_URL names a database to empty)

Prints messages per second (sustained: the client sends the next message when the ACK of
the last has come) and the NDJSON import's orders per second on a fresh database; first,
the floor: how many durable one-row commits per second SQLite makes on this disk, which
bounds a feed that commits every message before its ACK.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on the path and "hl7" would be this file,
# not python-hl7: take the folder off and put the project root on.
sys.path = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.synthetic import orders_and_auths  # noqa: E402
from gateway.app import MODELS, open_app  # noqa: E402
from gateway.hl7.client import Client, ack_code  # noqa: E402
from gateway.settings import load  # noqa: E402
from infra import schema  # noqa: E402
from infra.db import open_database  # noqa: E402
from tests.conftest import free_port, write_settings  # noqa: E402
from tests.e2e import echo_ok  # noqa: E402
from tests.hl7_messages import hl7_settings  # noqa: E402

NOW = "2026-11-30T08:00:00"
FIRST_DAY = dt.date(2026, 12, 1)


def orm(record: dict, number: int) -> bytes:
    """One synthetic order record as an HL7 v2.3.1 ORM^O01 NW message."""
    p, proc, when = record["patient"], record["procedure"], record["scheduled"]
    start = dt.datetime.fromisoformat(when["start"]).strftime("%Y%m%d%H%M%S")
    obr = ["OBR", "1", "", record["accession_number"], f"{proc['cpt']}^{proc['description']}^C4"] + [""] * 13
    obr[18:] = [record["accession_number"], "", "", "", "", "", proc["modality"], "", "", f"^^^{start}"]
    segments = [
        f"MSH|^~\\&|RIS|BENCH|GATEKEEPER|BENCH|20261130080000||ORM^O01|B{number:09d}|P|2.3.1",
        f"PID|1||{p['id']}^^^BENCH||{p['name']}||{p['birth_date'].replace('-', '')}|{p['sex']}",
        f"PV1|1|O|{when['station_ae']}",
        f"IN1|1||{record['payer']['id']}",
        f"ORC|NW|{record['accession_number']}|||SC|||||||{record['ordering_provider']['npi']}^DOCTOR^SYNTH"
        f"|||||||||BENCH^^^^^^^^^{record['facility_npi']}",
        "|".join(obr),
    ]
    return ("\r".join(segments) + "\r").encode("ascii")


def empty_postgres(url: str) -> None:
    db = open_database(url)
    db.connect()
    for table in [m._meta.table_name for m in MODELS] + [schema.VERSION_TABLE]:
        db.execute_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    db.close()


def stations() -> str:
    """[hl7.stations]: the synthetic orders' stations by location (PV1-3 carries the station name)."""
    return "".join(f'"{m}@{m}{i}" = "{m}{i}"\n' for m in ("MR", "CT") for i in range(1, 6))


def feed(count: int, url: str | None) -> float:
    records, _ = orders_and_auths(count, first_day=FIRST_DAY, days=max(count // 400, 1))
    messages = [orm(r, i) for i, r in enumerate(records)]
    with tempfile.TemporaryDirectory() as folder:
        if url:
            empty_postgres(url)
        port, hl7_port = free_port(), free_port()
        path = hl7_settings(write_settings(Path(folder), port=port, database_url=url), port=hl7_port)
        path.write_text(path.read_text().replace("[hl7.stations]\n", "[hl7.stations]\n" + stations(), 1)
                        .replace('log_level = "INFO"', 'log_level = "WARNING"'))
        env = {**os.environ, "GATEKEEPER_CONFIG": str(path), "GATEKEEPER_NOW": NOW}
        env.pop("GATEKEEPER_DATABASE_URL", None)
        serve = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not echo_ok(port):
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("serve did not start")
                time.sleep(0.1)
            while True:
                try:
                    socket.create_connection(("127.0.0.1", hl7_port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            with Client("127.0.0.1", hl7_port) as client:
                start = time.perf_counter()
                for message in messages:
                    answer = client.send(message)
                    if ack_code(answer) != "AA":
                        raise SystemExit(f"not applied: {answer!r}")
                seconds = time.perf_counter() - start
        finally:
            serve.terminate()
            serve.wait(30)
        app = open_app(load(path, environ={}))
        try:
            assert app.gate.find_order(records[-1]["accession_number"]) is not None
        finally:
            app.close()
    return seconds


def commit_floor(count: int = 1000) -> float:
    """Durable one-row commits per second on this disk (SQLite, WAL, synchronous=FULL, as the
    gatekeeper opens it): the ceiling of any feed that commits each message before its ACK."""
    import sqlite3

    with tempfile.TemporaryDirectory() as folder:
        conn = sqlite3.connect(f"{folder}/floor.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("PRAGMA synchronous=full")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for i in range(count):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            conn.execute("COMMIT")
        seconds = time.perf_counter() - start
        conn.close()
    return count / seconds


def ndjson(count: int, url: str | None) -> float:
    records, _ = orders_and_auths(count, first_day=FIRST_DAY, days=max(count // 400, 1))
    text = "\n".join(json.dumps(r) for r in records)
    with tempfile.TemporaryDirectory() as folder:
        if url:
            empty_postgres(url)
        path = write_settings(Path(folder), database_url=url)
        app = open_app(load(path, environ={}), clock=lambda: dt.datetime.fromisoformat(NOW))
        try:
            start = time.perf_counter()
            app.gate.import_orders_text(text, "bench.ndjson")
            return time.perf_counter() - start
        finally:
            app.close()


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [1_000, 10_000]
    databases = [("SQLite", None)]
    if os.environ.get("GATEKEEPER_TEST_PG_URL"):
        databases.append(("PostgreSQL", os.environ["GATEKEEPER_TEST_PG_URL"]))
    print(f"floor: {commit_floor():,.0f} durable one-row SQLite commits/s on this disk (WAL, synchronous=FULL)",
          flush=True)
    for name, url in databases:
        for n in sizes:
            hl7_seconds = feed(n, url)
            file_seconds = ndjson(n, url)
            print(f"{name:<10} {n:>6} orders: HL7 one connection {n / hl7_seconds:7,.0f} msg/s "
                  f"({hl7_seconds:6.1f}s, each committed before its ACK) | NDJSON import "
                  f"{n / file_seconds:8,.0f} orders/s ({file_seconds:5.2f}s, one transaction)", flush=True)
