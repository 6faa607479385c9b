"""Receiving in several processes on one port (``server.workers``, gateway/dicom/workers.py).

The association limits count across processes (shared slot files, gateway/dicom/slots.py);
two workers file instances of one study at once; a worker killed with SIGKILL in the middle
of a transfer loses no acknowledged instance, and is started again.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind, MRImageStorage, Verification

from gateway.dicom.slots import SharedSlots
from gateway.dicom.workers import bind_port
from tests.conftest import EXAMPLES, ROOT, free_port
from tests.dicom_factory import make_instance
from tests.e2e import Gateway
from tests.test_crash import COUNT, KILL_AFTER, SENDER, acknowledged, assert_nothing_lost

NOW = {"GATEKEEPER_NOW": "2026-11-30T08:00:00"}


# -- the shared slots, as two processes see them ----------------------------------------------


def test_slots_count_every_holder_up_to_the_limit(tmp_path):
    one, other = SharedSlots(tmp_path, 3), SharedSlots(tmp_path, 3)  # two processes' views of one folder
    taken = [one.take("10.0.0.1", 0)[0], other.take("10.0.0.2", 0)[0], one.take("10.0.0.3", 0)[0]]
    assert all(taken)
    slot, refused = other.take("10.0.0.4", 0)
    assert slot is None and refused == "3 associations already (server.max_associations = 3)"
    assert sorted(one.held()) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    taken[1].release()
    slot, refused = one.take("10.0.0.4", 0)
    assert slot is not None and refused is None
    assert sorted(other.held()) == ["10.0.0.1", "10.0.0.3", "10.0.0.4"]
    taken[1].release()  # twice is harmless


def test_slots_per_address_limit_and_no_cap(tmp_path):
    one, other = SharedSlots(tmp_path, 10), SharedSlots(tmp_path, 10)
    assert one.take("10.0.0.1", 2)[0] and other.take("10.0.0.1", 2)[0]
    slot, refused = one.take("10.0.0.1", 2)
    assert slot is None
    assert refused == "2 associations from 10.0.0.1 already (server.max_associations_per_address = 2)"
    assert other.take("10.0.0.2", 2)[0] is not None  # another address is not capped by it
    assert other.take("10.0.0.1", 0)[0] is not None  # 0: no cap of its own


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from gateway.dicom.slots import SharedSlots
    slot, _ = SharedSlots(sys.argv[1], 2).take("10.9.9.9", 0)
    print("held", flush=True)
    time.sleep(120)
""")


def test_a_killed_process_gives_its_slots_back(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT)), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        slots = SharedSlots(tmp_path, 2)
        assert slots.held() == ["10.9.9.9"]
        mine = slots.take("10.0.0.1", 0)[0]
        assert slots.take("10.0.0.2", 0)[0] is None  # full: the other process holds one
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert slots.held() == ["10.0.0.1"]
        assert slots.take("10.0.0.2", 0)[0] is not None
        mine.release()
    finally:
        holder.kill()
        holder.wait()


def test_the_main_process_bind_sees_a_port_in_use():
    port = free_port()
    bind_port("127.0.0.1", port).close()  # free
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(OSError):
            bind_port("127.0.0.1", port)
    with bind_port("127.0.0.1", port), pytest.raises(OSError):  # nor twice: no SO_REUSEPORT
        bind_port("127.0.0.1", port)


def test_healthz_names_a_worker_that_is_down(tmp_path):
    from gateway.dicom.workers import Workers
    from gateway.http.health import Health

    class Settings:
        source, network_timeout = tmp_path / "settings.toml", 1

    workers = Workers(Settings(), 2)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        workers.processes = [alive, alive]
        assert Health(None, workers)._dicom() is None
        workers.processes = [alive, dead]
        assert Health(None, workers)._dicom() == "receiving worker 1 of 2 not running (being started again)"
    finally:
        alive.kill()
        alive.wait()


# -- serve with workers ------------------------------------------------------------------------


def worker_pids(gw: Gateway, count: int, timeout: float = 30) -> list[int]:
    """The pids of the ``count`` workers running now (the last started of each index)."""
    deadline = time.monotonic() + timeout
    while True:
        started = dict(re.findall(r"receiving worker (\d+) started \(pid (\d+)\)", gw.log()))
        if len(started) == count and "listening as" in gw.log():
            return [int(started[str(i)]) for i in range(count)]
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)


def owner_of(client_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server side of the connection from local ``client_port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == client_port:
                inodes.add(fields[9])
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return pid
        except OSError:
            continue
    return None


def serving(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds an established connection on its local ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    return any(os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] in inodes for fd in os.listdir(f"/proc/{pid}/fd"))


def associate(port: int, calling: str = "MR1"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage)
    return ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")


def local_port(assoc) -> int:
    return assoc.dul.socket.socket.getsockname()[1]


def spread(gw: Gateway, pids: list[int], wanted: int, tries: int = 40) -> list:
    """``wanted`` established associations that between them reach every worker."""
    kept, owners = [], set()
    for _ in range(tries):
        assoc = associate(gw.port)
        assert assoc.is_established
        owner = owner_of(local_port(assoc), pids)
        if owner not in owners or len(kept) + len(set(pids) - owners) < wanted:
            kept.append(assoc)
            owners.add(owner)
        else:
            assoc.release()
        if len(kept) == wanted and owners == set(pids):
            return kept
        if len(kept) == wanted:
            kept.pop().release()
    raise AssertionError(f"the kernel never spread {wanted} associations over {pids}")


def test_association_limit_counts_across_workers(tmp_path):
    gw = Gateway(tmp_path, server={"workers": "2", "max_associations": "4", "max_associations_per_address": "0"})
    gw.start()
    try:
        pids = worker_pids(gw, 2)
        held = spread(gw, pids, 4)  # the limit reached, with associations in both workers
        refused = [associate(gw.port) for _ in range(6)]
        assert [a.is_established for a in refused] == [False] * 6, "a worker admitted beyond the shared limit"
        assert [a.is_rejected for a in refused] == [True] * 6
        assert gw.logged("4 associations already (server.max_associations = 4)")
        held.pop().release()
        again = associate(gw.port)
        assert again.is_established  # a released slot is free for any worker
        held.append(again)
        for assoc in held:
            assoc.release()
    finally:
        assert gw.stop() == 0, gw.log()


def test_per_address_limit_counts_across_workers(tmp_path):
    gw = Gateway(tmp_path, server={"workers": "2", "max_associations": "10", "max_associations_per_address": "2"})
    gw.start()
    try:
        pids = worker_pids(gw, 2)
        held = spread(gw, pids, 2)
        refused = [associate(gw.port) for _ in range(6)]
        assert not any(a.is_established for a in refused)
        assert gw.logged("2 associations from 127.0.0.1 already (server.max_associations_per_address = 2)")
        for assoc in held:
            assoc.release()
    finally:
        assert gw.stop() == 0, gw.log()


def test_two_workers_file_one_study_at_once(tmp_path):
    db = sqlite3.connect  # opened after the run
    two_workers_file_one_study(tmp_path, None, lambda: db(tmp_path / "var" / "gatekeeper.db"))


def test_two_workers_file_one_study_at_once_on_postgresql(tmp_path, pg_url):
    import psycopg2

    from tests.test_schema import _drop_everything

    _drop_everything(pg_url)
    try:
        two_workers_file_one_study(tmp_path, pg_url, lambda: _PgRows(psycopg2.connect(pg_url)))
    finally:
        _drop_everything(pg_url)


class _PgRows:
    """``execute(sql, args)`` with SQLite's ``?`` placeholders, for the checks below."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def execute(self, sql: str, args=()):
        cursor = self.conn.cursor()
        cursor.execute(sql.replace("?", "%s"), args)
        return cursor


def two_workers_file_one_study(tmp_path, database_url, rows_of):
    gw = Gateway(tmp_path, env=NOW, server={"workers": "2"}, database_url=database_url)
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
    gw.start()
    try:
        pids = worker_pids(gw, 2)
        assocs = spread(gw, pids, 2)
        study = generate_uid()
        statuses: list[list[int]] = [[], []]
        sent: list[list[str]] = [[], []]
        start = threading.Barrier(2)

        def send(n: int) -> None:
            start.wait()
            for i in range(30):
                # the second half of the study does not match its order: the study turns held
                # while both workers are filing it, and its archived files move
                ds = make_instance(StudyInstanceUID=study, StudyDate="20261201", InstanceNumber=str(n * 100 + i),
                                   PatientBirthDate="19800302" if i >= 15 and n == 1 else "19800203")
                sent[n].append(ds.SOPInstanceUID)
                statuses[n].append(assocs[n].send_c_store(ds).Status)

        threads = [threading.Thread(target=send, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for assoc in assocs:
            assoc.release()
        assert statuses == [[0] * 30, [0] * 30], gw.log()
    finally:
        assert gw.stop() == 0, gw.log()
    store = tmp_path / "var" / "store"
    db = rows_of()
    rows = dict(db.execute("SELECT sop_instance_uid, path FROM instances WHERE study_instance_uid = ?", (study,)))
    assert sorted(rows) == sorted(sent[0] + sent[1])
    assert db.execute("SELECT state, pending_files FROM studies WHERE study_instance_uid = ?",
                      (study,)).fetchone() == ("held", None)
    assert {path.split("/")[0] for path in rows.values()} == {"held"}
    files = sorted(p for p in (store / "held").rglob("*.dcm"))
    assert len(files) == 60 and not list((store / "archive").rglob("*.dcm"))
    for file in files:
        assert rows[file.stem] == str(file.relative_to(store))


def test_a_worker_killed_mid_transfer_loses_nothing_acknowledged(tmp_path):
    gw = Gateway(tmp_path, env=NOW, server={"workers": "2"})
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
    gw.start()
    store = tmp_path / "var" / "store"
    acked_file = tmp_path / "acked.txt"
    script = tmp_path / "sender.py"
    script.write_text(SENDER.format(root=str(ROOT)))
    pids = worker_pids(gw, 2)
    sender = subprocess.Popen([sys.executable, str(script), str(gw.port), str(acked_file), str(COUNT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged(acked_file)) < KILL_AFTER:
            assert time.monotonic() < deadline, f"only {len(acknowledged(acked_file))} acknowledged in 60 s:\n{gw.log()}"
            assert sender.poll() is None, "the sender stopped before the kill"
            time.sleep(0.005)
        victim = next(pid for pid in pids if serving(pid, gw.port))  # a worker with an association of the sender
        os.kill(victim, signal.SIGKILL)
        sender.wait(120)
        assert gw.logged(f"(pid {victim}) ended (killed by signal 9); starting it again", 20), gw.log()
        deadline = time.monotonic() + 30
        while victim in worker_pids(gw, 2):  # its index started again, under a new pid
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        assert len(set(worker_pids(gw, 2)) - set(pids)) == 1
        assert gw.process.poll() is None  # the main process runs on
    finally:
        if sender.poll() is None:
            sender.kill()
    acked = acknowledged(acked_file)
    assert KILL_AFTER <= len(acked) < COUNT, "the kill must land in the middle of the sending"
    # the restarted worker recovered what the dead one left: its incoming folder is gone
    assert not [p for p in (store / "incoming").iterdir() if p.name.startswith(f"p{victim}-")]
    assert gw.stop() == 0, gw.log()

    assert_nothing_lost(tmp_path / "var" / "gatekeeper.db", store, acked)
    assert list((store / "incoming").rglob("*.dcm")) == [] and not [
        p for p in (store / "incoming").iterdir() if p.is_dir()], gw.log()  # a clean stop leaves no incoming folder


def test_sighup_reaches_every_worker_and_sigterm_stops_them(tmp_path):
    gw = Gateway(tmp_path, server={"workers": "2"})
    gw.start()
    pids = worker_pids(gw, 2)
    gw.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while gw.log().count("settings reloaded from") < 3:  # the main process and both workers
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)
    assert gw.stop() == 0, gw.log()
    assert gw.log().count("finishing open associations") == 3
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_workers_write_the_log_file_of_the_main_process(tmp_path):
    gw = Gateway(tmp_path, server={"workers": "2"})
    gw.settings.write_text(gw.settings.read_text().replace('file = ""', 'file = "serve-file.log"', 1))
    gw.start()
    try:
        pids = worker_pids_in(tmp_path / "serve-file.log", 2)
        assoc = associate(gw.port)
        assert assoc.is_established
        assoc.release()
    finally:
        assert gw.stop() == 0, gw.log()
    text = (tmp_path / "serve-file.log").read_text()
    assert text.count("finishing open associations") == 3  # both workers and the main process
    assert "association accepted: calling MR1" in text
    assert all(f"(pid {pid}) listening on" in text for pid in pids)


def worker_pids_in(path: Path, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        started = dict(re.findall(r"receiving worker (\d+) started \(pid (\d+)\)", text))
        if len(started) == count and "listening as" in text:
            return [int(started[str(i)]) for i in range(count)]
        assert time.monotonic() < deadline, text
        time.sleep(0.05)


def test_a_second_gatekeeper_on_the_same_port_does_not_share_it(tmp_path):
    (tmp_path / "first").mkdir()
    first = Gateway(tmp_path / "first", server={"workers": "2"})
    first.start()
    try:
        worker_pids(first, 2)
        (tmp_path / "second").mkdir()
        second = Gateway(tmp_path / "second", port=first.port, server={"workers": "2"})
        result = subprocess.run(second_command(), env=second.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result.stderr
        assert f"port {first.port}" in result.stderr and "already in use" in result.stderr
        assert "receiving worker" not in result.stderr  # no worker was started
    finally:
        assert first.stop() == 0, first.log()


def second_command() -> list[str]:
    from tests.e2e import gatekeeper_command

    return gatekeeper_command() + ["serve"]


# -- /metrics with workers ---------------------------------------------------------------------


def with_metrics(gw: Gateway) -> int:
    """Turn on ``/metrics`` (on a free port) in ``gw``'s settings; the port."""
    text = gw.settings.read_text()
    head, metrics = text.split("\n[metrics]\n", 1)
    assert re.match(r"(#[^\n]*\n)*port = 0\n", metrics)  # write_settings turned metrics off
    port = free_port()
    gw.settings.write_text(head + "\n[metrics]\n" + metrics.replace("port = 0\n", f"port = {port}\n", 1))
    return port


def counted(port: int, name: str, **labels) -> float:
    from tests.test_metrics import scrape

    return scrape(port).get((name, tuple(sorted(labels.items()))), 0.0)


def wait_counted(port: int, wanted: float, name: str, **labels) -> float:
    """The value once it is ``wanted`` (a worker's counts reach the main process a moment later)."""
    deadline = time.monotonic() + 10
    while (found := counted(port, name, **labels)) != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


STORES = "gatekeeper_dicom_operation_duration_seconds_count"


def test_metrics_count_what_every_worker_did_and_keep_it_when_one_dies(tmp_path):
    from tests.test_metrics import _worklist_query

    gw = Gateway(tmp_path, env=NOW, server={"workers": "2", "max_associations": "3",
                                            "max_associations_per_address": "0"})
    metrics = with_metrics(gw)
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
    gw.start()
    try:
        pids = worker_pids(gw, 2)
        assert wait_counted(metrics, 0, "gatekeeper_associations_open") == 0
        held = spread(gw, pids, 2)  # one association in each worker
        assert wait_counted(metrics, 2, "gatekeeper_associations_open") == 2
        for assoc in held:  # one C-STORE in each worker: a total of 2 needs both workers' counts
            assert assoc.send_c_store(make_instance(StudyDate="20261130")).Status == 0
        assert wait_counted(metrics, 2, STORES, operation="C-STORE", status="0x0000") == 2
        ae = AE(ae_title="MR1")
        ae.add_requested_context(ModalityWorklistInformationFind)
        console = ae.associate("127.0.0.1", gw.port, ae_title="GATEKEEPER")  # the last of the 3 slots
        assert console.is_established
        assert _worklist_query(console)[-1] == 0
        assert wait_counted(metrics, 1, STORES, operation="C-FIND", status="0x0000") == 1
        assert wait_counted(metrics, 3, "gatekeeper_associations_open") == 3
        refused = associate(gw.port)
        assert refused.is_rejected
        assert wait_counted(metrics, 1, "gatekeeper_associations_refused_total", rule="server.max_associations") == 1
        console.release()

        victim = owner_of(local_port(held[0]), pids)
        os.kill(victim, signal.SIGKILL)
        assert gw.logged(f"(pid {victim}) ended (killed by signal 9); starting it again", 20), gw.log()
        deadline = time.monotonic() + 30
        while victim in worker_pids(gw, 2):
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        # the dead worker's counts stay; its association's slot is free
        assert counted(metrics, STORES, operation="C-STORE", status="0x0000") == 2
        assert wait_counted(metrics, 1, "gatekeeper_associations_open") == 1
        held[1].release()
        again = spread(gw, worker_pids(gw, 2), 2)  # the started-again worker counts too
        for assoc in again:
            assert assoc.send_c_store(make_instance(StudyDate="20261130")).Status == 0
            assoc.release()
        assert wait_counted(metrics, 4, STORES, operation="C-STORE", status="0x0000") == 4
        assert wait_counted(metrics, 0, "gatekeeper_associations_open") == 0
    finally:
        assert gw.stop() == 0, gw.log()
    assert "counts not passed to the main process" not in gw.log()


def test_workers_default_to_one_per_core(tmp_path):
    from gateway.settings import load

    shipped = (ROOT / "settings.toml").read_text()
    assert re.search(r"^workers = 0$", shipped, flags=re.M)
    path = tmp_path / "settings.toml"
    path.write_text(shipped)
    assert load(path, environ={}).workers == (os.cpu_count() or 1)
    path.write_text(re.sub(r"^workers = 0\n", "", shipped, flags=re.M))  # not set: the declared default
    assert load(path, environ={}).workers == (os.cpu_count() or 1)
    path.write_text(re.sub(r"^workers = 0$", "workers = 1", shipped, flags=re.M))
    assert load(path, environ={}).workers == 1
    path.write_text(re.sub(r"^workers = 0$", "workers = 3", shipped, flags=re.M))
    assert load(path, environ={}).workers == 3


# -- handing the connections to the least-loaded worker ------------------------------------------


def test_least_loaded_takes_the_fewest_and_turns_on_ties():
    from gateway.dicom.workers import least_loaded

    assert least_loaded([2, 1, 3], last=0) == 1
    assert least_loaded([1, 1], last=0) == 1  # a tie: the one after the last chosen
    assert least_loaded([1, 1], last=1) == 0
    assert least_loaded([0, 0, 0], last=2) == 0
    assert least_loaded([None, 5], last=1) == 1  # down or starting: skipped, whatever its count
    assert least_loaded([0, None, 0], last=0) == 2
    assert least_loaded([None, None], last=0) is None
    assert least_loaded([], last=0) is None


def tcp_pair():
    """A connected TCP pair on loopback: (client, the accepted side, its peer address)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, address = server.accept()
    return client, accepted, address


def test_a_handed_over_socket_keeps_its_options_and_its_peer():
    import socket

    from gateway.dicom.workers import hand_over, take_over

    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client, accepted, address = tcp_pair()
    try:
        accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        hand_over(main_end, accepted, address)
        accepted.close()  # the main process closes its copy: the connection stays, in the worker
        taken, peer = take_over(worker_end)
        with taken:
            assert peer == address and taken.getpeername() == address
            assert taken.family == socket.AF_INET and taken.type == socket.SOCK_STREAM
            assert taken.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert taken.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert taken.gettimeout() is None  # blocking, as an accepted socket
            client.sendall(b"A-ASSOCIATE")
            assert taken.recv(64) == b"A-ASSOCIATE"
            taken.sendall(b"ok")
            assert client.recv(64) == b"ok"
        main_end.close()
        assert take_over(worker_end) is None  # the main process closed its end
    finally:
        for s in (client, main_end, worker_end):
            s.close()


class _Seats:
    """The main-process side of an :class:`Acceptor` with ``n`` seats, their worker ends in ``ends``."""

    def __init__(self, n: int, ready: bool = True) -> None:
        import socket
        from gateway.dicom.workers import Acceptor, _Seat, bind_port

        self.seats = [_Seat() for _ in range(n)]
        self.ends = []
        for seat in self.seats:
            seat.channel, end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            seat.channel.settimeout(2)
            seat.ready = ready
            self.ends.append(end)
        self.up = [True] * n
        self.port = free_port()
        self.acceptor = Acceptor(bind_port("127.0.0.1", self.port), self.seats, lambda i: self.up[i],
                                 threading.Lock()).start()

    def connect(self):
        import socket

        return socket.create_connection(("127.0.0.1", self.port))

    def taken(self, index: int, timeout: float = 10):
        """The next connection handed to seat ``index``'s worker (a socket and its address)."""
        from gateway.dicom.workers import take_over

        self.ends[index].settimeout(timeout)
        return take_over(self.ends[index])

    def counts(self, wanted=None, timeout: float = 10) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            counts = [seat.open for seat in self.seats]
            if wanted is None or counts == wanted or time.monotonic() > deadline:
                return counts
            time.sleep(0.01)

    def close(self) -> None:
        self.acceptor.stop()
        for seat, end in zip(self.seats, self.ends):
            seat.leave()
            end.close()


def test_the_acceptor_counts_open_connections_and_their_ends():
    from gateway.dicom.workers import ENDED

    seats = _Seats(2)
    clients, handed = [], []
    try:
        for n in range(4):
            clients.append(seats.connect())
            handed.append(seats.taken(n % 2)[0])  # 0, 1, 0, 1: the fewest, ties in turn
        assert seats.counts() == [2, 2]
        seats.ends[1].send(ENDED)
        assert seats.counts([2, 1]) == [2, 1]
        clients.append(seats.connect())
        handed.append(seats.taken(1)[0])  # to the one with fewer
        assert seats.counts() == [2, 2]
        seats.ends[0].send(ENDED)
        seats.ends[0].send(ENDED)
        assert seats.counts([0, 2]) == [0, 2]
        for _ in range(2):
            clients.append(seats.connect())
            handed.append(seats.taken(0)[0])
        assert seats.counts() == [2, 2]
        seats.ends[1].close()  # worker 1 died: its count is gone, everything goes to worker 0
        deadline = time.monotonic() + 10
        while seats.seats[1].channel is not None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert seats.seats[1].open == 0
        for _ in range(3):
            clients.append(seats.connect())
            handed.append(seats.taken(0)[0])
        assert seats.counts() == [5, 0]
    finally:
        for s in clients + handed:
            s.close()
        seats.close()


def test_the_acceptor_skips_a_worker_whose_process_has_ended():
    seats = _Seats(2)
    seats.up[0] = False  # its end of the socket pair still open: the process check finds it
    clients, handed = [], []
    try:
        for _ in range(3):
            clients.append(seats.connect())
            handed.append(seats.taken(1)[0])
        assert seats.seats[0].channel is None and seats.counts() == [0, 3]
    finally:
        for s in clients + handed:
            s.close()
        seats.close()


def test_a_connection_waits_briefly_for_a_worker_then_is_closed_with_a_warning(caplog):
    import logging

    seats = _Seats(1, ready=False)  # the only worker is starting
    first = seats.connect()
    try:
        time.sleep(0.5)
        seats.seats[0].ready = True  # started within the hold: the held connection goes to it
        taken, _address = seats.taken(0)
        taken.sendall(b"hello")
        assert first.recv(16) == b"hello"
        taken.close()
        seats.seats[0].leave()  # down now, and not started again
        with caplog.at_level(logging.WARNING, logger="gateway.dicom.workers"):
            second = seats.connect()
            second.settimeout(15)
            assert second.recv(16) == b""  # closed (after the hold), not left hanging
            second.close()
        warning = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warning) == 1
        assert "no receiving worker could take it within 2 s" in warning[0].getMessage()
        assert "set server.workers = 1" in warning[0].getMessage()
    finally:
        first.close()
        seats.close()


def test_a_worker_closes_a_connection_handed_to_it_once_its_stop_has_begun():
    import socket

    from gateway.dicom.workers import _receive, hand_over

    class Listener:
        def __init__(self) -> None:
            self.taken, self.ended = [], 0

        def take(self, connection, address) -> None:
            self.taken.append((connection, address))

        def on_end(self) -> None:
            self.ended += 1

    main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener, stopping = Listener(), threading.Event()
    receiver = threading.Thread(target=_receive, args=(worker_end, listener, stopping, 0), daemon=True)
    receiver.start()
    before, accepted, address = tcp_pair()
    hand_over(main_end, accepted, address)
    accepted.close()
    deadline = time.monotonic() + 10
    while not listener.taken:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert listener.taken[0][1] == address and listener.ended == 0
    stopping.set()
    after, accepted, address = tcp_pair()
    hand_over(main_end, accepted, address)
    accepted.close()
    after.settimeout(10)
    assert after.recv(16) == b""  # closed by the worker
    deadline = time.monotonic() + 10
    while listener.ended == 0 and time.monotonic() < deadline:  # reported just after the close
        time.sleep(0.01)
    assert len(listener.taken) == 1 and listener.ended == 1  # not served, and reported as ended
    main_end.close()
    receiver.join(10)
    assert not receiver.is_alive()  # the main process closed its end: the thread ends
    for s in (before, after, worker_end, listener.taken[0][0]):
        s.close()


def owners(assocs, pids: list[int]) -> list[int | None]:
    return [owner_of(local_port(assoc), pids) for assoc in assocs]


def ended_in(pid: int, assoc, pids: list[int], timeout: float = 10) -> None:
    """Wait until worker ``pid`` closed its side of the released ``assoc`` and had a moment to say so."""
    port = local_port(assoc)
    assoc.release()
    assert pid is not None
    deadline = time.monotonic() + timeout
    while owner_of(port, [pid]) is not None:
        assert time.monotonic() < deadline, "the worker kept a released association's connection"
        time.sleep(0.02)
    time.sleep(0.5)  # its one-byte report, read by the main process's acceptor thread


def test_associations_held_open_at_once_are_spread_evenly(tmp_path):
    gw = Gateway(tmp_path, server={"workers": "2", "max_associations": "20", "max_associations_per_address": "0"})
    gw.start()
    held = []
    try:
        pids = worker_pids(gw, 2)
        held = [associate(gw.port) for _ in range(4)]
        assert all(a.is_established for a in held)
        found = owners(held, pids)
        assert sorted(found.count(pid) for pid in pids) == [2, 2], found
        held += [associate(gw.port) for _ in range(2)]
        found = owners(held, pids)
        assert [found.count(pid) for pid in pids] == [3, 3], found
        # one ends in worker 0: the next new one goes there, the one with fewer
        leaving = held.pop(found.index(pids[0]))
        ended_in(pids[0], leaving, pids)
        held.append(associate(gw.port))
        assert owners(held[-1:], pids) == [pids[0]]
        # two end in worker 1: the next two go there
        for _ in range(2):
            found = owners(held, pids)
            ended_in(pids[1], held.pop(found.index(pids[1])), pids)
        held += [associate(gw.port) for _ in range(2)]
        assert owners(held[-2:], pids) == [pids[1], pids[1]]
        found = owners(held, pids)
        assert [found.count(pid) for pid in pids] == [3, 3], found
        for assoc in held:
            assert assoc.send_c_echo().Status == 0
    finally:
        for assoc in held:
            assoc.release()
        assert gw.stop() == 0, gw.log()


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (gone, or a zombie its parent has not reaped)."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def test_a_worker_killed_while_idle_costs_no_connection(tmp_path):
    gw = Gateway(tmp_path, server={"workers": "2", "max_associations": "20", "max_associations_per_address": "0"})
    gw.start()
    held = []
    try:
        pids = worker_pids(gw, 2)
        victim, survivor = pids
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not gone(victim):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(4):
            assoc = associate(gw.port)
            assert assoc.is_established, gw.log()  # not reset: nothing went to the dead worker
            assert assoc.send_c_echo().Status == 0
            held.append(assoc)
        restarted = re.findall(r"receiving worker 0 started \(pid (\d+)\)", gw.log())[1:]
        found = owners(held, [survivor, *map(int, restarted)])
        assert None not in found and victim not in found, found
        if not restarted:  # no worker 0 yet: every one went to worker 1
            assert found == [survivor] * 4
        assert gw.logged(f"(pid {victim}) ended (killed by signal 9); starting it again", 20), gw.log()
        deadline = time.monotonic() + 30
        while victim in (now := worker_pids(gw, 2)):
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        for assoc in held:
            ended_in(owner_of(local_port(assoc), now), assoc, now)
        held = [associate(gw.port) for _ in range(4)]  # the started-again worker (its count 0) takes its share
        assert all(a.is_established for a in held)
        found = owners(held, now)
        assert sorted(found.count(pid) for pid in now) == [2, 2], (found, now)
    finally:
        for assoc in held:
            assoc.release()
        assert gw.stop() == 0, gw.log()


def test_a_handed_server_serves_a_connection_it_did_not_accept():
    import socket

    from pynetdicom import evt

    from gateway.dicom import tuning
    from gateway.dicom.workers import HandedServer

    ended = []
    scp = AE(ae_title="GATEKEEPER")
    scp.add_supported_context(Verification)
    server = scp.make_server(("127.0.0.1", 0), evt_handlers=[(evt.EVT_CONN_OPEN, tuning.no_delay)],
                             server_class=HandedServer, on_end=lambda: ended.append(True))
    assert server.socket.getsockname()[1] == 0  # it never bound: the main process holds the port
    port = free_port()
    copies = []

    def accept_and_hand() -> None:
        with socket.create_server(("127.0.0.1", port)) as main_process:
            connection, address = main_process.accept()
            copies.append(connection.dup())  # the same connection, to look at its options
            assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            server.take(connection, address)

    handing = threading.Thread(target=accept_and_hand)
    handing.start()
    try:
        ae = AE(ae_title="MR1")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
        handing.join(10)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        # pynetdicom's EVT_CONN_OPEN handlers ran on it as on a connection it accepted itself
        assert copies[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert ended == []
        assoc.release()
        server.close()  # returns once its associations have ended
        assert ended == [True]  # reported once
    finally:
        for copy in copies:
            copy.close()
