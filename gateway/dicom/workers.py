"""Receiving DICOM in several processes on one port (``server.workers`` > 1).

One interpreter lock caps what one process receives: pynetdicom decodes every PDU in
Python. With ``server.workers`` = N > 1, ``gatekeeper serve`` (the main process) keeps the
scheduled jobs, ``/healthz`` and ``/metrics``, the review desk, the HL7 listener, the audit
trail and the DICOM TLS port, and starts N worker processes
(``python -m gateway.dicom.workers``); each opens the app itself (its own database
connection) and accepts associations on ``server.port`` with ``SO_REUSEPORT``, the kernel
spreading the connections over them.

What stays correct across processes, and how:

- **Association limits**: ``server.max_associations`` and ``server.max_associations_per_address``
  count the associations of every process, the TLS port's included, in slot files under
  the storage root (:mod:`.slots`); a dead process's slots are free at once.
- **The per-study lock** is a ``flock`` already (:mod:`store.placement`): it serialises
  processes as it does threads.
- **Recovery** (rule 4): each process has its own incoming folder, locked while it lives
  (:mod:`store.archive`); the main process recovers before starting the workers, and each
  worker at its start recovers the folders of processes that are gone, so a worker started
  again after a crash files what the dead one had written but not indexed. It never touches
  the folder of a process still running.
- **Rule 4 itself** holds in each worker as in one process: 0x0000 only after the row is
  committed.
- **Signals**: SIGTERM (and SIGINT) to the main process stops the workers first (each
  finishes its open associations), then the main process's own parts; SIGHUP is passed on,
  each worker reloading its settings as the main process does.
- **A worker that dies** (killed, crashed) is logged with how it ended and started again
  (at most once a second). A worker whose main process dies is killed by the kernel
  (``PR_SET_PDEATHSIG``), as the main process's own threads would be.
- **The port**: before starting the workers the main process binds ``server.port`` without
  ``SO_REUSEPORT`` for a moment, so a port already in use (another gatekeeper among them)
  stops the start with the usual message instead of being shared.

- **Metrics**: the main process serves ``/metrics`` for every process. Each worker counts
  its operations and refusals through a :class:`gateway.metrics.MetricsRelay`, one line per
  event on a pipe the main process reads (``--metrics-fd``); ``gatekeeper_associations_open``
  counts the slots held by every process. A worker's counts stay when it dies.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import logging.handlers
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from select import select as wait_readable

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger("gateway.dicom.workers")

#: Seconds a worker has to open the app, recover and listen before the start fails.
START_TIMEOUT = 60
#: Seconds between two starts of one worker that keeps dying.
RESTART_PAUSE = 1.0
PR_SET_PDEATHSIG = 1


class ReusePortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, bound with ``SO_REUSEPORT``: every worker listens on one port."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def count_of(settings) -> int:
    """How many receiving processes ``settings`` asks for (1: the main process receives itself)."""
    return max(1, settings.workers)


def probe_port(address: str, port: int) -> None:
    """Raise :class:`OSError` when ``address:port`` is in use (bound without ``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pynetdicom binds: TIME_WAIT is no use
        probe.bind((address, port))


class Workers:
    """The receiving worker processes of one ``gatekeeper serve``."""

    def __init__(self, settings, count: int, metrics=None) -> None:
        self.settings = settings
        self.count = count
        self.metrics = metrics  # a gateway.metrics.Metrics each worker counts into, or None
        self.processes: list[subprocess.Popen | None] = [None] * count
        self.restarts = 0
        self._started_at = [0.0] * count
        self._stopping = threading.Event()
        # The kernel kills a worker when the *thread* that started it ends (PR_SET_PDEATHSIG):
        # the supervisor, which starts the replacements, lives until every worker has stopped.
        self._done = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> "Workers":
        """Start every worker (all at once) and return once each listens; raises RuntimeError when one cannot."""
        try:
            launched = [self._launch(index) for index in range(self.count)]
            for index, read in enumerate(launched):
                self._wait_ready(index, read)
        except Exception:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="gatekeeper-workers", daemon=True)
        self._supervisor.start()
        return self

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p is not None]

    def _spawn(self, index: int) -> None:
        self._wait_ready(index, self._launch(index))

    def _launch(self, index: int) -> int:
        """Start worker ``index``; the pipe it says "ready" on."""
        read, write = os.pipe()
        command = [sys.executable, "-m", "gateway.dicom.workers", "--config", str(self.settings.source),
                   "--index", str(index), "--ready-fd", str(write), "--parent", str(os.getpid())]
        passed = [write]
        counts = None
        if self.metrics is not None:
            counts, counts_write = os.pipe()
            passed.append(counts_write)
            command += ["--metrics-fd", str(counts_write)]
        try:
            process = subprocess.Popen(command, pass_fds=passed, stdin=subprocess.DEVNULL)
        except BaseException:
            os.close(read)
            if counts is not None:
                os.close(counts)
            raise
        finally:
            for fd in passed:
                os.close(fd)
        if counts is not None:
            self.metrics.follow(counts, f"receiving worker {index}")  # until the worker's end closes it
        self._started_at[index] = time.monotonic()
        self.processes[index] = process
        return read

    def _wait_ready(self, index: int, read: int) -> None:
        process = self.processes[index]
        assert process is not None
        try:
            ready = _read_line(read, START_TIMEOUT)
        finally:
            os.close(read)
        if ready != "ready":
            process.kill()
            process.wait()
            raise RuntimeError(f"receiving worker {index} did not start (exit {process.returncode}); "
                               f"its reason is in the log above")
        log.info("receiving worker %d started (pid %d)", index, process.pid)

    def _supervise(self) -> None:
        while not self._done.wait(0.2):
            if self._stopping.is_set():
                continue
            for index, process in enumerate(self.processes):
                if process is None or process.poll() is None or self._stopping.is_set():
                    continue
                code = process.returncode
                how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
                log.error("receiving worker %d (pid %d) ended (%s); starting it again. Associations it had "
                          "open were cut; their senders retry what was not acknowledged.", index, process.pid, how)
                pause = RESTART_PAUSE - (time.monotonic() - self._started_at[index])
                if pause > 0 and self._stopping.wait(pause):
                    break
                try:
                    self._spawn(index)
                    self.restarts += 1
                except Exception as exc:  # logged; tried again on the next round
                    self.processes[index] = process
                    log.error("receiving worker %d could not be started again: %s", index, exc)

    def hangup(self) -> None:
        """Pass SIGHUP on to every worker (safe in a signal handler: no locks, no logging)."""
        for process in list(self.processes):
            if process is not None and process.returncode is None:
                try:
                    os.kill(process.pid, signal.SIGHUP)
                except OSError:
                    pass

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every worker and wait for it (it finishes its open associations); kill one that hangs."""
        self._stopping.set()
        live = [p for p in self.processes if p is not None and p.poll() is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        wait = timeout if timeout is not None else self.settings.network_timeout + 5
        deadline = time.monotonic() + wait
        for process in live:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("receiving worker pid %d did not stop within %ss; killed", process.pid, wait)
                process.kill()
                process.wait()
        self._done.set()
        if self._supervisor is not None:
            self._supervisor.join(START_TIMEOUT + 5)
        for process in self.processes:  # one the supervisor was starting again meanwhile
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(wait)
        log.info("receiving workers stopped")

    def problem(self) -> str | None:
        """For ``/healthz``: None while every worker runs, else what is wrong."""
        down = [i for i, p in enumerate(self.processes) if p is None or p.poll() is not None]
        if down:
            return f"receiving worker {', '.join(map(str, down))} of {self.count} not running (being started again)"
        return None


def start(app, metrics=None) -> Workers:
    """The workers of ``app``'s settings, listening and counting into ``metrics`` (a
    :class:`gateway.metrics.Metrics`, or None); raises GatekeeperError when the port is in use."""
    from gateway.settings import port_unavailable
    from infra.errors import GatekeeperError

    s = app.settings
    try:
        probe_port(s.bind_address, s.port)
    except OSError as exc:
        raise GatekeeperError(port_unavailable(exc, setting="server.port", address_setting="server.bind_address",
                                               address=s.bind_address, port=s.port, source=s.source)) from None
    try:
        return Workers(s, count_of(s), metrics).start()
    except RuntimeError as exc:
        raise GatekeeperError(f"{exc}. Fix what it names in {s.source}, or set server.workers = 1.") from None


def _read_line(fd: int, timeout: float) -> str:
    """The first line written to the pipe ``fd`` within ``timeout`` seconds ('' at EOF or timeout)."""
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not wait_readable([fd], [], [], left)[0]:
            return ""
        chunk = os.read(fd, 64)
        if not chunk:
            return ""
        data += chunk
    return data.split(b"\n", 1)[0].decode()


# -- the worker process ---------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the orphan notices below, at its next check
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _share_log_file() -> None:
    """The main process rotates ``log.file``; a worker appends and reopens the file once it was rotated."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.handlers.RotatingFileHandler):
            shared = logging.handlers.WatchedFileHandler(handler.baseFilename, encoding="utf-8")
            shared.setLevel(handler.level)
            shared.setFormatter(handler.formatter)
            for name, value in vars(handler).items():
                if name.startswith("_gatekeeper"):
                    setattr(shared, name, value)
            root.removeHandler(handler)
            handler.close()
            root.addHandler(shared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.dicom.workers",
                                     description="one receiving worker of gatekeeper serve (started by it)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--metrics-fd", type=int, help="the pipe to send the counts of /metrics on")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)

    from gateway import logs
    from gateway.app import open_app
    from gateway.dicom import server, storage
    from gateway.dicom.slots import SharedSlots
    from gateway.metrics import MetricsRelay
    from gateway.settings import load
    from infra.clock import clock_from_env

    settings = load(args.config)
    logs.configure(settings, service=True)
    _share_log_file()
    app = open_app(settings, clock_from_env())
    try:
        storage.on_start(app)  # files of processes that are gone (a worker that died among them)
        slots = SharedSlots.of(settings.storage_root, settings.max_associations)
        relay = MetricsRelay(args.metrics_fd) if args.metrics_fd is not None else None
        ae, handlers = server.build_ae(app, relay, slots)
        # The signals before the port: a SIGHUP passed on at once must not end the process.
        stop = threading.Event()
        stops: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=lambda: (stops.get(), stop.set()), name="gatekeeper-stop", daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stops.put(True))
        reloads = server._reloader(app)
        signal.signal(signal.SIGHUP, lambda *_: reloads.put(True))
        listener = ae.make_server((settings.bind_address, settings.port), evt_handlers=handlers,
                                  server_class=ReusePortServer)
        ae._servers.append(listener)  # as ae.start_server does: ae.shutdown and listener.shutdown find it
        listener.socket.listen(server.LISTEN_BACKLOG)
        threading.Thread(target=listener.serve_forever, name="gatekeeper-worker-accept", daemon=True).start()
        log.info("receiving worker %d (pid %d) listening on %s:%s", args.index, os.getpid(),
                 settings.bind_address, settings.port)
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
        stop.wait()
        log.info("receiving worker %d: finishing open associations", args.index)
        listener.shutdown()
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
