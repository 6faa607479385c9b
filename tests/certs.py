"""Test certificates made with the ``openssl`` command (Debian package openssl).

:func:`make_pki` writes, into a folder, a CA, a server certificate and a client
certificate signed by it (both with SAN IP:127.0.0.1 and DNS:localhost), and a client
certificate signed by another CA (the "invalid certificate" case). Keys are unencrypted
RSA 2048 (PEM). Under CI a missing ``openssl`` fails the test, locally it skips it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.tools import missing_tool

DAYS = 30
SAN = "subjectAltName=IP:127.0.0.1,DNS:localhost"


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_client_cert: Path
    other_ca_client_key: Path


def openssl() -> str:
    """The openssl program, or skip (fail under CI) when it is missing."""
    path = shutil.which("openssl") or ("/usr/bin/openssl" if os.access("/usr/bin/openssl", os.X_OK) else None)
    if path:
        return path
    message = "the openssl program is not installed (Debian package openssl)"
    missing_tool(message)


def _run(*args: str) -> None:
    done = subprocess.run([openssl(), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(DAYS),
         "-subj", f"/CN=Test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _leaf(folder: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr",
                           folder / f"{name}.ext")
    _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    ext.write_text(f"{SAN}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                   f"extendedKeyUsage={usage}\n")
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
         "-out", str(cert), "-days", str(DAYS), "-extfile", str(ext))
    return cert, key


def make_pki(folder: Path) -> Pki:
    """A CA, a server and a client certificate it signs, and a client certificate of another CA."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other = _ca(folder, "other-ca")
    server = _leaf(folder, "server", ca, "serverAuth")
    client = _leaf(folder, "client", ca, "clientAuth")
    stranger = _leaf(folder, "other-client", other, "clientAuth")
    for key in folder.glob("*.key"):
        key.chmod(0o600)
    return Pki(ca_cert=ca[0], ca_key=ca[1], server_cert=server[0], server_key=server[1], client_cert=client[0],
               client_key=client[1], other_ca_client_cert=stranger[0], other_ca_client_key=stranger[1])
