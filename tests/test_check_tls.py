"""`gatekeeper check` on the TLS settings: the certificate's dates, the key that goes with it,
the client CA, and the TLS port, with the test PKI (tests/certs.py)."""

from __future__ import annotations

import datetime as dt
import json
import socket

import pytest

from gateway import preflight
from gateway.cli.main import main
from gateway.settings import load
from tests.certs import make_pki
from tests.conftest import free_port, write_settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_settings(tmp_path, cert, key, ca=None, tls_port=None):
    server = {"tls_port": str(tls_port or free_port()), "tls_cert": f'"{cert}"', "tls_key": f'"{key}"'}
    if ca:
        server["tls_ca"] = f'"{ca}"'
    return load(write_settings(tmp_path, server=server), environ={})


def named(checks, prefix):
    return [c for c in checks if c.name.startswith(prefix)]


def test_matching_files_pass(tmp_path, pki):
    s = tls_settings(tmp_path, pki.server_cert, pki.server_key, pki.ca_cert)
    checks = preflight.check_tls(s)
    assert [(c.name, c.status) for c in checks] == [
        (f"TLS certificate {pki.server_cert}", "ok"), (f"TLS key {pki.server_key}", "ok"),
        (f"TLS client CA {pki.ca_cert}", "ok")]
    assert checks[1].detail == "matches the certificate" and checks[2].detail.startswith("valid until ")


def test_a_key_of_another_certificate_fails(tmp_path, pki):
    s = tls_settings(tmp_path, pki.server_cert, pki.client_key)
    [key] = named(preflight.check_tls(s), "TLS key")
    assert key.status == "fail" and "does not go with the certificate" in key.detail
    assert "Point tls_key at the private key of server.pem" in key.detail


def test_a_ca_file_that_is_no_certificate_fails(tmp_path, pki):
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a CA\n")
    s = tls_settings(tmp_path, pki.server_cert, pki.server_key, garbage)
    [ca] = named(preflight.check_tls(s), "TLS client CA")
    assert ca.status == "fail" and "Point tls_ca at the PEM certificates of the CA" in ca.detail


def test_expired_certificate_and_ca_fail(tmp_path, pki):
    s = tls_settings(tmp_path, pki.server_cert, pki.server_key, pki.ca_cert)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)
    cert, key, ca = preflight.check_tls(s, now=later)
    assert cert.status == ca.status == "fail" and "expired on" in cert.detail and "expired on" in ca.detail
    assert key.status == "ok"


def test_check_command_reports_the_tls_port(tmp_path, pki, capsys):
    port = free_port()
    path = write_settings(tmp_path, server={"tls_port": str(port), "tls_cert": f'"{pki.server_cert}"',
                                            "tls_key": f'"{pki.server_key}"'})
    main(["--config", str(path), "check", "--json"])
    report = json.loads(capsys.readouterr().out)
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name[f"DICOM TLS port {port} on 127.0.0.1"]["status"] == "ok"
    with socket.socket() as squatter:  # another program on the TLS port
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        main(["--config", str(path), "check", "--json"])
        report = json.loads(capsys.readouterr().out)
    tls_port = {c["name"]: c for c in report["checks"]}[f"DICOM TLS port {port} on 127.0.0.1"]
    assert tls_port["status"] == "fail" and "server.tls_port" in tls_port["detail"]
    assert not report["ok"]
