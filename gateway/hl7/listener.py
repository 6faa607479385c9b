"""The MLLP listener inside ``gatekeeper serve``: one thread per connection, one answer per message.

Each connection reads frames in sequence (:class:`~gateway.hl7.mllp.FrameReader`); each
message is decoded and read (:mod:`.message`), refused with ``AR`` when its type, event,
processing ID, version or sender is not taken, else turned into the feed's events
(:mod:`.mapping`) and handed to :meth:`worklist.feed.Feed.receive`, which commits before
the answer is written back. A frame that is not MLLP, or larger than
``hl7.max_message_bytes``, closes the connection (after an ``AR`` when an MSH could be
read); a connection closed inside a frame changes nothing. The server goes on either way.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time

from gateway.app import App
from gateway.hl7 import ack, mapping, mllp
from gateway.hl7.message import Parsed, Unreadable, parse
from gateway.settings import HL7_CHARSETS, port_unavailable
from infra.errors import GatekeeperError
from worklist import feed
from worklist.feed import Feed, Outcome, Problem, Sender

log = logging.getLogger("gateway.hl7")


class Receiver:
    """Bytes of one message in, bytes of its answer out; the connection handling is elsewhere."""

    def __init__(self, app: App) -> None:
        self.app = app
        s = app.settings
        self.feed = Feed(app.db, app.gate, app.clock)
        self.context = mapping.Context(s.hl7_patient_id_authority, s.hl7_default_facility_npi, s.hl7_stations)

    def answer(self, data: bytes) -> bytes:
        s = self.app.settings
        try:
            parsed = parse(data, s.hl7_charset)
        except Unreadable as bad:
            log.warning("HL7 message refused: %s", bad.text)
            return ack.unreadable(bad.code, bad.text, bad.location, application=s.ae_title,
                                  now=self.app.now()).encode("ascii", "replace")
        codec = HL7_CHARSETS[parsed.charset]
        refused = self._refusal(parsed)
        if refused:
            log.warning("HL7 %s %s from %s^%s refused: AR %s", parsed.message_type, parsed.control_id,
                        parsed.sending_application, parsed.sending_facility, refused[0].code)
            return self._encode(parsed, Outcome(feed.REFUSED, tuple(refused)), codec)
        sender = Sender(parsed.sending_application, parsed.sending_facility, parsed.control_id,
                        parsed.message_type)
        try:  # the one outer guard: whatever goes wrong, the peer gets an AE and nothing was applied
            message = mapping.events(parsed, self.context)
            _, text = self.feed.receive(sender, message, lambda outcome: self._text(parsed, outcome))
        except Exception as exc:
            if not isinstance(exc, GatekeeperError):
                log.exception("HL7 %s could not be applied", sender.source)
            else:
                log.warning("HL7 %s not applied: %s", sender.source, exc)
            return self._encode(parsed, ack.outcome_of_error(exc), codec)
        return text.encode(codec, "replace")

    def _refusal(self, parsed: Parsed) -> list[Problem]:
        s = self.app.settings
        refused = mapping.unsupported(parsed, s.hl7_processing_ids)
        if refused:
            return refused
        if s.hl7_allowed_senders and not any(
                parsed.sending_application == app and facility in ("", parsed.sending_facility)
                for app, facility in s.hl7_allowed_senders):
            return [Problem("MSH^1^3", feed.APPLICATION_ERROR,
                            f"sender {parsed.sending_application}^{parsed.sending_facility} is not in "
                            f"hl7.allowed_senders; add it there to take its messages")]
        if not parsed.control_id:
            return [Problem("MSH^1^10", feed.REQUIRED_FIELD_MISSING,
                            "MSH-10 (message control ID) is empty; every message needs its own")]
        return []

    def _text(self, parsed: Parsed, outcome: Outcome) -> str:
        return ack.encode(parsed, outcome, application=self.app.settings.ae_title, now=self.app.now())

    def _encode(self, parsed: Parsed, outcome: Outcome, codec: str) -> bytes:
        return self._text(parsed, outcome).encode(codec, "replace")

    def refuse_frame(self, head: bytes, why: str) -> bytes | None:
        """The AR for a frame refused whole (too large, not MLLP), when its MSH can be read; else None."""
        first = head.replace(b"\n", b"\r").lstrip(b"\x0b \r").split(b"\r", 1)[0]
        try:
            parsed = parse(first + b"\r", self.app.settings.hl7_charset)
        except Unreadable:
            return None
        problem = Problem("MSH^1", feed.APPLICATION_ERROR, f"{why}; the connection is closed")
        return self._encode(parsed, Outcome(feed.REFUSED, (problem,)), HL7_CHARSETS[parsed.charset])


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class Listener:
    """The running listener: :meth:`stop` closes it and every open connection."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.receiver = Receiver(app)
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                listener.serve_connection(self.request, self.client_address)

        s = app.settings
        try:
            self.server = _Server((s.hl7_bind_address, s.hl7_port), Handler)
        except OSError as exc:
            raise GatekeeperError(port_unavailable(exc, setting="hl7.port", address_setting="hl7.bind_address",
                                                   address=s.hl7_bind_address, port=s.hl7_port, source=s.source,
                                                   serves=" for the HL7 feed", off=" (0 = no listener)")) from None
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="gatekeeper-hl7", daemon=True)
        self.thread.start()
        log.info("HL7 (MLLP) listening on %s:%s", s.hl7_bind_address, self.port)

    def serve_connection(self, sock: socket.socket, address) -> None:
        s = self.app.settings
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            self.connections.add(sock)
        reader = mllp.FrameReader(sock, s.hl7_max_message_bytes, s.network_timeout)
        started, count, ended = time.monotonic(), 0, "closed by the peer"
        try:
            while True:
                data = reader.next()
                if data is None:
                    break
                sock.sendall(mllp.frame(self.receiver.answer(data)))
                count += 1
        except mllp.FrameError as exc:
            ended = str(exc)
            refusal = None if isinstance(exc, mllp.Truncated) else self.receiver.refuse_frame(exc.head, str(exc))
            if refusal is not None:
                try:
                    sock.sendall(mllp.frame(refusal))
                except OSError:
                    pass
            log.warning("HL7 connection from %s:%s closed: %s", address[0], address[1], exc)
        except (socket.timeout, OSError) as exc:
            ended = f"connection error ({exc})"
        finally:
            with self.lock:
                self.connections.discard(sock)
            self.app.db.close()  # this thread's connection
        log.info("HL7 connection from %s:%s ended after %d messages in %.1fs: %s", address[0], address[1], count,
                 time.monotonic() - started, ended)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            open_ = list(self.connections)
        for sock in open_:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def start(app: App) -> Listener | None:
    """The listener of ``[hl7]``, serving; None when ``hl7.port`` is 0."""
    if not app.settings.hl7_port:
        return None
    return Listener(app)
