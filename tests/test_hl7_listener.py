"""The MLLP listener in process, over real sockets: messages in sequence on one connection,
bad frames closing only their own connection, and the listener serving on after each."""

from __future__ import annotations

import socket
import time

import pytest

from gateway.app import open_app
from gateway.hl7 import listener, mllp
from gateway.hl7.client import Client, ack_code
from gateway.settings import load
from tests.conftest import EXAMPLE_NOW, Clock, write_settings
from tests.hl7_messages import edited, example, hl7_settings
from worklist.models import OrderRow


@pytest.fixture
def running(tmp_path):
    path = hl7_settings(write_settings(tmp_path), port=_free_port())
    path.write_text(path.read_text().replace("max_message_bytes = 1048576", "max_message_bytes = 65536"))
    app = open_app(load(path, environ={}), clock=Clock(EXAMPLE_NOW))
    served = listener.start(app)
    yield served
    served.stop()
    app.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(running) -> socket.socket:
    return socket.create_connection(("127.0.0.1", running.port), timeout=5)


def read_until_closed(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def still_serving(running) -> bool:
    with Client("127.0.0.1", running.port, timeout=5) as client:
        return ack_code(client.send(edited("omi_nw_v251", control_id=f"LIVE{time.monotonic_ns()}"))) == "AA"


def test_one_connection_carries_messages_in_sequence(running):
    with Client("127.0.0.1", running.port) as client:
        codes = [ack_code(client.send(example(n))) for n in ("orm_nw_v231", "omi_nw_v251", "orm_xo_v231",
                                                           "oru_final_v251", "orm_ca_v231")]
    assert codes == ["AA"] * 5
    assert {r.accession_number: r.status for r in OrderRow.select()} == {"ACC6001": "scheduled",
                                                                        "ACC6002": "cancelled"}


def test_lf_line_ends_and_a_frame_ending_in_fs_alone(running):
    with connect(running) as sock:
        sock.sendall(b"\x0b" + example("omi_nw_v251").replace(b"\r", b"\n") + b"\x1c")  # no CR after FS
        reader = mllp.FrameReader(sock, 1 << 20, 5, idle_timeout=5)
        assert ack_code(reader.next()) == "AA"
        sock.sendall(mllp.frame(example("orm_ca_v231")))
        assert ack_code(reader.next()) == "AA"


def test_a_frame_larger_than_the_limit_gets_ar_then_the_connection_closes(running):
    big = example("orm_nw_v231") + b"NTE|1||" + b"x" * (10 * 1024 * 1024) + b"\r"
    with connect(running) as sock:
        try:
            sock.sendall(mllp.frame(big))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed while we were still sending: the AR may be lost then
        received = read_until_closed(sock)
    if received:
        assert received.startswith(b"\x0b") and b"MSA|AR|RIS000101" in received
        assert b"max_message_bytes" in received
    assert OrderRow.select().count() == 0 and still_serving(running)


def test_garbage_bytes_close_the_connection(running):
    with connect(running) as sock:
        sock.sendall(bytes(range(256)) * 4)
        assert read_until_closed(sock) == b""
    assert still_serving(running)


def test_an_unframed_message_gets_ar_then_the_connection_closes(running):
    with connect(running) as sock:
        sock.sendall(example("orm_nw_v231"))
        received = read_until_closed(sock)
    assert b"MSA|AR|RIS000101" in received and b"not an MLLP frame" in received
    assert OrderRow.select().count() == 0 and still_serving(running)


def test_a_connection_closed_mid_frame_changes_nothing(running):
    with connect(running) as sock:
        data = mllp.frame(example("orm_nw_v231"))
        sock.sendall(data[: len(data) // 2])
    deadline = time.monotonic() + 5
    while running.connections and time.monotonic() < deadline:  # until the server has seen the close
        time.sleep(0.01)
    assert OrderRow.select().count() == 0 and still_serving(running)


def test_a_message_without_msh_gets_ar_and_the_connection_stays(running):
    with Client("127.0.0.1", running.port) as client:
        assert ack_code(client.send(b"PID|1||MRN1\r")) == "AR"
        assert ack_code(client.send(example("omi_nw_v251"))) == "AA"


def test_stop_closes_open_connections(tmp_path):
    path = hl7_settings(write_settings(tmp_path), port=_free_port())
    app = open_app(load(path, environ={}), clock=Clock(EXAMPLE_NOW))
    served = listener.start(app)
    sock = connect(served)
    assert still_serving(served)
    served.stop()
    try:
        assert read_until_closed(sock) == b""
    finally:
        sock.close()
        app.close()


def test_port_zero_is_no_listener(app):
    assert listener.start(app) is None


def test_a_port_in_use_names_the_setting(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        path = hl7_settings(write_settings(tmp_path), port=holder.getsockname()[1])
        app = open_app(load(path, environ={}), clock=Clock(EXAMPLE_NOW))
        try:
            with pytest.raises(Exception, match="hl7.port"):
                listener.start(app)
        finally:
            app.close()
