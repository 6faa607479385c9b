"""Receiving DICOM in several processes on one port (``server.workers`` > 1).

One interpreter lock caps what one process receives: pynetdicom decodes every PDU in
Python. With ``server.workers`` = N > 1, ``gatekeeper serve`` (the main process) keeps the
scheduled jobs, ``/healthz`` and ``/metrics``, the review desk, the HL7 listener, the audit
trail and the DICOM TLS port, and starts N worker processes
(``python -m gateway.dicom.workers``); each opens the app itself (its own database
connection) and receives the associations of ``server.port``. The main process listens on
that port and hands each connection it accepts to the least-loaded worker (:class:`Acceptor`).

What stays correct across processes, and how:

- **Spreading the connections**: the main process accepts on ``server.port`` and passes each
  connection's socket, with the peer address, to a worker over a Unix socket pair made for
  that worker when it starts (``--connections-fd``, ``SCM_RIGHTS``), then closes its own
  copy; the socket keeps every option it had (``TCP_NODELAY`` is set in the worker, on
  ``EVT_CONN_OPEN``, as in one process). The worker reports each connection's end on the
  same socket pair (one byte), so the main process knows how many each worker has open; a
  new connection goes to the running worker with the fewest (ties in turn). 4 associations
  at once on 2 workers are 2 and 2, always.
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
- **Signals**: SIGTERM (and SIGINT) to the main process stops the workers first (the main
  process stops accepting on ``server.port``; each worker finishes its open associations and
  closes a connection handed to it after that), then the main process's own parts; SIGHUP is
  passed on, each worker reloading its settings as the main process does.
- **A worker that dies** (killed, crashed) is logged with how it ended and started again
  (at most once a second). Until it is back, new connections go to the other workers (its
  end of the socket pair is closed: the main process sees it at once), and its count starts
  again at 0. With no worker running, a connection waits up to :data:`HOLD_SECONDS` for
  one, then is closed with a WARNING. A worker whose main process dies is killed by the
  kernel (``PR_SET_PDEATHSIG``), as the main process's own threads would be.
- **The port**: the main process binds ``server.port`` itself, before starting the workers,
  so a port already in use (another gatekeeper among them) stops the start with the usual
  message, and no worker binds it. It listens once every worker is ready: a connection the
  port accepts is served at once.

- **Metrics**: the main process serves ``/metrics`` for every process. Each worker counts
  its operations and refusals through a :class:`gateway.metrics.MetricsRelay`, one line per
  event on a pipe the main process reads (``--metrics-fd``); ``gatekeeper_associations_open``
  counts the slots held by every process. A worker's counts stay when it dies.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
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

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

log = logging.getLogger("gateway.dicom.workers")

#: Seconds a worker has to open the app, recover and listen before the start fails.
START_TIMEOUT = 60
#: Seconds between two starts of one worker that keeps dying.
RESTART_PAUSE = 1.0
#: Seconds a connection waits for a running worker (while one is started again) before it is closed.
HOLD_SECONDS = 2.0
#: Seconds the main process waits for a worker to take a connection's socket before trying another.
HAND_OVER_TIMEOUT = 5.0
#: What a worker sends on its socket pair when one of its connections has ended.
ENDED = b"."
PR_SET_PDEATHSIG = 1
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def count_of(settings) -> int:
    """How many receiving processes ``settings`` asks for (1: the main process receives itself)."""
    return max(1, settings.workers)


def bind_port(address: str, port: int, listen: bool = True) -> socket.socket:
    """A socket bound to ``address:port``, listening unless ``listen`` is false (the caller
    listens later); :class:`OSError` when the port is in use."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pynetdicom binds: TIME_WAIT is no use
        listener.bind((address, port))
        if listen:
            _listen(listener)
    except BaseException:
        listener.close()
        raise
    return listener


def _listen(listener: socket.socket) -> None:
    from gateway.dicom.server import LISTEN_BACKLOG

    listener.listen(LISTEN_BACKLOG)


def least_loaded(open_counts: list[int | None], last: int) -> int | None:
    """The index of the worker to hand the next connection to: the fewest open connections,
    a tie going to the first after ``last`` (round-robin); None stands for a worker that
    cannot take one (down, starting). None when none can."""
    n = len(open_counts)
    best = None
    for step in range(1, n + 1):
        index = (last + step) % n
        count = open_counts[index]
        if count is not None and (best is None or count < open_counts[best]):
            best = index
    return best


def hand_over(channel: socket.socket, connection: socket.socket, address) -> None:
    """Pass ``connection`` (its descriptor) and its peer ``address`` to the worker at the other end of ``channel``."""
    socket.send_fds(channel, [json.dumps(list(address)).encode()], [connection.fileno()], _NOSIGNAL)


def take_over(channel: socket.socket) -> tuple[socket.socket, tuple] | None:
    """The next connection handed over on ``channel`` and its peer address; None once the other end has closed."""
    while True:
        data, fds, _flags, _address = socket.recv_fds(channel, 1024, 1, _CLOEXEC)
        if not fds:
            if not data:
                return None
            continue  # a message without a descriptor: nothing to take
        connection = socket.socket(fileno=fds[0])
        connection.setblocking(True)  # as socketserver's accept leaves it
        try:
            address = tuple(json.loads(data.decode()))
        except ValueError:
            address = connection.getpeername()
        return connection, address


class _Seat:
    """What the main process knows of one worker: its end of the socket pair, and the
    connections handed to it and not ended yet."""

    def __init__(self) -> None:
        self.channel: socket.socket | None = None
        self.ready = False
        self.open = 0

    def leave(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.channel, self.ready, self.open = None, False, 0


class Acceptor:
    """The thread of the main process that accepts on ``server.port`` and hands each
    connection to the least-loaded worker (:func:`least_loaded`)."""

    def __init__(self, listener: socket.socket, seats: list[_Seat], alive, lock: threading.Lock) -> None:
        self.listener = listener
        self.seats = seats
        self.alive = alive  # alive(index) -> bool: the worker's process runs
        self.lock = lock
        self.last = len(seats) - 1
        self.held: list[tuple[socket.socket, tuple, float]] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gatekeeper-accept", daemon=True)

    def start(self) -> "Acceptor":
        self.listener.setblocking(False)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close the port; a connection held for want of a worker is closed."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.listener.close()
        for connection, _address, _until in self.held:
            _close(connection)
        self.held = []

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._round()
            except Exception:  # never let the port go unserved
                log.exception("accepting on the DICOM port failed; going on")
                time.sleep(0.1)

    def _round(self) -> None:
        with self.lock:
            channels = {seat.channel: index for index, seat in enumerate(self.seats) if seat.channel is not None}
        try:
            readable = wait_readable([self.listener, *channels], [], [], 0.05 if self.held else 0.2)[0]
        except (OSError, ValueError):  # a channel closed meanwhile (its worker ended): the next round
            return
        for channel in readable:
            if channel is not self.listener:
                self._ended(channels[channel], channel)
        if self.listener in readable:
            for _ in range(64):  # what the backlog holds now, without starving the end reports
                try:
                    connection, address = self.listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # ECONNABORTED, EMFILE: logged, the next one is tried
                    log.warning("accepting a connection on the DICOM port failed: %s", exc)
                    break
                self.held.append((connection, address, time.monotonic() + HOLD_SECONDS))
        if self.held:
            self._dispatch()

    def _ended(self, index: int, channel: socket.socket) -> None:
        """Read what worker ``index`` reported: connections ended, or its end closed (it died)."""
        try:
            data = channel.recv(64, socket.MSG_DONTWAIT)  # one report (SOCK_SEQPACKET); the next on the next round
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        with self.lock:
            seat = self.seats[index]
            if seat.channel is not channel:  # started again meanwhile
                return
            if not data:
                seat.leave()  # gone: the supervisor starts it again
                return
            seat.open = max(0, seat.open - data.count(ENDED))

    def _dispatch(self) -> None:
        now = time.monotonic()
        kept = []
        for connection, address, until in self.held:
            if self._hand(connection, address):
                continue
            if now < until:
                kept.append((connection, address, until))
            else:
                log.warning("connection from %s:%s closed: no receiving worker could take it within %.0f s (all "
                            "down or starting). The sender retries; if this goes on, see in the log above why the "
                            "workers end, or set server.workers = 1.", address[0], address[1], HOLD_SECONDS)
                _close(connection)
        self.held = kept

    def _hand(self, connection: socket.socket, address) -> bool:
        """Hand ``connection`` to the least-loaded worker that takes it; False when none can (it is kept)."""
        while True:
            with self.lock:
                for index, seat in enumerate(self.seats):
                    if seat.channel is not None and not self.alive(index):
                        seat.leave()
                index = least_loaded([s.open if s.ready and s.channel is not None else None for s in self.seats],
                                     self.last)
                if index is None:
                    return False
                seat = self.seats[index]
                channel = seat.channel
                seat.open += 1
                self.last = index
            try:
                hand_over(channel, connection, address)
            except OSError as exc:
                with self.lock:
                    if seat.channel is channel:
                        if exc.errno in (errno.EPIPE, errno.ECONNREFUSED, errno.ECONNRESET, errno.EBADF):
                            seat.leave()  # gone: the supervisor starts it again
                        else:  # full or slow (a timeout): not this one for this connection
                            seat.open -= 1
                            seat.ready = False
                            threading.Timer(1.0, self._ready_again, (seat, channel)).start()
                continue
            _close(connection)  # the worker has its own copy
            return True

    def _ready_again(self, seat: _Seat, channel: socket.socket) -> None:
        with self.lock:
            if seat.channel is channel:
                seat.ready = True


def _close(connection: socket.socket) -> None:
    try:
        connection.close()
    except OSError:
        pass


class Workers:
    """The receiving worker processes of one ``gatekeeper serve``, and the acceptor that hands
    them the connections of ``listener`` (the bound ``server.port``; None: nothing handed)."""

    def __init__(self, settings, count: int, metrics=None, listener: socket.socket | None = None) -> None:
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
        self._lock = threading.Lock()
        self._seats = [_Seat() for _ in range(count)]
        self._listener = listener
        self._acceptor: Acceptor | None = None

    def start(self) -> "Workers":
        """Start every worker (all at once) and return once each listens; raises RuntimeError when one cannot."""
        try:
            launched = [self._launch(index) for index in range(self.count)]
            for index, read in enumerate(launched):
                self._wait_ready(index, read)
            if self._listener is not None:
                # Only now: a connection the port accepts is served at once (a service manager
                # may take the port answering for the service being up).
                _listen(self._listener)
                self._acceptor = Acceptor(self._listener, self._seats, self._alive, self._lock).start()
        except Exception:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="gatekeeper-workers", daemon=True)
        self._supervisor.start()
        return self

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p is not None]

    def open_counts(self) -> list[int | None]:
        """Per worker, the connections handed to it and not ended yet (None: down or starting)."""
        with self._lock:
            return [s.open if s.ready and s.channel is not None else None for s in self._seats]

    def _alive(self, index: int) -> bool:
        process = self.processes[index]
        return process is not None and process.poll() is None

    def _spawn(self, index: int) -> None:
        self._wait_ready(index, self._launch(index))

    def _launch(self, index: int) -> int:
        """Start worker ``index``; the pipe it says "ready" on."""
        read, write = os.pipe()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.settimeout(HAND_OVER_TIMEOUT)
        command = [sys.executable, "-m", "gateway.dicom.workers", "--config", str(self.settings.source),
                   "--index", str(index), "--ready-fd", str(write), "--parent", str(os.getpid()),
                   "--connections-fd", str(theirs.fileno())]
        passed = [write, theirs.fileno()]
        counts = None
        if self.metrics is not None:
            counts, counts_write = os.pipe()
            passed.append(counts_write)
            command += ["--metrics-fd", str(counts_write)]
        try:
            process = subprocess.Popen(command, pass_fds=passed, stdin=subprocess.DEVNULL)
        except BaseException:
            os.close(read)
            mine.close()
            if counts is not None:
                os.close(counts)
            raise
        finally:
            theirs.close()
            for fd in passed[:1] + passed[2:]:
                os.close(fd)
        if counts is not None:
            self.metrics.follow(counts, f"receiving worker {index}")  # until the worker's end closes it
        self._started_at[index] = time.monotonic()
        with self._lock:
            self._seats[index].leave()
            self._seats[index].channel = mine  # not ready yet: nothing handed to it
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
            with self._lock:
                self._seats[index].leave()
            raise RuntimeError(f"receiving worker {index} did not start (exit {process.returncode}); "
                               f"its reason is in the log above")
        with self._lock:
            seat = self._seats[index]
            if seat.channel is not None:
                seat.ready, seat.open = True, 0
        log.info("receiving worker %d started (pid %d)", index, process.pid)

    def _supervise(self) -> None:
        while not self._done.wait(0.2):
            if self._stopping.is_set():
                continue
            for index, process in enumerate(self.processes):
                if process is None or process.poll() is None or self._stopping.is_set():
                    continue
                with self._lock:
                    self._seats[index].leave()
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
        """Stop accepting, then SIGTERM every worker and wait for it (it finishes its open
        associations); kill one that hangs."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.stop()
        elif self._listener is not None:
            self._listener.close()
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
        with self._lock:
            for seat in self._seats:
                seat.leave()
        log.info("receiving workers stopped")

    def problem(self) -> str | None:
        """For ``/healthz``: None while every worker runs, else what is wrong."""
        down = [i for i, p in enumerate(self.processes) if p is None or p.poll() is not None]
        if down:
            return f"receiving worker {', '.join(map(str, down))} of {self.count} not running (being started again)"
        return None


def start(app, metrics=None) -> Workers:
    """The workers of ``app``'s settings, taking the connections of ``server.port`` (bound here)
    and counting into ``metrics`` (a :class:`gateway.metrics.Metrics`, or None); raises
    GatekeeperError when the port is in use."""
    from gateway.settings import port_unavailable
    from infra.errors import GatekeeperError

    s = app.settings

    def in_use(exc: OSError) -> GatekeeperError:
        return GatekeeperError(port_unavailable(exc, setting="server.port", address_setting="server.bind_address",
                                                address=s.bind_address, port=s.port, source=s.source))

    try:  # bound before the workers start, listening once they are ready (Workers.start)
        listener = bind_port(s.bind_address, s.port, listen=False)
    except OSError as exc:
        raise in_use(exc) from None
    try:
        return Workers(s, count_of(s), metrics, listener).start()
    except RuntimeError as exc:
        raise GatekeeperError(f"{exc}. Fix what it names in {s.source}, or set server.workers = 1.") from None
    except OSError as exc:  # listen: another process took the port meanwhile
        raise in_use(exc) from None


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


class _Handler(RequestHandler):
    """pynetdicom's request handler, keeping the association it starts (to wait for its end)."""

    assoc = None

    def _create_association(self):
        self.assoc = super()._create_association()
        return self.assoc


class HandedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server for connections the main process accepted and handed over
    (:meth:`take`): it neither binds nor listens, and has no ``serve_forever``. Each
    connection's thread waits for its association to end and then calls ``on_end``.

    Stop it with :meth:`close` (never ``shutdown()``: that waits for a ``serve_forever`` that
    never ran): it waits for the open associations."""

    def __init__(self, *args, on_end=None, **kwargs) -> None:
        self.on_end = on_end or (lambda: None)
        super().__init__(*args, request_handler=_Handler, **kwargs)

    def server_bind(self) -> None:  # the main process holds the port
        pass

    def server_activate(self) -> None:
        pass

    def take(self, connection: socket.socket, address) -> None:
        """Serve ``connection`` as if this server had accepted it (socketserver's ``_handle_request_noblock``)."""
        if not self.verify_request(connection, address):
            self.shutdown_request(connection)
            self.on_end()
            return
        try:
            self.process_request(connection, address)  # a thread, which reports the end
        except Exception:
            self.handle_error(connection, address)
            self.shutdown_request(connection)
            self.on_end()
        except BaseException:
            self.shutdown_request(connection)
            self.on_end()
            raise

    def finish_request(self, request, client_address) -> None:
        try:
            handler = self.RequestHandlerClass(request, client_address, self)
            if handler.assoc is not None:
                handler.assoc.join()  # the association thread: until released, aborted or cut
        finally:
            self.on_end()

    def close(self) -> None:
        """Close the server; returns once every association it serves has ended."""
        self.server_close()
        if self in self.ae._servers:
            self.ae._servers.remove(self)


def _receive(channel: socket.socket, listener: HandedServer, stopping: threading.Event, index: int) -> None:
    """The worker's thread in place of ``serve_forever``: each connection handed over on ``channel`` to ``listener``."""
    while True:
        try:
            taken = take_over(channel)
        except OSError as exc:
            if not stopping.is_set():
                log.error("receiving worker %d: cannot read the connections of the main process (%s); none "
                          "will come to this process any more", index, exc)
            return
        if taken is None:  # the main process closed its end: it stops
            return
        connection, address = taken
        if stopping.is_set():  # arrived once the stop had begun: the sender tries again later
            _close(connection)
            listener.on_end()
            continue
        listener.take(connection, address)


def _reporter(channel: socket.socket):
    """``on_end``: tell the main process one connection has ended (once the main process is gone, nothing)."""
    def ended() -> None:
        try:
            channel.send(ENDED, _NOSIGNAL)
        except OSError:
            pass

    return ended


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
    parser.add_argument("--connections-fd", type=int, required=True,
                        help="the Unix socket the main process hands the connections of server.port on")
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
        channel = socket.socket(fileno=args.connections_fd)
        listener = ae.make_server((settings.bind_address, settings.port), evt_handlers=handlers,
                                  server_class=HandedServer, on_end=_reporter(channel))
        ae._servers.append(listener)  # as ae.start_server does: ae.shutdown finds it
        stopping = threading.Event()
        threading.Thread(target=_receive, args=(channel, listener, stopping, args.index),
                         name="gatekeeper-worker-receive", daemon=True).start()
        log.info("receiving worker %d (pid %d) listening on %s:%s (connections handed over by the main process)",
                 args.index, os.getpid(), settings.bind_address, settings.port)
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
        stop.wait()
        stopping.set()
        log.info("receiving worker %d: finishing open associations", args.index)
        listener.close()
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
