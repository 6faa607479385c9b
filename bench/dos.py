"""Denial of service: what a few hostile or careless sockets do to a running gatekeeper.

    python bench/dos.py [--root DIR] [--mib M] [--bound S] [-- COMMAND ...]

Starts the server COMMAND (default: this Python, ``-m gateway.cli --config {config} serve``,
run in DIR with ``PYTHONPATH=DIR``) on a settings file made in a temporary folder from
DIR/settings.toml (a free port, bound to 127.0.0.1, its own database and store, scheduled
jobs off), runs the probes one after the other, prints the figures and stops the server.
``{config}`` in COMMAND is replaced by the settings file's path. Every probe is bounded
(``--bound`` seconds, default 45, of waiting for a console to get in).

1. **Oversized PDU**: a PDU header claiming 4 GB (``01 00 FF FF FF FF``), then M MiB of
   zeros (default 256): the growth of the server's resident memory (VmRSS in
   /proc/PID/status, and its high-water mark VmHWM), and whether it answered A-ABORT.
2. **30 silent sockets**: connected, sending nothing; then a console (a pynetdicom C-ECHO
   SCU, one attempt every 0.25 s) tries to get in: the seconds until it does.
3. **25 connect-and-close sockets**: each sends an HTTP request and closes, all within
   about 0.1 s; then the same console: the seconds until it gets in.
4. **25 trickling sockets**: each sends an A-ASSOCIATE-RQ one byte a second; the console:
   the seconds until it gets in, and when the server dropped the trickling sockets.

Compare releases with, for example::

    cd /work/main && .venv/bin/python bench/dos.py --root /tmp/before
    cd /work/main && .venv/bin/python bench/dos.py
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests import e2e  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(root: Path, folder: Path, port: int) -> Path:
    text = (root / "settings.toml").read_text()
    text = text.replace('bind_address = "0.0.0.0"', 'bind_address = "127.0.0.1"')
    text = text.replace("port = 11112", f"port = {port}")
    text = text.replace("min_free_mb = 1024", "min_free_mb = 16")
    text = text.replace('log_level = "INFO"', 'log_level = "WARNING"')
    text = text.replace("enabled = true", "enabled = false")
    path = folder / "settings.toml"
    path.write_text(text)
    return path


def echo_once(port: int) -> bool:
    """One console attempt: associate, C-ECHO, release."""
    return e2e.echo_ok(port, "CONSOLE", 5)


def locked_out(port: int, bound: float) -> float | None:
    """Seconds until a console gets in (None: not within ``bound``)."""
    start = time.monotonic()
    for _ in range(int(bound / 0.25) + 1):
        if echo_once(port):
            return time.monotonic() - start
        if time.monotonic() - start > bound:
            break
        time.sleep(0.25)
    return None


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def probe_oversized(port: int, pid: int, mib: int) -> str:
    before = rss_kib(pid)
    chunk = bytes(1 << 20)
    sent, answer = 0, "no answer"
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x01\x00\xff\xff\xff\xff")
        try:
            for _ in range(mib):
                sock.sendall(chunk)
                sent += 1
        except OSError as exc:
            answer = f"connection closed by the server ({exc.__class__.__name__})"
        took = time.monotonic() - start
        time.sleep(1.0)  # let the server take in what it was sent
        after = rss_kib(pid)
        try:
            sock.settimeout(1)
            reply = sock.recv(10)
            if reply[:1] == b"\x07":
                answer = "A-ABORT"
            elif not reply:
                answer = "connection closed by the server"
        except OSError:
            pass
    grew = (after["VmRSS"] - before["VmRSS"]) / 1024
    hwm = (after["VmHWM"] - before["VmHWM"]) / 1024
    return (f"sent {sent} of {mib} MiB in {took:.1f} s; server answered: {answer}; "
            f"server RSS grew {grew:.0f} MiB (high-water mark {hwm:+.0f} MiB)")


def probe_silent(port: int, count: int, bound: float) -> str:
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        waited = locked_out(port, bound)
    finally:
        for sock in sockets:
            sock.close()
    return _lockout(waited, bound)


def probe_connect_and_close(port: int, count: int, bound: float) -> str:
    start = time.monotonic()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: gatekeeper\r\n\r\n")
    sent = time.monotonic() - start
    return f"sent in {sent:.2f} s; " + _lockout(locked_out(port, bound), bound)


def probe_trickle(port: int, count: int, bound: float) -> str:
    # An A-ASSOCIATE-RQ header claiming 200 bytes, then one byte a second from each socket.
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for sock in sockets:
        sock.sendall(b"\x01\x00\x00\x00\x00\xc8")
    dropped: list[float] = []
    stop = threading.Event()
    start = time.monotonic()

    def trickle() -> None:
        live = list(sockets)
        for _ in range(int(bound) + 5):
            if stop.wait(1.0) or not live:
                return
            for sock in list(live):
                try:
                    sock.sendall(b"\x00")
                except OSError:
                    dropped.append(time.monotonic() - start)
                    live.remove(sock)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        waited = locked_out(port, bound)
        # Keep trickling until the server has dropped them, or the bound.
        while len(dropped) < count and time.monotonic() - start < bound:
            time.sleep(0.25)
    finally:
        stop.set()
        thread.join(5)
        for sock in sockets:
            sock.close()
    gone = (f"the server dropped all {count} after {max(dropped):.1f} s" if len(dropped) == count
            else f"the server dropped {len(dropped)} of {count} within {bound:.0f} s")
    return _lockout(waited, bound) + "; " + gone


def _lockout(waited: float | None, bound: float) -> str:
    if waited is None:
        return f"console locked out for more than {bound:.0f} s"
    return f"console got in after {waited:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE, help="source tree to run (default: this one)")
    parser.add_argument("--mib", type=int, default=256, help="MiB sent after the oversized PDU header")
    parser.add_argument("--bound", type=float, default=45.0, help="seconds a console keeps trying")
    parser.add_argument("command", nargs="*", help="server command; {config} is the settings file")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    command = args.command or [sys.executable, "-m", "gateway.cli", "--config", "{config}", "serve"]
    with tempfile.TemporaryDirectory(prefix="dos-bench-") as folder:
        port = free_port()
        config = write_settings(root, Path(folder), port)
        command = [part.replace("{config}", str(config)) for part in command]
        env = dict(os.environ, PYTHONPATH=str(root))
        print(f"server: cd {root} && PYTHONPATH={root} {' '.join(command)}")
        log = open(Path(folder) / "server.log", "wb")
        server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            if locked_out(port, 30) is None:
                print("the server did not answer C-ECHO within 30 s; its log:")
                print((Path(folder) / "server.log").read_text()[-3000:])
                return 1
            print(f"1. oversized PDU header + {args.mib} MiB: {probe_oversized(port, server.pid, args.mib)}")
            print(f"2. 30 silent sockets: {probe_silent(port, 30, args.bound)}")
            print(f"3. 25 connect-and-close sockets (HTTP): {probe_connect_and_close(port, 25, args.bound)}")
            print(f"4. 25 trickling A-ASSOCIATE-RQs: {probe_trickle(port, 25, args.bound)}")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
