"""The server answers C-ECHO, honours the calling-AE allow list and stops cleanly."""

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from gateway.app import open_app
from gateway.settings import load
from tests.conftest import RunningServer, write_settings


def _echo(port: int, calling: str = "ECHOSCU"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return status.Status


def test_echo_answers_success(server):
    assert _echo(server.port) == 0x0000


def test_calling_ae_not_under_modalities_is_rejected_when_unknown_aets_refuse(tmp_path, clock):
    path = write_settings(tmp_path, unknown_aets="refuse")  # MR1 is a shipped [modalities] entry
    app = open_app(load(path, environ={}), clock=clock)
    running = RunningServer(app).start()
    try:
        assert _echo(running.port, "INTRUDER") is None
        assert _echo(running.port, "MR1") == 0x0000
    finally:
        running.stop()
        app.close()


def test_garbage_and_aborted_peers_do_not_stop_the_server(server):
    import socket

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"\x01\x00\x00\x00\xff\xff")  # an A-ASSOCIATE-RQ header that lies about its length
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="GATEKEEPER")
    assert assoc.is_established
    assoc.abort()
    assert _echo(server.port) == 0x0000
