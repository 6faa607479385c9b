"""``[audit.syslog]``: parsed once, every key documented in settings.toml, errors name the file and key."""

from __future__ import annotations

import re

import pytest

from gateway import audit_trail
from gateway.app import App
from gateway.settings import AUDIT_SYSLOG_KEYS, SettingsError, load
from infra import syslog
from tests.conftest import ROOT, write_settings


def with_syslog(tmp_path, body: str):
    path = write_settings(tmp_path)
    text, count = re.subn(r"^\[audit\.syslog\]\n.*?(?=^\[)", "[audit.syslog]\n" + body + "\n\n", path.read_text(),
                          flags=re.S | re.M)
    assert count == 1
    path.write_text(text)
    return path


def test_the_shipped_file_sends_nothing_and_documents_every_key():
    assert load(ROOT / "settings.toml", environ={}).audit_syslog is None
    block = (ROOT / "settings.toml").read_text().split("[audit.syslog]", 1)[1].split("\n[", 1)[0]
    for key in AUDIT_SYSLOG_KEYS:
        assert re.search(rf"((?:^#.*\n)+)^(?:\w+ = .*\n)*{key} = ", block, re.M), key
    readme = (ROOT / "README.md").read_text()
    for key in AUDIT_SYSLOG_KEYS:
        assert f"`audit.syslog.{key}`" in readme, key


def test_udp_defaults(tmp_path):
    s = load(with_syslog(tmp_path, 'host = "collector.example.org"'), environ={}).audit_syslog
    assert (s.host, s.port, s.transport, s.facility, s.app_name) == ("collector.example.org", 514, "udp", 10, "gatekeeper")
    assert (s.ca, s.cert, s.key, s.site, s.poll_seconds, s.retry_max_seconds) == (None, None, None, "", 2.0, 60.0)


def test_tls_with_files_relative_to_the_settings_file(tmp_path):
    for name in ("ca.pem", "gk.pem", "gk.key"):
        (tmp_path / name).write_text("x")
    s = load(with_syslog(tmp_path, 'host = "c"\ntransport = "TLS"\nca = "ca.pem"\ncert = "gk.pem"\nkey = "gk.key"\n'
                                   'facility = "local4"\nport = 10514\npoll_seconds = 0.5'), environ={}).audit_syslog
    assert (s.transport, s.port, s.facility, s.poll_seconds) == ("tls", 10514, 20, 0.5)
    assert (s.ca, s.cert, s.key) == (tmp_path / "ca.pem", tmp_path / "gk.pem", tmp_path / "gk.key")
    assert load(with_syslog(tmp_path, 'host = "c"\ntransport = "tls"'), environ={}).audit_syslog.port == 6514


@pytest.mark.parametrize("body, words", [
    ('host = "c"\ntransport = "tcp"', 'audit.syslog.transport is \'tcp\'; use "udp" or "tls"'),
    ('host = "c"\nport = 70000', "audit.syslog.port is 70000"),
    ('host = "c"\nfacility = "nope"', "audit.syslog.facility"),
    ('host = "c"\nfacility = 24', "audit.syslog.facility"),
    ('host = "c"\nhots = "x"', "unknown setting audit.syslog.hots"),
    ('host = 5', "audit.syslog.host must be str"),
    ('host = "c"\ntransport = "tls"\nca = "missing.pem"', "audit.syslog.ca names"),
    ('host = "c"\nca = "settings.toml"', 'are for transport = "tls"'),
    ('host = "c"\ntransport = "tls"\nkey = "settings.toml"', "audit.syslog.key is set without audit.syslog.cert"),
    ('host = "c"\npoll_seconds = 0', "audit.syslog.poll_seconds must be more than 0"),
    ('host = "c"\nretry_max_seconds = true', "audit.syslog.retry_max_seconds must be"),
])
def test_errors_name_the_file_and_key(tmp_path, body, words):
    path = with_syslog(tmp_path, body)
    with pytest.raises(SettingsError) as err:
        load(path, environ={})
    assert words in str(err.value) and str(path) in str(err.value)


def test_only_the_syslog_table_is_known_under_audit(tmp_path):
    path = write_settings(tmp_path, extra="[audit.other]\nx = 1\n")
    with pytest.raises(SettingsError, match="holds only the table"):
        load(path, environ={})


def test_a_change_of_the_collector_needs_a_restart(tmp_path, app):
    new = load(with_syslog(tmp_path, 'host = "c"'), environ={})
    assert "audit.syslog" in app.needs_restart(new)


def test_the_trail_is_off_without_a_host(app: App):
    trail = audit_trail.start(app)
    assert trail.thread is None
    trail.stop()  # nothing to stop


def test_the_sender_follows_the_transport(tmp_path):
    udp = load(with_syslog(tmp_path, 'host = "127.0.0.1"'), environ={}).audit_syslog
    assert isinstance(audit_trail.sender_of(udp), syslog.UdpSender)


def test_check_of_a_udp_collector_resolves_its_host(tmp_path):
    from gateway import preflight

    [ok] = preflight.check_audit_syslog(load(with_syslog(tmp_path, 'host = "localhost"'), environ={}))
    assert ok.status == "ok" and "UDP cannot tell" in ok.detail
    [bad] = preflight.check_audit_syslog(load(with_syslog(tmp_path, 'host = "no-such-host.invalid"'), environ={}))
    assert bad.status == "fail" and "does not resolve" in bad.detail and "audit.syslog.host" in bad.detail
    assert preflight.check_audit_syslog(load(with_syslog(tmp_path, 'host = ""'), environ={})) == []
