"""Review desk and API speed: the held-queue page with 1,000 held studies, the worklist page
with 2,000 orders in a day, and the matching API calls, on SQLite.

    python bench/http.py [--held N] [--orders N] [--runs N]

It builds a fresh gateway folder, receives N synthetic held studies (one small instance
each, an accession number no order has) through the store and imports N synthetic
orders of one day (half withheld), starts the review desk as `gatekeeper serve` does
(uvicorn on a thread, loopback), logs in, and times each request over one kept-alive
connection: the time from sending the request to the last byte of the answer. It
prints the median and 95th percentile in milliseconds (goal: p95 under 200 ms).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and this file would stand in
# for the standard library's http package: take the folder off, put the project root on.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import base64
import datetime as dt
import re
import statistics
import tempfile
import time

import httpx  # noqa: E402

from bench.synthetic import orders_and_auths  # noqa: E402
from gateway.app import open_app  # noqa: E402
from gateway.http import desk  # noqa: E402
from gateway.settings import load  # noqa: E402
from tests.conftest import free_port, write_settings  # noqa: E402
from tests.dicom_factory import make_instance, write_instance  # noqa: E402
from worklist.intake import auth_from_record, order_from_record  # noqa: E402

DAY = dt.date(2026, 12, 1)
NOW = dt.datetime(2026, 12, 1, 7, 0)
PASSWORD = "bench-password-1"


def build(folder: Path, held: int, orders: int):
    path = write_settings(folder)
    head, tail = path.read_text().split("[http]", 1)
    port = free_port()
    path.write_text(head + "[http]" + tail.replace("port = 0", f"port = {port}", 1))
    app = open_app(load(path, environ={}), clock=lambda: NOW)
    records, auth_records = orders_and_auths(orders, first_day=DAY, days=1)
    app.gate.import_orders([order_from_record(r) for r in records], user="bench")
    app.gate.import_auths([auth_from_record(r) for r in auth_records], user="bench")
    started = time.monotonic()
    sent = folder / "sent"
    for i in range(held):
        ds = make_instance(AccessionNumber=f"H{i:08d}", PatientID=f"SYNH{i:06d}", StudyDate="20261201")
        app.store.receive(write_instance(sent / f"{i}.dcm", ds), "MR1")
        (sent / f"{i}.dcm").unlink()
    print(f"set-up: {orders:,} orders on {DAY}, {held:,} held studies received in {time.monotonic() - started:.0f} s")
    app.users.add("bench", "admin", PASSWORD, by="bench")
    return app, port


def timed(client: httpx.Client, url: str, runs: int, **kwargs) -> list[float]:
    client.get(url, **kwargs).raise_for_status()  # warm up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        response = client.get(url, **kwargs)
        response.read()
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return times


def line(name: str, times: list[float]) -> str:
    p95 = statistics.quantiles(times, n=20)[-1]
    return f"  {name:<44} p50 {statistics.median(times):7.1f} ms   p95 {p95:7.1f} ms   ({len(times)} runs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gk-bench-http-") as tmp:
        app, port = build(Path(tmp), args.held, args.orders)
        server = desk.start(app)
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=60, follow_redirects=True) as client:
                form = client.get("/login").text
                csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
                client.post("/login", data={"csrf": csrf, "name": "bench", "password": PASSWORD}).raise_for_status()
                api = {"Authorization": "Basic " + base64.b64encode(f"bench:{PASSWORD}".encode()).decode()}
                held_rows = client.get("/held").text.count("data-study=")
                print(f"review desk on {base} (SQLite), {held_rows:,} rows in the held queue")
                print(line(f"GET /held ({args.held:,} held)", timed(client, "/held", args.runs)))
                print(line(f"GET /worklist?date={DAY} ({args.orders:,} orders)",
                           timed(client, f"/worklist?date={DAY}", args.runs)))
                print(line("GET /api/held", timed(client, "/api/held", args.runs, headers=api)))
                print(line(f"GET /api/worklist?date={DAY}", timed(client, f"/api/worklist?date={DAY}", args.runs,
                                                                   headers=api)))
        finally:
            server.stop()
            app.close()


if __name__ == "__main__":
    main()
