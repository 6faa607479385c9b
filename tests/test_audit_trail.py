"""The audit trail's thread in an in-process ``serve``: events recorded go out as RFC 5424 messages
carrying their DICOM audit message; the thread ends with the server."""

from __future__ import annotations

import datetime as dt
import re
import socket
import threading
import xml.etree.ElementTree as ET

import pytest

from gateway import audit_trail
from gateway.app import open_app
from gateway.settings import load
from infra import audit
from tests.conftest import Clock, RunningServer, write_settings

NOW = dt.datetime(2026, 12, 1, 9, 0)
HEADER = re.compile(rb'^<(\d+)>1 (\S+) (\S+) gk-test (\d+) DICOM\+RFC3881 \[meta sequenceId="(\d+)"\] \xef\xbb\xbf')


@pytest.fixture
def collector():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    yield sock
    sock.close()


@pytest.fixture
def sending_app(tmp_path, collector):
    path = write_settings(tmp_path)
    text, count = re.subn(r"^\[audit\.syslog\]\n.*?(?=^\[)",
                          f'[audit.syslog]\nhost = "127.0.0.1"\nport = {collector.getsockname()[1]}\n'
                          f'app_name = "gk-test"\nfacility = "local4"\npoll_seconds = 0.1\n\n',
                          path.read_text(), flags=re.S | re.M)
    assert count == 1
    path.write_text(text)
    app = open_app(load(path, environ={}), clock=Clock(NOW))
    yield app
    app.close()


def trail_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gatekeeper-audit-trail"]


def test_serve_sends_recorded_events_and_stops_its_thread(sending_app, collector):
    server = RunningServer(sending_app).start()
    try:
        with sending_app.db.atomic():
            first = audit.record(NOW, "tech1", "study.released", "1.2.3.4", "checked", accession_number="ACC1")
            second = audit.record(NOW, "XR9", "association.refused", "XR9", "unknown calling AE title",
                                  address="10.9.9.9", called_ae="GATEKEEPER", service="worklist")
        datagrams = [collector.recv(65535), collector.recv(65535)]
        assert len(trail_threads()) == 1
    finally:
        server.stop()
    assert trail_threads() == []
    got = []
    for data in datagrams:
        match = HEADER.match(data)
        assert match, data[:200]
        got.append((int(match.group(1)), int(match.group(5)), ET.fromstring(data[match.end():].decode("utf-8"))))
    (pri1, id1, xml1), (pri2, id2, xml2) = got
    assert (pri1, id1) == (20 * 8 + 5, first)  # local4, notice
    assert (pri2, id2) == (20 * 8 + 4, second)  # a refusal: warning
    assert xml1.find("EventIdentification/EventID").get("csd-code") == "110103"
    assert xml2.find("EventIdentification/EventID").get("csd-code") == "110113"
    # the local time of the log, with this machine's offset
    stamp = dt.datetime.fromisoformat(xml1.find("EventIdentification").get("EventDateTime"))
    assert stamp.replace(tzinfo=None) == NOW and stamp.utcoffset() == NOW.astimezone().utcoffset()


def test_a_record_of_a_row_keeps_its_fields_and_survives_a_broken_detail(sending_app):
    with sending_app.db.atomic():
        row = audit.AuditEvent.get_by_id(audit.record(NOW, "tech1", "study.released", "1.2.3.4", "why",
                                                      accession_number="ACC1"))
    record = audit_trail.record_of(row)
    assert (record.id, record.user, record.action, record.subject, record.reason) == (
        row.id, "tech1", "study.released", "1.2.3.4", "why")
    assert record.detail == {"accession_number": "ACC1"} and record.at.tzinfo is not None
    row.detail = "not json"
    assert audit_trail.record_of(row).detail == {}
    row.detail = "[1, 2]"
    assert audit_trail.record_of(row).detail == {}
