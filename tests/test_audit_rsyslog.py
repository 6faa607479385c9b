"""The audit trail into a real rsyslogd, over UDP and over TLS: `gatekeeper serve` as a process
sends the events that commands write, as DICOM audit messages in RFC 5424 syslog messages;
over TLS nothing is lost or sent twice across a collector outage and a restart of serve."""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET

import pytest

from tests.certs import make_pki
from tests.conftest import EXAMPLES, EXAMPLES_NOW
from tests.e2e import Gateway
from tests.rsyslog import Received, Rsyslog

pytestmark = pytest.mark.e2e

#: Patient names and birth dates of the example orders: never in a message.
NEVER = [p["patient"][k] for p in json.loads((EXAMPLES / "orders.json").read_text()) for k in ("name", "birth_date")]


def gateway_sending_to(folder, collector: Rsyslog, transport: str, files: str = "") -> Gateway:
    folder.mkdir(parents=True, exist_ok=True)
    gw = Gateway(folder, env=EXAMPLES_NOW)
    text = gw.settings.read_text()
    block = (f'[audit.syslog]\nhost = "127.0.0.1"\nport = {collector.port}\ntransport = "{transport}"\n{files}'
             f'site = "Test Hospital"\npoll_seconds = 0.2\nretry_max_seconds = 1\n')
    text, count = re.subn(r"^\[audit\.syslog\]\n.*?(?=^\[)", block + "\n", text, flags=re.S | re.M)
    assert count == 1
    gw.settings.write_text(text)
    return gw


def audit_ids(messages: list[Received]) -> list[int]:
    return [int(re.fullmatch(r'\[meta sequenceId="(\d+)"\]', m.structured_data).group(1)) for m in messages]


def check_message(m: Received) -> ET.Element:
    assert m.pri in (10 * 8 + 5, 10 * 8 + 4)  # authpriv, notice or warning
    assert (m.app_name, m.msgid) == ("gatekeeper", "DICOM+RFC3881")
    assert m.msg.startswith("\ufeff")
    root = ET.fromstring(m.msg[1:])
    assert root.tag == "AuditMessage"
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == "GATEKEEPER"
    assert root.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") == "Test Hospital"
    for never in NEVER:
        assert never not in m.msg
    return root


def event_ids(messages: list[Received]) -> list[str]:
    return [check_message(m).find("EventIdentification/EventID").get("csd-code") for m in messages]


@pytest.fixture
def collectors():
    started = []
    yield started
    for collector in started:
        collector.stop()


def test_udp_the_events_commands_write_reach_rsyslog(tmp_path, collectors):
    collector = Rsyslog(tmp_path / "rsyslog").start()
    collectors.append(collector)
    gw = gateway_sending_to(tmp_path / "gw", collector, "udp")
    try:
        gw.start()
        gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
        gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
        gw.cli("orders", "override", "ACC1002", "--user", "dr.smith", "--reason", "stroke protocol, auth to follow")
        got = collector.wait_for(3)
    finally:
        gw.stop()
    assert event_ids(got) == ["110107", "110107", "110109"]
    assert audit_ids(got) == [1, 2, 3]
    override = check_message(got[2])
    assert override.find("ActiveParticipant").get("UserID") == "dr.smith"
    assert override.find("EventIdentification/EventOutcomeDescription").text == "stroke protocol, auth to follow"
    assert override.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "ACC1002"
    listed = json.loads(gw.cli("audit", "list", "--json").stdout)
    assert [e["id"] for e in listed["events"]] == [3, 2, 1]  # the local log has the same events


def test_tls_nothing_is_lost_or_sent_twice_across_an_outage_and_a_restart(tmp_path, collectors):
    pki = make_pki(tmp_path / "pki")
    collector = Rsyslog(tmp_path / "rsyslog", pki=pki).start()
    collectors.append(collector)
    files = f'ca = "{pki.ca_cert}"\ncert = "{pki.client_cert}"\nkey = "{pki.client_key}"\n'
    gw = gateway_sending_to(tmp_path / "gw", collector, "tls", files)
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))  # before serve ever ran: sent at its start
    try:
        gw.start()
        assert audit_ids(collector.wait_for(1)) == [1]

        collector.stop()  # the collector goes away
        gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
        gw.cli("orders", "override", "ACC1002", "--user", "dr.smith", "--reason", "emergency")
        collector = Rsyslog(tmp_path / "rsyslog", pki=pki, port=collector.port).start()  # back, same file
        collectors.append(collector)
        assert audit_ids(collector.wait_for(3)) == [1, 2, 3]

        assert gw.stop() == 0  # serve restarts; an event written meanwhile is sent after
        gw.cli("orders", "override", "ACC1003", "--user", "dr.smith", "--reason", "emergency")
        gw.start()
        got = collector.wait_for(4)
    finally:
        gw.stop()
    assert audit_ids(got) == [1, 2, 3, 4]
    assert event_ids(got) == ["110107", "110107", "110109", "110109"]
    assert "cannot send to the syslog collector" in gw.log()  # the outage was logged
    assert "takes messages again" in gw.log()


def test_tls_a_collector_refusing_the_client_certificate_gets_nothing_and_nothing_is_dropped(tmp_path, collectors):
    pki = make_pki(tmp_path / "pki")
    collector = Rsyslog(tmp_path / "rsyslog", pki=pki).start()
    collectors.append(collector)
    files = f'ca = "{pki.ca_cert}"\ncert = "{pki.other_ca_client_cert}"\nkey = "{pki.other_ca_client_key}"\n'
    gw = gateway_sending_to(tmp_path / "gw", collector, "tls", files)
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    try:
        gw.start()
        refused = "does not accept the client certificate"
        deadline = time.monotonic() + 20
        while refused not in gw.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert refused in gw.log()
        gw.cli("orders", "override", "ACC1002", "--user", "dr.smith", "--reason", "emergency")
    finally:
        gw.stop()
    assert collector.received() == []
    # both events are still to send: the same gateway with the right certificate sends them
    gw.settings.write_text(gw.settings.read_text().replace(str(pki.other_ca_client_cert), str(pki.client_cert))
                           .replace(str(pki.other_ca_client_key), str(pki.client_key)))
    try:
        gw.start()
        assert audit_ids(collector.wait_for(2)) == [1, 2]
    finally:
        gw.stop()


def test_check_handshakes_with_the_collector_and_names_a_refused_certificate(tmp_path, collectors):
    from gateway import preflight
    from gateway.settings import load

    pki = make_pki(tmp_path / "pki")
    collector = Rsyslog(tmp_path / "rsyslog", pki=pki).start()
    collectors.append(collector)
    good = gateway_sending_to(tmp_path / "good", collector, "tls",
                              f'ca = "{pki.ca_cert}"\ncert = "{pki.client_cert}"\nkey = "{pki.client_key}"\n')
    [ok] = preflight.check_audit_syslog(load(good.settings, environ={}))
    assert (ok.status, ok.detail) == ("ok", "TLS handshake succeeded")
    stranger = gateway_sending_to(tmp_path / "stranger", collector, "tls",
                                  f'ca = "{pki.ca_cert}"\ncert = "{pki.other_ca_client_cert}"\n'
                                  f'key = "{pki.other_ca_client_key}"\n')
    [refused] = preflight.check_audit_syslog(load(stranger.settings, environ={}))
    assert refused.status == "fail" and "does not accept the client certificate" in refused.detail
    wrong_ca = gateway_sending_to(tmp_path / "wrong_ca", collector, "tls", f'ca = "{pki.other_ca_client_cert}"\n')
    [untrusted] = preflight.check_audit_syslog(load(wrong_ca.settings, environ={}))
    assert untrusted.status == "fail" and "certificate verify failed" in untrusted.detail
    assert collector.received() == []  # a check sends nothing
