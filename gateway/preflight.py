"""The preflight of ``gatekeeper check``: is this installation ready to ``serve``?

Each check gives one :class:`Check` (``ok``, ``fail`` or ``skip`` with a detail that says
why and what to do). The decisions are small functions of their inputs, testable alone:
:func:`free_space` (free bytes against ``storage.min_free_mb``), :func:`port_state` (could
we bind, and does a gatekeeper answer there), :func:`certificate_dates` (validity against
now). The probes around them do the IO: open the database as ``serve`` does, create and
write in the storage folders, bind a port, C-ECHO an AE, GET ``/healthz``, read a
certificate. Every network probe has a short timeout (:data:`TIMEOUT`).

The check changes only what ``serve`` would change at its start anyway: it brings the
database up to date and creates missing storage folders.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import http.client
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.settings import DATABASE_URL_ENV, Settings
from infra import syslog
from infra.db import redacted
from infra.errors import GatekeeperError
from store.archive import INCOMING, TREES

OK, FAIL, SKIP = "ok", "fail", "skip"
#: Seconds a network probe (connect, association, C-ECHO, HTTP) may take.
TIMEOUT = 3.0
#: Seconds a PostgreSQL server has to answer the connection (libpq's PGCONNECT_TIMEOUT, unless set).
DATABASE_CONNECT_TIMEOUT = 10
#: The folders under the storage root (``store.archive``).
STORAGE_FOLDERS = (*TREES, INCOMING)
#: Addresses meaning "every interface": a probe of our own port then goes to loopback.
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
MIB = 1024 * 1024


@dataclass(frozen=True)
class Check:
    """One line of the preflight: what was checked, ``ok``/``fail``/``skip``, and why."""

    name: str
    status: str
    detail: str = ""


# -- the decisions, from their inputs ---------------------------------------------------


def free_space(where: str, free_bytes: int, min_free_mb: int) -> Check:
    """Free space on the storage volume against the reserve ``storage.min_free_mb``."""
    name = f"free space on {where}"
    free_mb = free_bytes // MIB
    if min_free_mb <= 0:
        return Check(name, OK, f"{free_mb} MiB free; no reserve (storage.min_free_mb = {min_free_mb})")
    if free_bytes < min_free_mb * MIB:
        return Check(name, FAIL, f"{free_mb} MiB free, below the reserve of {min_free_mb} MiB "
                                 f"(storage.min_free_mb), so every C-STORE would be refused (0xA700): free "
                                 f"space on that volume, move storage.root to a larger one, or lower the reserve")
    return Check(name, OK, f"{free_mb} MiB free, reserve {min_free_mb} MiB")


def port_state(name: str, setting: str, address: str, port: int, bind_errno: int | None,
               ours: bool, answer: str = "", source: Path | str = "settings.toml") -> Check:
    """A port the gatekeeper listens on: free, or held by a gatekeeper (ours), or not usable.

    ``bind_errno`` is None when a test bind on ``address:port`` succeeded, else its errno;
    ``ours`` says whether a gatekeeper answered there (``answer``: what the probe found).
    """
    where = f"{setting} = {port} in {source}"
    if bind_errno is None:
        return Check(name, OK, "free")
    if ours:
        return Check(name, OK, f"in use by a running gatekeeper ({answer})")
    if bind_errno == errno.EADDRINUSE:
        found = f" ({answer})" if answer else ""
        return Check(name, FAIL, f"in use by another program{found}: stop it, or change {where}")
    if bind_errno == errno.EACCES:
        return Check(name, FAIL, f"port {port} needs privileges this user lacks: use a port above 1023, "
                                 f"or change {where}")
    if bind_errno == errno.EADDRNOTAVAIL:
        return Check(name, FAIL, f"{address!r} is not an address of this machine: change the bind address "
                                 f"for {setting} in {source}")
    return Check(name, FAIL, f"cannot listen on {address}:{port} ({os.strerror(bind_errno)}): check {where}")


def certificate_dates(name: str, not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime) -> Check:
    """A certificate's validity period (UTC, aware) against ``now``."""
    if now >= not_after:
        return Check(name, FAIL, f"expired on {not_after:%Y-%m-%d %H:%M} UTC: install a renewed certificate")
    if now < not_before:
        return Check(name, FAIL, f"not valid before {not_before:%Y-%m-%d %H:%M} UTC: check the machine's clock, "
                                 "or install a certificate valid now")
    days = (not_after - now).days
    return Check(name, OK, f"valid until {not_after:%Y-%m-%d} ({days} days)"
                           + ("; renew it soon" if days < 30 else ""))


# -- the checks of a settings object -----------------------------------------------------


def run_all(settings: Settings, *, database_opened: bool = False, now: dt.datetime | None = None) -> list[Check]:
    """Every check, in the order they are printed. ``database_opened``: the caller already
    opened (and brought up to date) the database of these settings."""
    checks = [check_database(settings, already_opened=database_opened)]
    checks += check_storage(settings)
    checks.append(check_dicom_port(settings))
    if getattr(settings, "tls_cert", None):
        checks.append(check_tls_port(settings))
    checks.append(check_metrics_port(settings))
    checks.append(check_hl7_port(settings))
    checks.append(check_http_port(settings))
    checks += check_tls(settings, now)
    checks += check_peers(settings)
    checks += check_audit_syslog(settings)
    checks += check_destinations(settings)
    return checks


def check_database(settings: Settings, already_opened: bool = False) -> Check:
    """Open the database and bring it up to date, as ``serve`` does."""
    name = f"database {redacted(settings.database_url)}"
    if already_opened:
        return Check(name, OK, "opened and up to date")
    from gateway.app import MODELS, open_database_of

    bound = [(model, model._meta.database) for model in MODELS]  # opening rebinds the models: put them back
    try:
        with _pg_connect_timeout():
            db = open_database_of(settings)
            db.close()
    except GatekeeperError as exc:  # a schema newer than this program, a busy database: the sentence says it
        return Check(name, FAIL, str(exc))
    except Exception as exc:  # unreachable, refused: each is a failed check
        where = (f"{DATABASE_URL_ENV} (it overrides database.url)" if os.environ.get(DATABASE_URL_ENV)
                 else f"database.url in {settings.source}")
        return Check(name, FAIL, f"cannot open it: {_sentence(exc)} Check {where}, and that the database "
                                 "server runs and lets this user in")
    finally:
        for model, db_before in bound:
            if db_before is not None:
                model._meta.set_database(db_before)
    return Check(name, OK, "opened and up to date")


def check_storage(settings: Settings) -> list[Check]:
    """The storage root and its folders exist (or are created) and are writable; the free-space reserve."""
    root = settings.storage_root
    folders = ', '.join(f + '/' for f in STORAGE_FOLDERS)
    name = f"storage {root}"
    problem = None
    created = []
    for folder in (root, *(root / f for f in STORAGE_FOLDERS)):
        problem = _usable_folder(folder, created)
        if problem:
            break
    if problem:
        return [Check(name, FAIL, f"{problem} (storage.root in {settings.source})"),
                Check(f"free space on {root}", SKIP, "the storage root is not usable")]
    made = f"; created {', '.join('the root' if c == root else c.name + '/' for c in created)}" if created else ""
    storage = Check(name, OK, f"{folders} writable{made}")
    try:
        stats = os.statvfs(root)
    except OSError as exc:
        return [storage, Check(f"free space on {root}", FAIL, f"cannot ask the volume: {exc.strerror or exc}")]
    return [storage, free_space(str(root), stats.f_bavail * stats.f_frsize, settings.min_free_mb)]


def listening_port(name: str, setting: str, address: str, port: int, settings: Settings,
                   probe: Callable[[str], str | None], found: Callable[[str], str]) -> Check:
    """A port the gatekeeper listens on: a test bind on ``address:port``; when it is taken,
    ``probe(host)`` asks whether this gatekeeper answers there (None: it does, else what was
    found), and ``found(host)`` says what answered."""
    failed = bind_error(address, port)
    ours, answer = False, ""
    if failed in (errno.EADDRINUSE, errno.EACCES):
        host = WILDCARDS.get(address, address)
        why = probe(host)
        ours = why is None
        answer = found(host) if ours else why
    return port_state(name, setting, address, port, failed, ours, answer, settings.source)


def check_dicom_port(settings: Settings) -> Check:
    """``server.port``: free on ``server.bind_address``, or a gatekeeper answers C-ECHO there."""
    address, port = settings.bind_address, settings.port
    return listening_port(f"DICOM port {port} on {address}", "server.port", address, port, settings,
                          lambda host: dicom_echo(_calling_ae(settings), settings.ae_title, host, port),
                          lambda host: f"C-ECHO to {settings.ae_title} at {host}:{port} succeeded")


def check_tls_port(settings: Settings) -> Check:
    """``server.tls_port``: free, or held while this gatekeeper answers C-ECHO on ``server.port``."""
    address, port = settings.bind_address, settings.tls_port
    return listening_port(f"DICOM TLS port {port} on {address}", "server.tls_port", address, port, settings,
                          lambda host: dicom_echo(_calling_ae(settings), settings.ae_title, host, settings.port),
                          lambda host: f"this gatekeeper answers C-ECHO on server.port {settings.port}")


def check_metrics_port(settings: Settings) -> Check:
    """``metrics.port`` (unless 0): free on ``metrics.bind_address``, or a gatekeeper answers ``/healthz``."""
    address, port = settings.metrics_bind_address, settings.metrics_port
    if not port:
        return Check("metrics port", SKIP, "off (metrics.port = 0)")
    return listening_port(f"metrics port {port} on {address}", "metrics.port", address, port, settings,
                          lambda host: healthz(host, port),
                          lambda host: f"GET http://{_host_port(host, port)}/healthz answered 200")


def check_hl7_port(settings: Settings) -> Check:
    """``hl7.port`` (unless 0): free on ``hl7.bind_address``, or a gatekeeper answers MLLP there.

    The probe is an HL7 ACK message, which a gatekeeper refuses (AR) without keeping or
    changing anything; the answer's MSH-3 names the gatekeeper's AE title.
    """
    address, port = settings.hl7_bind_address, settings.hl7_port
    if not port:
        return Check("HL7 port", SKIP, "off (hl7.port = 0)")
    return listening_port(f"HL7 port {port} on {address}", "hl7.port", address, port, settings,
                          lambda host: mllp_probe(host, port, settings.ae_title),
                          lambda host: f"an MLLP probe to {_host_port(host, port)} was answered by {settings.ae_title}")


def check_http_port(settings: Settings) -> Check:
    """``http.port`` (unless 0): free on ``http.bind_address``, or the review desk answers its login page."""
    address, port = settings.http_bind_address, settings.http_port
    if not port:
        return Check("review desk port", SKIP, "off (http.port = 0)")
    scheme = "https" if settings.http_tls_cert is not None else "http"
    return listening_port(f"review desk port {port} on {address}", "http.port", address, port, settings,
                          lambda host: http_answer(host, port, "/login", tls=scheme == "https", marker=DESK_MARKER),
                          lambda host: f"GET {scheme}://{_host_port(host, port)}/login is the review desk")


def mllp_probe(host: str, port: int, ae_title: str) -> str | None:
    """None when the MLLP listener at host:port answers as gatekeeper ``ae_title``, else what was found."""
    from gateway.hl7.client import Client, ack_code

    probe = b"MSH|^~\\&|GATEKEEPER-CHECK||||||ACK^A01|CHECK|P|2.5.1\r"
    try:
        with Client(host, port, timeout=3) as client:
            answer = client.send(probe)
    except (OSError, ConnectionError, ValueError) as exc:
        return f"no MLLP answer ({exc})"
    if ack_code(answer) != "AR" or f"|{ae_title}|".encode() not in answer.split(b"\r", 1)[0]:
        return "an MLLP answer that is not this gatekeeper's"
    return None


def check_tls(settings: Settings, now: dt.datetime | None = None) -> list[Check]:
    """The TLS certificate (and key), when set: they load, and the certificate is valid now."""
    cert = getattr(settings, "tls_cert", None)
    if not cert:
        return [Check("TLS certificate", SKIP, "no TLS configured (tls_cert is not set)")]
    now = now or dt.datetime.now(dt.timezone.utc)
    cert = Path(cert)
    name = f"TLS certificate {cert}"
    try:
        not_before, not_after = certificate_validity(cert)
    except (OSError, ValueError) as exc:
        checks = [Check(name, FAIL, f"cannot load it: {_sentence(exc)} Point tls_cert at a PEM certificate")]
    else:
        checks = [certificate_dates(name, not_before, not_after, now)]
    key = getattr(settings, "tls_key", None)
    if key:
        try:
            load_private_key(Path(key))
        except (OSError, ValueError) as exc:
            checks.append(Check(f"TLS key {key}", FAIL,
                                f"cannot load it: {_sentence(exc)} Point tls_key at the certificate's PEM private key "
                                "(unencrypted, readable by the gatekeeper's user)"))
        else:
            why = key_mismatch(cert, Path(key))
            checks.append(Check(f"TLS key {key}", FAIL, why) if why else Check(f"TLS key {key}", OK,
                                                                               "matches the certificate"))
    ca = getattr(settings, "tls_ca", None)
    if ca:
        checks.append(check_tls_ca(Path(ca), now))
    return checks


def key_mismatch(cert: Path, key: Path) -> str | None:
    """Why the TLS port could not use this certificate with this key (None when it can)."""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    except (OSError, ValueError) as exc:
        return (f"it does not go with the certificate ({_sentence(exc)}) Point tls_key at the private key of "
                f"{cert.name}, or tls_cert at the certificate of this key")
    return None


def check_tls_ca(ca: Path, now: dt.datetime) -> Check:
    """The client CA file loads as a CA bundle and its (first) certificate is valid now."""
    import ssl

    name = f"TLS client CA {ca}"
    try:
        ssl.create_default_context(cafile=str(ca))
        not_before, not_after = certificate_validity(ca)
    except (OSError, ValueError) as exc:
        return Check(name, FAIL, f"cannot load it: {_sentence(exc)} Point tls_ca at the PEM certificates of the CA "
                                 f"that signs the modalities' client certificates, or empty it")
    return certificate_dates(name, not_before, not_after, now)


def check_peers(settings: Settings) -> list[Check]:
    """Each peer of ``[peers]`` answers a C-ECHO from our AE title."""
    return [echo_check(f"peer {ae} at {_host_port(peer.host, peer.port)}", settings.ae_title, peer.ae_title,
                       peer.host, peer.port,
                       f"check that the peer runs, its host and port under [peers.{ae}] in {settings.source}, "
                       f"and that it accepts calling AE {settings.ae_title}")
            for ae, peer in sorted(settings.peers.items())]


def echo_check(name: str, calling: str, called: str, host: str, port: int, advice: str) -> Check:
    """ok when ``called`` at host:port answers a C-ECHO from ``calling``, else FAIL with what
    happened and ``advice`` (what to check)."""
    why = dicom_echo(calling, called, host, port)
    return Check(name, OK, "C-ECHO succeeded") if why is None else Check(name, FAIL, f"{why}: {advice}")


def check_audit_syslog(settings: Settings) -> list[Check]:
    """The audit trail's collector, when ``[audit.syslog]`` names one: over TLS, a connection and
    handshake with our certificate; over UDP, only that the host resolves (UDP has no answer)."""
    config = settings.audit_syslog
    if config is None:
        return []
    name = f"audit trail collector {_host_port(config.host, config.port)} ({config.transport})"
    if config.transport == "udp":
        try:
            socket.getaddrinfo(config.host, config.port, type=socket.SOCK_DGRAM)
        except socket.gaierror:
            return [Check(name, FAIL, f"the host name {config.host!r} does not resolve: check audit.syslog.host "
                                      f"in {settings.source}")]
        return [Check(name, OK, "the host resolves (UDP cannot tell whether a collector listens)")]
    files = syslog.TlsFiles(*(str(p) if p else "" for p in (config.ca, config.cert, config.key)))
    try:
        sender = syslog.TlsSender(config.host, config.port, files, timeout=TIMEOUT)
        try:
            sender.send([])  # connect and handshake, nothing sent
        finally:
            sender.close()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        return [Check(name, FAIL, f"{_one_line(exc)}: check that the collector runs, audit.syslog.host, port, "
                                  f"ca, cert and key in {settings.source}")]
    return [Check(name, OK, "TLS handshake succeeded")]


def check_destinations(settings: Settings) -> list[Check]:
    """Each ``[forward.NAME]`` destination answers a C-ECHO from its calling AE title."""
    return [echo_check(f"forward destination {d.name} ({d.ae_title} at {_host_port(d.host, d.port)})",
                       d.calling_ae, d.ae_title, d.host, d.port,
                       f"check that the archive runs, ae_title, host and port under [forward.{d.name}] in "
                       f"{settings.source}, and that it accepts calling AE {d.calling_ae}; until then studies "
                       f"wait in the queue")
            for d in settings.destinations]


# -- the probes ------------------------------------------------------------------------


def bind_error(address: str, port: int) -> int | None:
    """None when ``address:port`` can be bound now (as the servers bind: SO_REUSEADDR), else the errno."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(address or None, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        return errno.EADDRNOTAVAIL
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return exc.errno or errno.EADDRINUSE
    return None


def reach(host: str, port: int, timeout: float | None = None) -> str | None:
    """None when a TCP connection to ``host:port`` opens, else why not, in words."""
    timeout = timeout or TIMEOUT
    where = _host_port(host, port)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror:
        return f"the host name {host!r} does not resolve"
    except ConnectionRefusedError:
        return f"nothing listens on {where} (connection refused)"
    except TimeoutError:
        return f"no answer from {where} within {timeout:g} s (host down, or a firewall drops the connection)"
    except OSError as exc:
        return f"cannot connect to {where} ({exc.strerror or exc})"
    return None


def dicom_echo(calling: str, called: str, host: str, port: int, timeout: float | None = None) -> str | None:
    """None when ``called`` at ``host:port`` accepts an association and answers C-ECHO with success."""
    timeout = timeout or TIMEOUT
    unreachable = reach(host, port, timeout)
    if unreachable:
        return unreachable
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    where = _host_port(host, port)
    with _quiet("pynetdicom"):
        assoc = ae.associate(host, port, ae_title=called)
        if assoc.is_established:
            try:
                status = assoc.send_c_echo()
            finally:
                assoc.release()
            code = getattr(status, "Status", None)
            if code == 0:
                return None
            return (f"{where} accepted the association but answered the C-ECHO with "
                    + (f"status 0x{code:04X}" if code is not None else f"nothing within {timeout:g} s"))
        if assoc.is_rejected:
            rsp = getattr(assoc.acceptor, "primitive", None)
            reason = getattr(rsp, "reason_str", "") or "no reason given"
            return f"{where} rejected an association to {called} from {calling} ({reason})"
    return f"{where} accepts connections but did not answer as a DICOM AE {called} within {timeout:g} s"


def healthz(host: str, port: int, timeout: float | None = None) -> str | None:
    """None when ``GET /healthz`` on ``host:port`` answers 200, else what it did."""
    return http_answer(host, port, "/healthz", timeout=timeout)


#: What the review desk's login page carries (its title), to tell it from another web server.
DESK_MARKER = b"Imaging gatekeeper"


def http_answer(host: str, port: int, path: str, *, tls: bool = False, marker: bytes = b"",
                timeout: float | None = None) -> str | None:
    """None when ``GET path`` on ``host:port`` answers 200 (with ``marker`` in the body when given), else
    what it did. Over TLS the certificate is not verified: this asks who listens, it sends nothing secret."""
    timeout = timeout or TIMEOUT
    unreachable = reach(host, port, timeout)
    if unreachable:
        return unreachable
    where = f"{'https' if tls else 'http'}://{_host_port(host, port)}{path}"
    if tls:
        import ssl

        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        status, body = response.status, response.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        return f"GET {where} got no HTTP answer ({type(exc).__name__})"
    finally:
        connection.close()
    if status != 200:
        return f"GET {where} answered {status}"
    return None if marker in body else f"GET {where} answered, but not as the gatekeeper's review desk"


def certificate_validity(path: Path) -> tuple[dt.datetime, dt.datetime]:
    """``(not_before, not_after)`` of a PEM certificate, in UTC. Raises OSError or ValueError."""
    data = path.read_bytes()
    try:
        from cryptography import x509
    except ImportError:
        return _openssl_validity(path)
    cert = x509.load_pem_x509_certificate(data)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def load_private_key(path: Path) -> None:
    """Raise OSError or ValueError unless ``path`` holds an unencrypted PEM private key."""
    data = path.read_bytes()
    try:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:
        _openssl(["pkey", "-noout", "-passin", "pass:", "-in", str(path)])
        return
    try:
        load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted
        raise ValueError(str(exc)) from None


# -- helpers ---------------------------------------------------------------------------


def _usable_folder(folder: Path, created: list[Path]) -> str | None:
    """Create ``folder`` if missing and write a file in it; None when that worked, else why."""
    if not folder.is_dir():
        try:
            folder.mkdir(parents=True)
            created.append(folder)
        except FileExistsError:
            if not folder.is_dir():
                return f"{folder} exists and is not a folder"
        except OSError as exc:
            return f"cannot create {folder}: {exc.strerror or exc}; {_advice(exc)}"
    try:
        # A hidden ".tmp" name: a recovery running meanwhile takes it for nothing of its own.
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".gatekeeper-check-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write in {folder}: {exc.strerror or exc}; {_advice(exc)}"
    return None


def _advice(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "give the gatekeeper's user write access to it (owner or permissions)"
    if exc.errno == errno.EROFS:
        return "the volume is read-only: remount it read-write or move storage.root"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file stands where a folder should be: move it or change storage.root"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the volume is full: free space on it"
    return "check the volume and storage.root"


def _calling_ae(settings: Settings) -> str:
    """Our AE title as the caller of our own C-ECHO, unless the access rules refuse it from
    loopback: then the first known modality they let verify from there."""
    from gateway.dicom import access

    candidates = [settings.ae_title, *sorted(getattr(settings, "modalities", {}))]
    for ae in candidates:
        if access.decide(ae, "127.0.0.1", "echo", settings):
            return ae
    return settings.ae_title


def _openssl_validity(path: Path) -> tuple[dt.datetime, dt.datetime]:
    out = _openssl(["x509", "-noout", "-startdate", "-enddate", "-in", str(path)])
    dates = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    try:
        return _openssl_date(dates["notBefore"]), _openssl_date(dates["notAfter"])
    except (KeyError, IndexError) as exc:
        raise ValueError(f"openssl printed no validity dates ({out.strip()!r})") from exc


def _openssl_date(text: str) -> dt.datetime:
    """``Jan  1 00:00:00 2030 GMT`` (openssl's date, always in English) as an aware UTC datetime."""
    month, day, clock, year = text.split()[:4]
    english = {"Jan": 1, "Feb": 2, "Mar": 3, "Apr": 4, "May": 5, "Jun": 6, "Jul": 7, "Aug": 8, "Sep": 9,
               "Oct": 10, "Nov": 11, "Dec": 12}
    hour, minute, second = (int(x) for x in clock.split(":"))
    number = english.get(month)
    if number is None:
        raise ValueError(f"cannot read the date {text!r}")
    return dt.datetime(int(year), number, int(day), hour, minute, second, tzinfo=dt.timezone.utc)


def _openssl(args: list[str]) -> str:
    """Run ``openssl ARGS``; its output, or ValueError with its complaint."""
    program = shutil.which("openssl")
    if program is None:
        raise ValueError("neither the Python package cryptography nor the openssl program is installed to read it")
    done = subprocess.run([program, *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"})
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if line.strip() and ":error:" not in line]
        raise ValueError(_one_line("; ".join(said)) if said else f"openssl exited {done.returncode}")
    return done.stdout


@contextlib.contextmanager
def _pg_connect_timeout() -> Iterator[None]:
    """Bound the wait for a PostgreSQL server that does not answer (libpq reads PGCONNECT_TIMEOUT)."""
    if "PGCONNECT_TIMEOUT" in os.environ:
        yield
        return
    os.environ["PGCONNECT_TIMEOUT"] = str(DATABASE_CONNECT_TIMEOUT)
    try:
        yield
    finally:
        os.environ.pop("PGCONNECT_TIMEOUT", None)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """pynetdicom logs every step of an association; the check says the outcome in one line."""
    logger = logging.getLogger(logger_name)
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sentence(exc: BaseException | str) -> str:
    """An error's message on one line, ending as a sentence does."""
    text = _one_line(exc).rstrip(". ")
    return text if text.endswith(("?", "!")) else text + "."


def _one_line(exc: BaseException | str) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        exc = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
