"""Test certificates, made with the ``openssl`` command (Debian package openssl).

:func:`make_pki` writes a CA, a server certificate and a client certificate signed by it
(both for IP:127.0.0.1 and DNS:localhost), and a client certificate signed by another
CA (which a server trusting the first CA must refuse). Keys are unencrypted RSA 2048,
certificates valid for a day. Locally a missing ``openssl`` skips the test; under CI
(``CI=true``) it fails it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SAN = "subjectAltName=IP:127.0.0.1,DNS:localhost"


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_client_cert: Path  # signed by a CA the server does not trust
    other_ca_client_key: Path


def openssl() -> str:
    """Path of the openssl command, or skip (fail under CI) when missing."""
    path = shutil.which("openssl") or ("/usr/bin/openssl" if os.access("/usr/bin/openssl", os.X_OK) else None)
    if path:
        return path
    message = "the openssl command is not installed (Debian package openssl)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run(*args: str) -> None:
    result = subprocess.run([openssl(), *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN=Gatekeeper test {name}",
         "-keyout", str(key), "-out", str(cert),
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr",
                           folder / f"{name}.ext")
    ext.write_text(f"{SAN}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                   f"extendedKeyUsage={usage}\n")
    _run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
         "-days", "1", "-sha256", "-extfile", str(ext), "-out", str(cert))
    return cert, key


def make_pki(folder: Path) -> Pki:
    """A CA with a server and a client certificate, and a client certificate of another CA, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other = _ca(folder, "other-ca")
    server = _leaf(folder, "server", ca, "serverAuth")
    client = _leaf(folder, "client", ca, "clientAuth")
    stranger = _leaf(folder, "other-ca-client", other, "clientAuth")
    return Pki(ca_cert=ca[0], ca_key=ca[1], server_cert=server[0], server_key=server[1],
               client_cert=client[0], client_key=client[1],
               other_ca_client_cert=stranger[0], other_ca_client_key=stranger[1])
