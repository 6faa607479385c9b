"""Denial of service: raw sockets against the running server cannot exhaust its memory or its slots.

guard.py (what counts against server.max_associations, the per-address cap, the time to
associate) and tuning.py change 5 (PDUs bounded in size and time).
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from gateway.app import open_app
from gateway.dicom.server import MAX_PDU_SIZE
from gateway.settings import load
from tests.conftest import RunningServer, write_settings

MIB = 1 << 20


def _start(tmp_path: Path, clock, **values) -> RunningServer:
    path = write_settings(tmp_path)
    text = path.read_text()
    for key, value in values.items():
        default = next(line for line in text.splitlines() if line.startswith(f"{key} = "))
        text = text.replace(default, f"{key} = {value}")
    path.write_text(text)
    running = RunningServer(open_app(load(path, environ={}), clock=clock)).start()
    return running


@pytest.fixture
def guarded(tmp_path, clock):
    """A server with 3 slots, 2 per address, and 1 s to deliver an A-ASSOCIATE-RQ."""
    running = _start(tmp_path, clock, max_associations=3, max_associations_per_address=2, associate_timeout=1)
    yield running
    running.stop()
    running.app.close()


def _associate(port: int, calling: str = "CONSOLE"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    return ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")


def _echo(port: int) -> bool:
    assoc = _associate(port)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0x0000


def _rss() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (end of file or reset), without waiting."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1 << 16) == b""
    except OSError:
        return True


def test_an_oversized_pdu_gets_an_abort_at_once_and_is_not_buffered(server):
    chunk = bytes(MIB)
    before = _rss()
    with socket.create_connection(("127.0.0.1", server.port), timeout=1) as sock:
        sock.sendall(b"\x01\x00\xff\xff\xff\xff")  # an A-ASSOCIATE-RQ of 4 GB
        start = time.monotonic()
        try:
            reply = sock.recv(10)
        except ConnectionResetError:
            reply = b""
        except TimeoutError:
            pytest.fail("no A-ABORT and the connection still open a second after the header")
        assert time.monotonic() - start < 1
        # A-ABORT: source 2 (service provider), reason 6 (invalid PDU parameter value); or closed.
        assert reply in (b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06", b"")
        sent = 0
        try:
            for _ in range(64):
                sock.sendall(chunk)
                sent += 1
        except OSError:
            pass
        time.sleep(0.3)  # measured before closing: a server buffering the PDU frees it then
        grew = _rss() - before
    assert grew < 16 * MIB, f"memory grew by {grew / MIB:.0f} MiB after {sent} MiB sent"
    assert _echo(server.port)


def test_an_oversized_p_data_pdu_aborts_the_association(server, caplog):
    assoc = _associate(server.port)
    assert assoc.is_established
    with caplog.at_level(logging.WARNING, logger="gateway.dicom.tuning"):
        assoc.dul.socket.socket.sendall(b"\x04\x00" + struct.pack(">L", MAX_PDU_SIZE + 1))
        for _ in range(20):  # the peer's DUL stops when the A-ABORT arrives and the connection closes
            if not assoc.dul.is_alive():
                break
            time.sleep(0.05)
    assert not assoc.dul.is_alive()
    assert any("refused a PDU of type 0x04" in r.getMessage() for r in caplog.records)
    assert _echo(server.port)


def test_silent_sockets_take_no_slot_and_are_dropped_after_associate_timeout(guarded):
    silent = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(3)]  # max_associations
    try:
        start = time.monotonic()
        assert _echo(guarded.port)
        assert time.monotonic() - start < 1
        for _ in range(40):
            if all(_closed_by_server(sock) for sock in silent):
                break
            time.sleep(0.1)
        assert all(_closed_by_server(sock) for sock in silent), "silent sockets still open 4 s after connecting"
    finally:
        for sock in silent:
            sock.close()


def test_connect_and_close_leaves_no_slot_taken(guarded):
    for _ in range(25):  # like an HTTP burst
        with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: gatekeeper\r\n\r\n")
    for _ in range(3):
        silent = socket.create_connection(("127.0.0.1", guarded.port))
        silent.close()
    assert all(_echo(guarded.port) for _ in range(5))


def test_a_trickling_request_is_dropped_after_associate_timeout(guarded):
    socks = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(3)]
    start = time.monotonic()
    dropped: dict[int, float] = {}
    try:
        for sock in socks:
            sock.sendall(b"\x01\x00\x00\x00\x00\xc8")  # an A-ASSOCIATE-RQ of 200 bytes ...
        assert _echo(guarded.port)  # ... that takes no slot
        for _ in range(40):  # ... and comes one byte every 0.1 s
            for i, sock in enumerate(socks):
                if i in dropped:
                    continue
                if _closed_by_server(sock):
                    dropped[i] = time.monotonic() - start
                    continue
                try:
                    sock.sendall(b"\x00")
                except OSError:
                    dropped[i] = time.monotonic() - start
            if len(dropped) == len(socks):
                break
            time.sleep(0.1)
    finally:
        for sock in socks:
            sock.close()
    assert len(dropped) == len(socks), "trickling sockets still open 4 s after connecting"
    assert all(0.8 < t < 2.5 for t in dropped.values()), dropped
    assert all(_echo(guarded.port) for _ in range(3))


def _assert_rejected_local_limit(assoc) -> None:
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    # PS3.8 9.3.4: rejected-transient, DICOM UL service-provider (presentation), local-limit-exceeded
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)


def test_one_address_cannot_take_more_than_its_cap(guarded, caplog):
    held = [_associate(guarded.port) for _ in range(2)]  # max_associations_per_address
    try:
        assert all(a.is_established for a in held)
        with caplog.at_level(logging.WARNING, logger="gateway.dicom.server"):
            _assert_rejected_local_limit(_associate(guarded.port))
        assert any("server.max_associations_per_address = 2" in r.getMessage() for r in caplog.records)
        held.pop().release()
        again = _associate(guarded.port)
        assert again.is_established
        again.release()
    finally:
        for assoc in held:
            assoc.release()


def test_the_total_cap_counts_associations_only(tmp_path, clock, caplog):
    running = _start(tmp_path, clock, max_associations=2, max_associations_per_address=0, associate_timeout=1)
    held, silent = [], [socket.create_connection(("127.0.0.1", running.port)) for _ in range(3)]
    try:
        held = [_associate(running.port) for _ in range(2)]
        assert all(a.is_established for a in held)
        with caplog.at_level(logging.WARNING, logger="gateway.dicom.server"):
            _assert_rejected_local_limit(_associate(running.port))
        assert any("server.max_associations = 2" in r.getMessage() for r in caplog.records)
        held.pop().release()
        assert _echo(running.port)
    finally:
        for assoc in held:
            assoc.release()
        for sock in silent:
            sock.close()
        running.stop()
        running.app.close()
