"""Worklist C-FIND abuse against `gatekeeper serve` running as a child process.

    python bench/mwl_abuse.py --tree DIR [--limit 60]
    python bench/mwl_abuse.py --port PORT [--limit 60] -- SERVER COMMAND ...

With ``--tree`` (a checkout of the gatekeeper, e.g. /tmp/before or /work/main) it makes
a temporary folder with a copy of DIR/settings.toml on a free loopback port, imports
examples/orders.json and auths.json with that tree's ``gateway.cli`` (as of
2026-11-30 08:00), and serves it with ``python -m gateway.cli --config FILE serve``
run in DIR with PYTHONPATH=DIR. With ``--port`` it runs the given command, which
must serve on that port (prefix it with ``env VAR=...`` for its environment: env
execs, so the process measured is the server's).

The server is started afresh for each measurement and stopped after it:

1. one C-FIND with RequestedProcedureDescription ``***********?#`` (13 bytes): the
   seconds to its final status, and the seconds a C-ECHO sent on a second association
   1 s later waits for its answer; each bounded by ``--limit`` (reported as ">60 s");
2. the server's resident memory (VmRSS in /proc/PID/status) idle, after 5 warm-up
   identifiers of 1 MB, and after 150 more distinct ones (a universal wild card key of
   1,000,000 + i stars, sent in implicit VR: every one finds the day's served items);
3. the status and number of matches of ScheduledProcedureStepStartDate ranges that
   start or end at the ends of time.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NOW = "2026-11-30T08:00:00"
PATTERN = "***********?#"
LARGE_QUERIES = 150
WARM_UP = 5
DATE_KEYS = ("20261201-99991231", "-99991231", "99991231", "00010101-", "20261201")


# --- the server --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(tree: Path, folder: Path) -> tuple[list[str], int, dict, Path]:
    """Settings, orders and auths for ``tree`` in ``folder``: (serve command, port, env, cwd)."""
    port = free_port()
    text = (tree / "settings.toml").read_text()
    text = text.replace('bind_address = "0.0.0.0"', 'bind_address = "127.0.0.1"')
    text = text.replace("port = 11112", f"port = {port}")
    text = text.replace("min_free_mb = 1024", "min_free_mb = 16")
    settings = folder / "settings.toml"
    settings.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(tree), "GATEKEEPER_NOW": NOW}
    env.pop("GATEKEEPER_DATABASE_URL", None)
    env.pop("GATEKEEPER_CONFIG", None)
    cli = [sys.executable, "-m", "gateway.cli", "--config", str(settings)]
    for kind in ("orders", "auths"):
        subprocess.run([*cli, kind, "import", str(EXAMPLES / f"{kind}.json")], cwd=tree, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return [*cli, "serve"], port, env, tree


class Server:
    """The server command as a child process, started and stopped around one measurement."""

    def __init__(self, command: list[str], port: int, env: dict | None, cwd: Path | None) -> None:
        self.command, self.port, self.env, self.cwd = command, port, env, cwd
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited during start-up: {' '.join(self.command)}")
            if echo(self.port, 2) == 0x0000:
                return self
            time.sleep(0.1)
        self.__exit__()
        raise SystemExit("the server did not answer C-ECHO within 30 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024


# --- the console side --------------------------------------------------------------


def identifier(step: dict | None = None, **keys) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values longer than their VR allows
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        if step is not None:
            item = Dataset()
            for keyword, value in step.items():
                setattr(item, keyword, value)
            ds.ScheduledProcedureStepSequence = [item]
    return ds


def associate(port: int, limit: float, calling: str = "MR1"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityWorklistInformationFind, ImplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = limit
    return ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")


def find_on(assoc, ds: Dataset) -> tuple[int, int | None]:
    """(matches, final status) of one C-FIND; status None when no answer came in time."""
    count, final = 0, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for status, _ in assoc.send_c_find(ds, ModalityWorklistInformationFind):
            code = status.get("Status")
            if code in (0xFF00, 0xFF01):
                count += 1
            else:
                final = code
    return count, final


def find(port: int, ds: Dataset, limit: float) -> tuple[int, int | None]:
    assoc = associate(port, limit)
    if not assoc.is_established:
        return 0, None
    try:
        return find_on(assoc, ds)
    finally:
        assoc.release()


def echo(port: int, limit: float) -> int | None:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = limit
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return status.get("Status")


def seconds(took: float | None, limit: float) -> str:
    return f">{limit:.0f} s" if took is None else f"{took:.3f} s"


def status_text(code: int | None) -> str:
    return "no answer" if code is None else f"0x{code:04X}"


# --- the measurements --------------------------------------------------------------


def backtracking(server: Server, limit: float) -> None:
    """Item 4: the 13-byte wild card, and a C-ECHO sent 1 s after it."""
    outcome: dict = {}

    def pathological() -> None:
        started = time.monotonic()
        count, final = find(server.port, identifier(AccessionNumber="", RequestedProcedureDescription=PATTERN), limit)
        outcome["find"] = (time.monotonic() - started if final is not None else None, count, final)

    worker = threading.Thread(target=pathological, daemon=True)
    worker.start()
    time.sleep(1)
    started = time.monotonic()
    echoed = echo(server.port, limit)
    echo_took = time.monotonic() - started if echoed is not None else None
    worker.join(limit + 5)
    took, count, final = outcome.get("find", (None, 0, None))
    print(f"  C-FIND RequestedProcedureDescription={PATTERN!r}: {seconds(took, limit)}, "
          f"{count} matches, status {status_text(final)}")
    print(f"  C-ECHO sent 1 s later on another association: waited {seconds(echo_took, limit)}, "
          f"status {status_text(echoed)}")


def memory(server: Server, limit: float) -> None:
    """Item 5: resident memory over 150 distinct 1 MB identifiers."""
    assoc = associate(server.port, limit)
    try:
        find_on(assoc, identifier(AccessionNumber=""))
        idle = server.rss_mb()
        for i in range(WARM_UP):
            find_on(assoc, identifier(AccessionNumber="", RequestedProcedureDescription="*" * (1_000_000 + i)))
        warm = server.rss_mb()
        started = time.monotonic()
        answers = [find_on(assoc, identifier(AccessionNumber="", RequestedProcedureDescription="*" * (1_000_000 + i)))
                   for i in range(WARM_UP, WARM_UP + LARGE_QUERIES)]
        took = time.monotonic() - started
        after = server.rss_mb()
    finally:
        assoc.release()
    statuses = sorted({status_text(final) for _, final in answers})
    print(f"  RSS idle {idle:.0f} MiB; after {WARM_UP} warm-up 1 MB identifiers {warm:.0f} MiB; after "
          f"{LARGE_QUERIES} more distinct ones {after:.0f} MiB: grew {after - warm:+.1f} MiB over the "
          f"{LARGE_QUERIES} ({after - idle:+.1f} MiB from idle); {took:.1f} s; matches per query "
          f"{sorted({count for count, _ in answers})}, statuses {statuses}")


def end_of_time(server: Server, limit: float) -> None:
    """Item 6: date ranges at the ends of time."""
    for dates in DATE_KEYS:
        count, final = find(server.port, identifier({"ScheduledProcedureStepStartDate": dates}, AccessionNumber=""),
                            limit)
        print(f"  ScheduledProcedureStepStartDate={dates!r}: {count} matches, status {status_text(final)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="a gatekeeper checkout to prepare and serve")
    parser.add_argument("--port", type=int, help="the port the server command listens on")
    parser.add_argument("--limit", type=float, default=60, help="seconds to wait for any one answer")
    parser.add_argument("command", nargs="*", help="the server command (after --)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        if args.tree:
            command, port, env, cwd = prepare(args.tree.resolve(), Path(folder))
        elif args.port and args.command:
            command, port, env, cwd = args.command, args.port, None, None
        else:
            parser.error("give --tree DIR, or --port PORT -- COMMAND")
        print(f"server: {' '.join(command)} (cwd {cwd or os.getcwd()})")
        for title, measure in (("item 4, backtracking wild card", backtracking),
                               ("item 5, large identifiers", memory),
                               ("item 6, ranges to the end of time", end_of_time)):
            print(title)
            with Server(command, port, env, cwd) as server:
                measure(server, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
