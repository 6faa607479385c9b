"""Syslog for the audit trail: RFC 5424 messages, sent over UDP (RFC 5426) or TLS (RFC 5425).

:func:`rfc5424` and :func:`octet_counted` are pure (the message and its TLS framing);
:class:`UdpSender` and :class:`TlsSender` put them on the wire. Over UDP one message is one
datagram and nothing says it arrived (best effort, by the nature of UDP); over TLS the
connection is kept open, checked before each batch, and opened again after a failure.
"""

from __future__ import annotations

import datetime as dt
import select
import socket
import ssl
from dataclasses import dataclass
from typing import Iterable, Protocol

#: RFC 5424 6.2.1 facility codes, by the names syslog.conf uses.
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14, "solaris-cron": 15,
    **{f"local{n}": 16 + n for n in range(8)},
}
#: Severities used (RFC 5424 6.2.1): an event that succeeded is a notice, a refusal a warning.
NOTICE, WARNING = 5, 4
#: MSGID of a DICOM audit message (PS3.15 A.5.1; IHE ITI TF-2a 3.20.7 uses the same).
DICOM_MSGID = "DICOM+RFC3881"
#: The byte order mark RFC 5424 6.4 requires before a UTF-8 MSG.
BOM = "\ufeff".encode("utf-8")
#: Largest datagram sent over UDP: the IPv4 maximum payload (RFC 5426 3.2 asks senders to
#: stay within the path MTU where they can; a collector on another network may drop more).
MAX_DATAGRAM = 65507


def facility_code(name: str | int) -> int:
    """The facility number of a name (``authpriv``) or number (0 to 23); ValueError otherwise."""
    if isinstance(name, int) and not isinstance(name, bool):
        if 0 <= name <= 23:
            return name
        raise ValueError(f"facility {name} is not 0 to 23")
    if isinstance(name, str) and name.lower() in FACILITIES:
        return FACILITIES[name.lower()]
    raise ValueError(f"facility {name!r} is not one of {', '.join(FACILITIES)} or a number 0 to 23")


def rfc5424(*, facility: int, severity: int, at: dt.datetime, hostname: str, app_name: str, procid: str,
            msgid: str, message: str, sequence_id: int | None = None) -> bytes:
    """One RFC 5424 message: header, structured data, then BOM and the UTF-8 ``message``.

    ``sequence_id`` (1 to 2147483647) goes in the ``meta`` element (RFC 5424 7.3.1,
    ``[meta sequenceId="N"]``): the audit event's id, by which a collector can tell a
    message sent again after a crash; without it the structured data is ``-``.

    ``at`` should carry its UTC offset: an RFC 5424 timestamp must have one, so a naive
    time is taken as UTC (written ``Z``).
    """
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError(f"facility {facility} or severity {severity} out of range")
    stamp = at.isoformat(timespec="milliseconds") if at.tzinfo else at.isoformat(timespec="milliseconds") + "Z"
    if stamp.endswith("+00:00"):
        stamp = stamp[:-6] + "Z"
    header = " ".join((
        f"<{facility * 8 + severity}>1", stamp, _field(hostname, 255), _field(app_name, 48), _field(procid, 128),
        _field(msgid, 32), meta(sequence_id),
    ))
    return header.encode("ascii") + b" " + BOM + message.encode("utf-8")


def meta(sequence_id: int | None) -> str:
    """``[meta sequenceId="N"]``, or ``-`` (no structured data)."""
    if sequence_id is None:
        return "-"
    if not 1 <= sequence_id <= 2147483647:
        raise ValueError(f"sequenceId {sequence_id} is not 1 to 2147483647")
    return f'[meta sequenceId="{sequence_id}"]'


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 4.3 framing over TLS: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces (33 to 126), at most ``limit`` long; ``-`` when empty."""
    text = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return text or "-"


class Sender(Protocol):
    """Puts RFC 5424 messages on the wire; raises OSError when they could not be handed over."""

    def send(self, messages: Iterable[bytes]) -> int: ...

    def close(self) -> None: ...


class UdpSender:
    """RFC 5426: one message per datagram, best effort (nothing tells the sender it arrived)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._sock: socket.socket | None = None
        self._address = None

    def send(self, messages: Iterable[bytes]) -> int:
        if self._sock is None:
            family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            self._sock, self._address = socket.socket(family, kind, proto), address
        sent = 0
        for message in messages:
            try:
                self._sock.sendto(message[:MAX_DATAGRAM], self._address)
            except OSError:
                self.close()  # the address may have changed (DNS): look it up again next time
                raise
            sent += 1
        return sent

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None


@dataclass(frozen=True)
class TlsFiles:
    """The CA that signs the collector's certificate, and the client's own (optional)."""

    ca: str = ""  # empty: the system's trusted CAs
    cert: str = ""
    key: str = ""


class TlsSender:
    """RFC 5425: octet-counted messages on one TLS connection (TLS 1.2 or later, BCP 195),
    the collector's certificate checked against ``files.ca`` and its name ``host``."""

    def __init__(self, host: str, port: int, files: TlsFiles, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if files.cert:
            context.load_cert_chain(files.cert, files.key or None)
        self._context = context
        self._sock: ssl.SSLSocket | None = None

    def send(self, messages: Iterable[bytes]) -> int:
        if self._sock is not None and not self._still_open():
            self.close()
        if self._sock is None:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
            try:
                self._sock = self._context.wrap_socket(raw, server_hostname=self.host)
            except BaseException:
                raw.close()
                raise
            self._settle()
        sent = 0
        try:
            for message in messages:
                self._sock.sendall(octet_counted(message))
                sent += 1
        except OSError:
            self.close()
            raise
        return sent

    def _settle(self) -> None:
        """Under TLS 1.3 the client's certificate is checked after the client's handshake ends: a
        collector that refuses it closes the connection a moment later, and what was sent
        meanwhile is lost. Wait up to ``SETTLE_SECONDS`` for that refusal before sending."""
        assert self._sock is not None
        if self._sock.version() != "TLSv1.3":
            return
        readable, _, _ = select.select([self._sock], [], [], self.SETTLE_SECONDS)
        if readable and not self._still_open():
            self.close()
            raise ConnectionRefusedError(
                f"the collector {self.host}:{self.port} closed the TLS connection after the handshake: it does not "
                f"accept the client certificate (audit.syslog.cert and key), or needs one")

    #: Seconds a new TLS 1.3 connection is given to be refused before the first message goes.
    SETTLE_SECONDS = 0.3

    def _still_open(self) -> bool:
        """False when the collector closed the connection (it sends nothing, so readable means EOF or an alert)."""
        assert self._sock is not None
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        self._sock.setblocking(False)  # readable: TLS 1.3 session tickets, or the end of the connection
        try:
            return self._sock.recv(1) != b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return True  # only TLS records of its own (tickets): still open
        except OSError:
            return False
        finally:
            self._sock.settimeout(self.timeout)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
