"""``gatekeeper check``: the preflight passes on a good installation and names each broken thing.

The decisions (free space, port state, certificate dates) are tested alone; the verb is
run in process against settings that are good, or broken one way at a time, in text and
in JSON, which must agree.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway import preflight
from gateway.cli.check import run_check
from gateway.cli.main import main
from gateway.settings import load
from tests.conftest import free_port, write_settings

UTC = dt.timezone.utc
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    """Probes that wait for a silent peer wait 0.5 s here, not 3 s."""
    monkeypatch.setattr(preflight, "TIMEOUT", 0.5)
    monkeypatch.delenv("GATEKEEPER_DATABASE_URL", raising=False)


def check(capsys, settings_path: Path) -> tuple[int, str, int, dict]:
    """Run ``gatekeeper check`` and ``gatekeeper check --json``: (code, text, json code, json)."""
    code = main(["--config", str(settings_path), "check"])
    text = capsys.readouterr().out
    json_code = main(["check", "--json", "--config", str(settings_path)])
    return code, text, json_code, json.loads(capsys.readouterr().out)


def lines(text: str, status: str) -> list[str]:
    label = {"ok": "ok    ", "fail": "FAIL  ", "skip": "skip  "}[status]
    return [line[len(label):] for line in text.splitlines() if line.startswith(label)]


def assert_same(text: str, report: dict) -> None:
    """The text and the JSON report the same checks with the same verdicts, and the same reasons for
    each failure and skip (an ok line's figures, such as the free space, may move between the runs)."""
    printed = text.splitlines()[:-1]
    assert len(printed) == len(report["checks"])
    for line, entry in zip(printed, report["checks"]):
        label = {"ok": "ok   ", "fail": "FAIL ", "skip": "skip "}[entry["status"]]
        assert line.startswith(f"{label} {entry['name']}")
        if entry["status"] != "ok":
            assert line == f"{label} {entry['name']}: {entry['detail']}"
    assert report["ok"] == (not any(c["status"] == "fail" for c in report["checks"]))


def failed(report: dict) -> list[dict]:
    return [c for c in report["checks"] if c["status"] == "fail"]


# -- the decisions -----------------------------------------------------------------------


@pytest.mark.parametrize("free_mb, reserve, status", [(100, 16, "ok"), (16, 16, "ok"), (15, 16, "fail"),
                                                      (0, 0, "ok"), (0, 1, "fail")])
def test_free_space_against_the_reserve(free_mb, reserve, status):
    result = preflight.free_space("/store", free_mb * MIB, reserve)
    assert result.status == status and result.name == "free space on /store"
    if status == "fail":
        assert f"{free_mb} MiB free, below the reserve of {reserve} MiB (storage.min_free_mb)" in result.detail


@pytest.mark.parametrize("bind_errno, ours, status, words", [
    (None, False, "ok", "free"),
    (errno.EADDRINUSE, True, "ok", "in use by a running gatekeeper (C-ECHO succeeded)"),
    (errno.EADDRINUSE, False, "fail", "in use by another program (silent): stop it, or change server.port = 104"),
    (errno.EACCES, False, "fail", "needs privileges this user lacks: use a port above 1023"),
    (errno.EACCES, True, "ok", "in use by a running gatekeeper"),
    (errno.EADDRNOTAVAIL, False, "fail", "'10.9.9.9' is not an address of this machine"),
])
def test_port_state(bind_errno, ours, status, words):
    answer = "C-ECHO succeeded" if ours else "silent"
    result = preflight.port_state("DICOM port 104", "server.port", "10.9.9.9", 104, bind_errno, ours, answer,
                                  "/etc/gk.toml")
    assert result.status == status and words in result.detail


@pytest.mark.parametrize("now, status, words", [
    (dt.datetime(2026, 6, 1, tzinfo=UTC), "ok", "valid until 2027-01-01 (214 days)"),
    (dt.datetime(2026, 12, 20, tzinfo=UTC), "ok", "renew it soon"),
    (dt.datetime(2027, 1, 1, tzinfo=UTC), "fail", "expired on 2027-01-01 00:00 UTC"),
    (dt.datetime(2025, 12, 31, tzinfo=UTC), "fail", "not valid before 2026-01-01"),
])
def test_certificate_dates(now, status, words):
    result = preflight.certificate_dates("TLS certificate c.pem", dt.datetime(2026, 1, 1, tzinfo=UTC),
                                         dt.datetime(2027, 1, 1, tzinfo=UTC), now)
    assert result.status == status and words in result.detail


# -- good settings -------------------------------------------------------------------------


def test_good_settings_pass_with_our_server_on_the_port(server, settings_path, capsys):
    with settings_path.open("a") as f:  # the running gateway is also a peer that answers (to its own AE title)
        f.write(f'\n[peers.GATEKEEPER]\nhost = "127.0.0.1"\nport = {server.port}\n')
    code, text, json_code, report = check(capsys, settings_path)
    assert code == json_code == 0, text
    assert lines(text, "fail") == []
    assert f"DICOM port {server.port} on 127.0.0.1: in use by a running gatekeeper (C-ECHO to GATEKEEPER at " \
           f"127.0.0.1:{server.port} succeeded)" in lines(text, "ok")
    assert f"peer GATEKEEPER at 127.0.0.1:{server.port}: C-ECHO succeeded" in lines(text, "ok")
    assert any(line.startswith("database sqlite:///") and line.endswith("opened and up to date")
               for line in lines(text, "ok"))
    assert "metrics port: off (metrics.port = 0)" in lines(text, "skip")
    assert "TLS certificate: no TLS configured (tls_cert is not set)" in lines(text, "skip")
    assert text.splitlines()[-1].startswith("All 9 checks passed, 4 skipped")
    assert report["ok"] is True and {c["status"] for c in report["checks"]} == {"ok", "skip"}
    assert_same(text, report)


def test_a_free_port_and_missing_folders_pass(tmp_path, capsys):
    path = write_settings(tmp_path)
    code, text, _, report = check(capsys, path)
    assert code == 0, text
    assert any(line.startswith("DICOM port") and line.endswith(": free") for line in lines(text, "ok"))
    storage = next(c for c in report["checks"] if c["name"].startswith("storage "))
    assert storage["status"] == "ok" and "archive/, held/, rejected/, incoming/ writable" in storage["detail"]
    assert "writable; created the root, archive/, held/, rejected/, incoming/" in text  # the first run made them
    for name in ("archive", "held", "rejected", "incoming"):
        assert (tmp_path / "var" / "store" / name).is_dir()
    assert [p.name for p in (tmp_path / "var" / "store" / "incoming").iterdir()] == []  # no probe file left


def test_check_with_an_app_reports_the_app_s_database(app, capsys):
    assert run_check(app, argparse.Namespace(json=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checks"][0] == {"name": f"database {app.settings.database_url}", "status": "ok",
                                   "detail": "opened and up to date"}


@pytest.mark.postgres
def test_good_settings_on_postgresql(tmp_path, capsys, pg_url):
    code, text, _, report = check(capsys, write_settings(tmp_path, database_url=pg_url))
    assert code == 0, text
    assert report["checks"][0]["name"] == f"database {pg_url}" and report["checks"][0]["status"] == "ok"


# -- broken settings, one way at a time --------------------------------------------------


def _unwritable_root(tmp_path):
    if os.geteuid() == 0:  # root writes through permissions: a path under a regular file cannot be created
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        root, words = blocker / "store", f"cannot create {blocker / 'store'}: Not a directory"
    else:
        root = tmp_path / "locked"
        root.mkdir()
        root.chmod(0o500)
        words = f"{root}: Permission denied; give the gatekeeper's user write access"
    path = write_settings(tmp_path)
    path.write_text(path.read_text().replace('root = "var/store"', f'root = "{root}"'))
    return path, f"storage {root}", words


def test_storage_root_not_writable(tmp_path, capsys):
    path, name, words = _unwritable_root(tmp_path)
    try:
        code, text, json_code, report = check(capsys, path)
    finally:
        (tmp_path / "locked").exists() and (tmp_path / "locked").chmod(0o700)
    assert code == json_code == 1
    [line] = lines(text, "fail")
    assert line.startswith(f"{name}: ") and words in line and "storage.root in" in line
    assert f"free space on {name[len('storage '):]}: the storage root is not usable" in lines(text, "skip")
    assert [c["name"] for c in failed(report)] == [name]
    assert report["ok"] is False
    assert_same(text, report)


def test_dicom_port_taken_by_another_program(tmp_path, capsys):
    port = free_port()
    path = write_settings(tmp_path, port)
    with socket.socket() as taken:  # listens, never speaks DICOM
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        code, text, json_code, report = check(capsys, path)
    assert code == json_code == 1
    [line] = lines(text, "fail")
    assert line.startswith(f"DICOM port {port} on 127.0.0.1: in use by another program (")
    assert f"stop it, or change server.port = {port} in {path}" in line
    assert [c["name"] for c in failed(report)] == [f"DICOM port {port} on 127.0.0.1"]
    assert_same(text, report)


def test_a_peer_that_does_not_answer(tmp_path, capsys):
    dead, silent = free_port(), free_port()
    path = write_settings(tmp_path, extra=f'[peers.PACS]\nhost = "127.0.0.1"\nport = {dead}\n'
                                          f'[peers.QUIET]\nhost = "127.0.0.1"\nport = {silent}\n')
    with socket.socket() as quiet:  # accepts connections, never answers
        quiet.bind(("127.0.0.1", silent))
        quiet.listen()
        code, text, json_code, report = check(capsys, path)
    assert code == json_code == 1
    fails = lines(text, "fail")
    assert fails[0].startswith(f"peer PACS at 127.0.0.1:{dead}: nothing listens on 127.0.0.1:{dead} "
                               "(connection refused): check that the peer runs")
    assert "[peers.PACS]" in fails[0]
    assert fails[1].startswith(f"peer QUIET at 127.0.0.1:{silent}: 127.0.0.1:{silent} accepts connections but "
                               "did not answer as a DICOM AE QUIET within 0.5 s")
    assert [c["name"] for c in failed(report)] == [f"peer PACS at 127.0.0.1:{dead}",
                                                   f"peer QUIET at 127.0.0.1:{silent}"]
    assert text.splitlines()[-1].startswith("2 of 10 checks failed, 4 skipped: peer PACS")
    assert_same(text, report)


def test_free_space_below_the_reserve(tmp_path, capsys, monkeypatch):
    path = write_settings(tmp_path)  # min_free_mb = 16
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_bavail=3, f_frsize=MIB))
    code, text, json_code, report = check(capsys, path)
    assert code == json_code == 1
    root = tmp_path / "var" / "store"
    assert lines(text, "fail") == [
        f"free space on {root}: 3 MiB free, below the reserve of 16 MiB (storage.min_free_mb), so every C-STORE "
        "would be refused (0xA700): free space on that volume, move storage.root to a larger one, or lower the reserve"]
    assert [c["name"] for c in failed(report)] == [f"free space on {root}"]
    assert_same(text, report)


def test_an_unreachable_database(tmp_path, capsys):
    url = "postgresql://postgres@127.0.0.1:1/x"
    path = write_settings(tmp_path, database_url=url)
    code, text, json_code, report = check(capsys, path)
    assert code == json_code == 1
    [line] = lines(text, "fail")
    assert line.startswith(f"database {url}: cannot open it: ") and "Connection refused" in line
    assert f"Check database.url in {path}" in line
    assert [c["name"] for c in failed(report)] == [f"database {url}"]
    assert len(lines(text, "ok")) == 3  # the other checks still ran: storage, free space, DICOM port
    assert_same(text, report)


def test_the_database_url_from_the_environment_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GATEKEEPER_DATABASE_URL", "postgresql://postgres:secret@127.0.0.1:1/x")
    code, text, _, _ = check(capsys, write_settings(tmp_path))
    [line] = lines(text, "fail")
    assert line.startswith("database postgresql://postgres@127.0.0.1:1/x: ") and "secret" not in text
    assert "Check GATEKEEPER_DATABASE_URL (it overrides database.url)" in line


def test_a_settings_error_still_exits_2(tmp_path, capsys):
    path = tmp_path / "settings.toml"
    path.write_text("[server]\nport = 0\n")
    assert main(["--config", str(path), "check"]) == 2
    assert "server.port" in capsys.readouterr().err


# -- metrics port --------------------------------------------------------------------------


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


def _with_metrics_port(tmp_path, port):
    path = write_settings(tmp_path)
    text = path.read_text().replace("[metrics]\n", f"[metrics]\nport = {port}\n", 1)
    path.write_text(text.replace("port = 0\n", "", 1) if text.count("port = 0\n") else text)
    return path


def test_metrics_port_of_a_gatekeeper_answering_healthz_passes(tmp_path, capsys):
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        code, text, _, report = check(capsys, _with_metrics_port(tmp_path, port))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 0, text
    assert (f"metrics port {port} on 127.0.0.1: in use by a running gatekeeper "
            f"(GET http://127.0.0.1:{port}/healthz answered 200)") in lines(text, "ok")


def test_metrics_port_taken_by_another_program_fails(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, text, json_code, report = check(capsys, _with_metrics_port(tmp_path, port))
    assert code == json_code == 1
    [line] = lines(text, "fail")
    assert line.startswith(f"metrics port {port} on 127.0.0.1: in use by another program (GET http://127.0.0.1:"
                           f"{port}/healthz got no HTTP answer")
    assert "change metrics.port" in line
    assert_same(text, report)


# -- TLS (no TLS settings yet: the check reads tls_cert and tls_key when they exist) ---------


def test_tls_is_skipped_without_a_certificate_setting():
    for settings in (SimpleNamespace(), SimpleNamespace(tls_cert=""), SimpleNamespace(tls_cert=None)):
        [result] = preflight.check_tls(settings)
        assert result.status == "skip" and "tls_cert is not set" in result.detail


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "30", "-subj", "/CN=gatekeeper"], check=True, capture_output=True)
    return cert, key


def test_tls_certificate_that_loads_and_is_valid(certificate):
    cert, key = certificate
    checks = preflight.check_tls(SimpleNamespace(tls_cert=str(cert), tls_key=str(key)))
    assert [(c.name, c.status) for c in checks] == [(f"TLS certificate {cert}", "ok"), (f"TLS key {key}", "ok")]
    assert checks[0].detail.startswith("valid until ")


def test_tls_certificate_expired_or_unreadable(certificate, tmp_path):
    cert, key = certificate
    not_before, not_after = preflight.certificate_validity(cert)
    [expired] = preflight.check_tls(SimpleNamespace(tls_cert=str(cert)), now=not_after + dt.timedelta(days=1))
    assert expired.status == "fail" and expired.detail.startswith(f"expired on {not_after:%Y-%m-%d}")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    bad_cert, bad_key = preflight.check_tls(SimpleNamespace(tls_cert=str(garbage), tls_key=str(garbage)))
    assert bad_cert.status == bad_key.status == "fail"
    assert bad_cert.detail.startswith("cannot load it: ") and "Point tls_cert at a PEM certificate" in bad_cert.detail
    [missing] = preflight.check_tls(SimpleNamespace(tls_cert=str(tmp_path / "nope.pem")))
    assert missing.status == "fail" and f"{tmp_path / 'nope.pem'}: No such file or directory." in missing.detail


# -- HL7 port --------------------------------------------------------------------------------


def test_the_hl7_port_free_ours_or_another_programs(tmp_path):
    from gateway.app import open_app
    from gateway.hl7 import listener
    from tests.hl7_messages import hl7_settings

    port = free_port()
    settings = load(hl7_settings(write_settings(tmp_path), port=port), environ={})
    assert preflight.check_hl7_port(settings).detail == "free"
    app = open_app(settings)
    running = listener.start(app)
    try:
        found = preflight.check_hl7_port(settings)
        assert (found.status, found.detail) == ("ok", f"in use by a running gatekeeper (an MLLP probe to "
                                                      f"127.0.0.1:{port} was answered by GATEKEEPER)")
        assert app.gate.find_order("CHECK") is None
    finally:
        running.stop()
        app.close()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        found = preflight.check_hl7_port(settings)
        assert found.status == "fail" and "in use by another program" in found.detail and "hl7.port" in found.detail


# -- review desk port ------------------------------------------------------------------------


def test_the_review_desk_port_free_ours_or_another_programs(tmp_path):
    from gateway.app import open_app
    from gateway.http import desk
    from tests.test_http_parts import desk_settings

    port = free_port()
    settings = desk_settings(tmp_path, port)
    assert preflight.check_http_port(settings).detail == "free"
    app = open_app(settings)
    running = desk.start(app)
    try:
        found = preflight.check_http_port(settings)
        assert (found.status, found.detail) == ("ok", f"in use by a running gatekeeper (GET http://127.0.0.1:{port}"
                                                      f"/login is the review desk)")
    finally:
        running.stop()
        app.close()
    with socket.socket() as other:  # listens, but answers no HTTP
        other.bind(("127.0.0.1", port))
        other.listen()
        found = preflight.check_http_port(settings)
        assert found.status == "fail" and "in use by another program" in found.detail and "http.port" in found.detail


def test_the_review_desk_port_is_skipped_when_off(tmp_path):
    found = preflight.check_http_port(load(write_settings(tmp_path), environ={}))
    assert (found.status, found.detail) == ("skip", "off (http.port = 0)")
