"""DICOM TLS against a running `gatekeeper serve` (server.tls_port): DCMTK's echoscu,
findscu and storescu with `+tls`, with and without a client certificate, a certificate of
another CA, the BCP 195 profile's floor (TLS 1.2, its cipher suites), and the same
permissions as on the plain port."""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import subprocess
import time
import warnings

import pytest

from tests.certs import make_pki
from tests.conftest import EXAMPLES, EXAMPLES_NOW, free_port
from tests.dicom_factory import make_instance, write_instance
from tests.e2e import Gateway, dcmtk, echo_ok


def tls_gateway(folder, pki, mode, with_ca):
    folder.mkdir()
    server = {"tls_port": str(free_port()), "tls_cert": f'"{pki.server_cert}"', "tls_key": f'"{pki.server_key}"'}
    if with_ca:
        server["tls_ca"] = f'"{pki.ca_cert}"'
    gw = Gateway(folder, env=EXAMPLES_NOW, unknown_aets=mode, server=server,
                 extra_settings='[modalities.E2E]\nservices = ["echo"]\n')
    gw.tls_port = int(server["tls_port"])
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
    return gw.start()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secured(tmp_path_factory, pki):
    """echo-and-store, client certificates required (server.tls_ca set)."""
    gw = tls_gateway(tmp_path_factory.mktemp("tls") / "gw", pki, "echo-and-store", with_ca=True)
    yield gw
    assert gw.stop() == 0, gw.log()


def tls_options(pki, client="client"):
    if client is None:
        return ["+tla", "+cf", str(pki.ca_cert)]  # TLS without a client certificate
    if client == "other":
        return ["+tls", str(pki.other_ca_client_key), str(pki.other_ca_client_cert), "+cf", str(pki.ca_cert)]
    return ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca_cert)]


def run(tool, options, calling, port, *rest, called="GATEKEEPER", files=()):
    cmd = [dcmtk(tool), *options, "-aet", calling, "-aec", called, *rest, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_echoscu_over_tls_with_a_client_certificate(secured, pki):
    done = run("echoscu", tls_options(pki), "MR1", secured.tls_port)
    assert done.returncode == 0, done.stderr
    assert secured.logged(f"and TLS on {secured.tls_port}")


@pytest.mark.parametrize("client", [None, "other"])
def test_a_client_without_a_valid_certificate_is_refused(secured, pki, client):
    done = run("echoscu", tls_options(pki, client), "MR1", secured.tls_port)
    assert done.returncode != 0
    assert "TLS" in done.stderr or "Association Request Failed" in done.stderr, done.stderr
    assert echo_ok(secured.port)  # the server is fine


def test_a_failed_handshake_is_logged_and_audited(secured, pki):
    assert run("echoscu", tls_options(pki, "other"), "MR1", secured.tls_port).returncode != 0
    assert echo_ok(secured.port)
    assert secured.logged("refused (server.tls_ca): TLS handshake failed")

    def audited():
        with sqlite3.connect(secured.folder / "var" / "gatekeeper.db") as db:
            rows = db.execute("SELECT subject, reason, detail FROM audit_log WHERE action = 'association.refused'")
            return any(subject == "127.0.0.1" and json.loads(detail)["rule"] == "server.tls_ca"
                       and reason.startswith("TLS handshake failed") for subject, reason, detail in rows)

    deadline = time.monotonic() + 10  # recorded just after the log line
    while not audited():
        assert time.monotonic() < deadline, "the failed handshake was not audited"
        time.sleep(0.05)


def test_a_silent_connection_does_not_hold_up_other_tls_clients(secured, pki):
    silent = [socket.create_connection(("127.0.0.1", secured.tls_port)) for _ in range(3)]  # never say hello
    try:
        started = time.monotonic()
        done = run("echoscu", tls_options(pki), "MR1", secured.tls_port)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 5  # not after server.associate_timeout (10 s)
    finally:
        for sock in silent:
            sock.close()


def test_findscu_over_tls_has_the_plain_ports_permissions(secured, pki, tmp_path):
    keys = ["-W", "-k", "AccessionNumber", "-k", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MR1",
            "-X", "-od", str(tmp_path)]
    known = run("findscu", tls_options(pki), "MR1", secured.tls_port, *keys)
    assert known.returncode == 0, known.stderr
    assert len(list(tmp_path.glob("rsp*.dcm"))) == 1  # ACC1001 is served; ACC1002 is withheld
    stranger = run("findscu", ["-v", *tls_options(pki)], "STRANGER", secured.tls_port, "-W", "-k", "AccessionNumber")
    said = stranger.stdout + stranger.stderr
    # DCMTK names 0x0124 (a general status, PS3.7 Annex C) for no C-FIND service: "Unknown Status: 0x124"
    assert "Final Find Response (Unknown Status: 0x124)" in said, said
    assert secured.logged("C-FIND refused (0x0124): calling 'STRANGER'")


def test_storescu_over_tls(secured, pki, tmp_path):
    path = write_instance(tmp_path / "image.dcm", make_instance(AccessionNumber="ACC1001"))
    done = run("storescu", ["-v", *tls_options(pki)], "STRANGER", secured.tls_port, files=[path])  # unknown: may store
    assert done.returncode == 0, done.stderr
    assert "Received Store Response (Success)" in done.stdout + done.stderr


def test_wrong_called_ae_over_tls(secured, pki):
    done = run("echoscu", tls_options(pki), "MR1", secured.tls_port, called="PACS")
    assert done.returncode != 0
    assert "Called AE Title Not Recognized" in done.stderr or "called" in done.stderr.lower(), done.stderr


def test_plain_dicom_on_the_tls_port_and_tls_on_the_plain_port_fail(secured, pki):
    assert not echo_ok(secured.tls_port, calling="MR1")
    done = run("echoscu", tls_options(pki), "MR1", secured.port)
    assert done.returncode != 0


def _handshake(port, pki, **context_settings):
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    for name, value in context_settings.items():
        if name == "ciphers":
            context.set_ciphers(value)
        else:
            with warnings.catch_warnings():  # TLSVersion.TLSv1_1 is deprecated: that is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                setattr(context, name, value)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version(), tls.cipher()[0]


def test_bcp195_profile_tls_12_or_later_with_its_cipher_suites(secured, pki):
    version, _ = _handshake(secured.tls_port, pki)
    assert version in ("TLSv1.2", "TLSv1.3")
    version, cipher = _handshake(secured.tls_port, pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2" and cipher in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                                                "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384")
    with pytest.raises((ssl.SSLError, OSError)):
        _handshake(secured.tls_port, pki, maximum_version=ssl.TLSVersion.TLSv1_1)
    with pytest.raises((ssl.SSLError, OSError)):  # no forward secrecy / CBC: not in the profile
        _handshake(secured.tls_port, pki, maximum_version=ssl.TLSVersion.TLSv1_2,
                   ciphers="AES128-SHA:AES256-SHA:AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA")


def test_without_tls_ca_no_client_certificate_is_needed(tmp_path, pki):
    gw = tls_gateway(tmp_path / "open", pki, "allow", with_ca=False)
    try:
        done = run("echoscu", tls_options(pki, None), "ANYONE", gw.tls_port)
        assert done.returncode == 0, done.stderr
    finally:
        assert gw.stop() == 0, gw.log()


def test_a_tls_key_that_does_not_match_stops_serve_with_a_clear_message(tmp_path, pki):
    folder = tmp_path / "mismatch"
    folder.mkdir()
    gw = Gateway(folder, server={"tls_port": str(free_port()), "tls_cert": f'"{pki.server_cert}"',
                                 "tls_key": f'"{pki.client_key}"'})
    with pytest.raises(AssertionError) as failed:
        gw.start(timeout=20)
    assert "cannot use the TLS files" in str(failed.value) and "gatekeeper check" in str(failed.value)
