"""Forwarding throughput: the gatekeeper's sender against DCMTK's storescu, to one storescp.

    python3 bench/forward.py [--count N] [--kib K] [--rounds R]

N instances of about K KiB (default 500 of 512 KiB: MR, 512x512x16 bit, Explicit VR Little
Endian, one study) are made once. DCMTK's ``storescp`` runs on loopback, writing what it
receives to a folder (emptied between runs). Each round, in the same run:

- **storescu**: DCMTK's ``storescu`` sends the N files on one association; wall-clock time
  of the process.
- **gatekeeper**: a gateway (the shipped settings, SQLite with ``synchronous=FULL``, the
  examples' order ACC1001) has filed the same N files (not timed: ``Store.receive``, as
  C-STORE does), each queued for ``[forward.STORESCP]``; then the sender that ``serve``
  runs (:class:`gateway.dicom.forwarder.Forwarder`) is started and the time is taken from
  its start to the moment the last instance is recorded as sent in the queue: one
  association, each file streamed from disk in its stored syntax, one database update per
  instance.

Prints instances per second and MB/s of each and the ratio gatekeeper / storescu (goal:
0.8 or more). With ``--rounds`` > 1 the best round of each is kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom.uid import generate_uid  # noqa: E402

from bench.store import header, write_instance  # noqa: E402

EXAMPLES = ROOT / "examples"
NOW = dt.datetime(2026, 11, 30, 8, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcmtk(tool: str) -> str:
    for path in (f"/usr/bin/{tool}", f"/usr/local/bin/{tool}"):
        if os.access(path, os.X_OK):
            return path
    sys.exit(f"DCMTK's {tool} is not installed (Debian package dcmtk)")


def make_files(folder: Path, count: int, kib: int) -> list[Path]:
    folder.mkdir(parents=True)
    side = int((kib * 1024 // 2) ** 0.5)
    chunk = os.urandom(side * side * 2)
    study, series = generate_uid(), generate_uid()
    paths = []
    for n in range(count):
        path = folder / f"{n:05d}.dcm"
        write_instance(path, header(study, series, side, side, n + 1), side * side * 2, chunk)
        paths.append(path)
    return paths


def start_storescp(folder: Path, port: int) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(folder), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    sys.exit("storescp did not start")


def empty(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def run_storescu(files: list[Path], port: int) -> float:
    started = time.monotonic()
    subprocess.run([dcmtk("storescu"), "-aet", "BENCH", "-aec", "STORESCP", "127.0.0.1", str(port),
                    *map(str, files)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def gateway_settings(folder: Path, store_port: int) -> Path:
    text = (ROOT / "settings.toml").read_text()
    text = text.replace('bind_address = "0.0.0.0"', 'bind_address = "127.0.0.1"')
    text = text.replace("port = 11112", f"port = {free_port()}").replace("port = 9102", "port = 0")
    text = text.replace("min_free_mb = 1024", "min_free_mb = 16").replace("enabled = true", "enabled = false")
    text += f'\n[forward.STORESCP]\nae_title = "STORESCP"\nhost = "127.0.0.1"\nport = {store_port}\n'
    folder.mkdir(parents=True)
    path = folder / "settings.toml"
    path.write_text(text)
    return path


def run_gateway(files: list[Path], folder: Path, store_port: int) -> float:
    """File the files into a new gateway, then time its sender until every instance is sent."""
    import logging

    from gateway.app import open_app
    from gateway.dicom.forwarder import Forwarder
    from gateway.settings import load
    from infra.clock import fixed_clock

    logging.basicConfig(level=logging.WARNING)
    app = open_app(load(gateway_settings(folder, store_port), environ={}), clock=fixed_clock(NOW))
    try:
        app.gate.import_orders_text((EXAMPLES / "orders.json").read_text(), "orders.json")
        app.gate.import_auths_text((EXAMPLES / "auths.json").read_text(), "auths.json")
        for path in files:
            got = app.store.receive(path, "MR1")
            assert got.state == "archived", got
        outbox = app.store.outbox
        outbox.quiet_seconds = 0
        done = threading.Event()
        sent = [0]
        record = outbox.sent

        def counting(batch, item, status, note=""):
            ok = record(batch, item, status, note)
            sent[0] += 1
            if sent[0] == len(files):
                done.set()
            return ok

        outbox.sent = counting
        forwarder = Forwarder(app)
        started = time.monotonic()
        forwarder.start()
        if not done.wait(600):
            sys.exit(f"the gateway sent only {sent[0]} of {len(files)} instances in 600 s")
        took = time.monotonic() - started
        forwarder.stop()
        left = outbox.figures().backlog["STORESCP"]
        assert left == 0, f"{left} instances still pending"
        return took
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--kib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gk-bench-forward-"))
    scp = None
    try:
        files = make_files(work / "files", args.count, args.kib)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        port = free_port()
        received = work / "received"
        scp = start_storescp(received, port)
        best_scu = best_gk = None
        for round_ in range(args.rounds):
            empty(received)
            scu = run_storescu(files, port)
            assert len(list(received.iterdir())) == args.count, "storescp did not get every instance from storescu"
            empty(received)
            gk = run_gateway(files, work / f"gateway-{round_}", port)
            assert len(list(received.iterdir())) == args.count, "storescp did not get every instance from the gateway"
            print(f"round {round_ + 1}: storescu {scu:.2f} s, gatekeeper {gk:.2f} s")
            best_scu = scu if best_scu is None else min(best_scu, scu)
            best_gk = gk if best_gk is None else min(best_gk, gk)
        print(f"{args.count} instances of {args.kib} KiB ({megabytes:.0f} MB) to storescp on loopback:")
        print(f"  DCMTK storescu:       {best_scu:6.2f} s  {args.count / best_scu:7.1f} instances/s  "
              f"{megabytes / best_scu:6.1f} MB/s")
        print(f"  gatekeeper forwarding: {best_gk:6.2f} s  {args.count / best_gk:7.1f} instances/s  "
              f"{megabytes / best_gk:6.1f} MB/s")
        print(f"  ratio gatekeeper / storescu: {best_scu / best_gk:.2f} (goal 0.80)")
    finally:
        if scp is not None:
            scp.terminate()
            scp.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
