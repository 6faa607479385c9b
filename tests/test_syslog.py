"""RFC 5424 messages and RFC 5425 framing (pure), and the UDP and TLS senders against local sockets."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import threading

import pytest

from infra import syslog
from tests.certs import make_pki

AT = dt.datetime(2026, 12, 1, 10, 15, 30, 250000, tzinfo=dt.timezone(dt.timedelta(hours=1)))
#: RFC 5424 6: HEADER SP STRUCTURED-DATA [SP MSG]
RFC5424 = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S{1,255}) (\S{1,48}) (\S{1,128}) (\S{1,32}) (-|\[[^]]+\]) \xef\xbb\xbf(.*)$",
                     re.S)


def message(**changes) -> bytes:
    fields = dict(facility=10, severity=5, at=AT, hostname="gk1.example.org", app_name="gatekeeper",
                  procid="4242", msgid=syslog.DICOM_MSGID, message="<AuditMessage/>")
    return syslog.rfc5424(**{**fields, **changes})


def test_the_header_fields_in_rfc_5424_order():
    match = RFC5424.match(message())
    assert match, message()
    pri, stamp, host, app, procid, msgid, sd, body = match.groups()
    assert int(pri) == 10 * 8 + 5 == 85
    assert stamp == b"2026-12-01T10:15:30.250+01:00"
    assert (host, app, procid, msgid, sd) == (b"gk1.example.org", b"gatekeeper", b"4242", b"DICOM+RFC3881", b"-")
    assert body == b"<AuditMessage/>"


@pytest.mark.parametrize("facility, severity, pri", [(0, 0, 0), (10, 4, 84), (23, 7, 191), (4, 5, 37)])
def test_pri_is_facility_times_eight_plus_severity(facility, severity, pri):
    assert message(facility=facility, severity=severity).startswith(f"<{pri}>1 ".encode())


@pytest.mark.parametrize("facility, severity", [(24, 5), (-1, 5), (10, 8)])
def test_pri_out_of_range_is_refused(facility, severity):
    with pytest.raises(ValueError):
        message(facility=facility, severity=severity)


def test_utc_is_written_z_and_a_naive_time_is_taken_as_utc():
    assert b" 2026-12-01T09:15:30.250Z " in message(at=AT.astimezone(dt.timezone.utc))
    assert b" 2026-12-01T10:15:30.000Z " in message(at=dt.datetime(2026, 12, 1, 10, 15, 30))


def test_header_fields_are_printable_ascii_cut_to_their_length_and_dash_when_empty():
    match = RFC5424.match(message(hostname="", app_name="gate keeper\u00e9" + "x" * 60, procid="", msgid=""))
    assert match
    _, _, host, app, procid, msgid, _, _ = match.groups()
    assert host == b"-" and procid == b"-" and msgid == b"-"
    assert app == (b"gatekeeper" + b"x" * 60)[:48]


@pytest.mark.parametrize("sequence_id", [1, 12, 2147483647])
def test_the_event_id_is_the_meta_sequence_id(sequence_id):
    match = RFC5424.match(message(sequence_id=sequence_id))
    assert match and match.group(7) == f'[meta sequenceId="{sequence_id}"]'.encode()


@pytest.mark.parametrize("sequence_id", [0, 2147483648])
def test_a_sequence_id_out_of_range_is_refused(sequence_id):
    with pytest.raises(ValueError):
        message(sequence_id=sequence_id)


def test_the_message_is_utf8_after_a_bom():
    body = message(message="Ärzte <x/>")
    assert body.endswith(b"- \xef\xbb\xbf" + "Ärzte <x/>".encode("utf-8"))


@pytest.mark.parametrize("payload", [b"", b"x", b"<13>1 - - - - - - hello", "é".encode() * 1000])
def test_octet_counting_is_the_length_in_octets_a_space_and_the_message(payload):
    framed = syslog.octet_counted(payload)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(payload) and rest == payload
    assert framed.startswith(str(len(payload)).encode() + b" ")


@pytest.mark.parametrize("name, code", [("authpriv", 10), ("AUTH", 4), ("local0", 16), ("local7", 23), (13, 13), (0, 0)])
def test_facility_by_name_or_number(name, code):
    assert syslog.facility_code(name) == code


@pytest.mark.parametrize("name", ["nope", 24, -1, True, "local8"])
def test_an_unknown_facility_is_refused(name):
    with pytest.raises(ValueError):
        syslog.facility_code(name)


# ---------------------------------------------------------------- senders, against local sockets


def test_udp_sends_one_datagram_per_message():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    sender = syslog.UdpSender("127.0.0.1", server.getsockname()[1])
    try:
        assert sender.send([message(procid="1"), message(procid="2")]) == 2
        got = [server.recv(65535), server.recv(65535)]
    finally:
        sender.close()
        server.close()
    assert got == [message(procid="1"), message(procid="2")]


class TlsCollector:
    """A TLS server on a free loopback port that reads octet-counted frames (RFC 5425)."""

    def __init__(self, pki, require_client: bool = True):
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        if require_client:
            self.context.load_verify_locations(pki.ca_cert)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frames: list[bytes] = []
        self.errors: list[str] = []
        self.received = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(10)
        try:
            raw, _ = self.listener.accept()
        except OSError:
            return
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                buffer = b""
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    while b" " in buffer:
                        length, _, rest = buffer.partition(b" ")
                        if len(rest) < int(length):
                            break
                        self.frames.append(rest[:int(length)])
                        buffer = rest[int(length):]
                        self.received.set()
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(str(exc))

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_sends_octet_counted_frames_with_a_client_certificate(pki):
    collector = TlsCollector(pki)
    sender = syslog.TlsSender("127.0.0.1", collector.port,
                              syslog.TlsFiles(str(pki.ca_cert), str(pki.client_cert), str(pki.client_key)))
    try:
        assert sender.send([message(procid="1"), message(procid="2", message="x" * 5000)]) == 2
        collector.thread.join(0.1)
        for _ in range(50):
            if len(collector.frames) == 2:
                break
            collector.received.wait(0.1)
    finally:
        sender.close()
        collector.close()
    assert collector.frames == [message(procid="1"), message(procid="2", message="x" * 5000)]


def test_tls_refuses_a_collector_whose_certificate_another_ca_signed(pki, tmp_path):
    collector = TlsCollector(pki, require_client=False)
    sender = syslog.TlsSender("127.0.0.1", collector.port, syslog.TlsFiles(str(pki.client_cert)))  # a CA it is not
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            sender.send([message()])
    finally:
        sender.close()
        collector.close()


def test_tls_to_a_port_nobody_listens_on_raises_oserror(pki):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    sender = syslog.TlsSender("127.0.0.1", port, syslog.TlsFiles(str(pki.ca_cert)), timeout=2)
    with pytest.raises(OSError):
        sender.send([message()])
    sender.close()
