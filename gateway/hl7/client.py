"""Send HL7 messages over MLLP and read each answer (``gatekeeper hl7 send``, the benchmark)."""

from __future__ import annotations

import socket

import hl7

from gateway.hl7 import mllp


class Client:
    """One MLLP connection: :meth:`send` one message, get its answer."""

    def __init__(self, host: str, port: int, timeout: float = 30) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = mllp.FrameReader(self.sock, 64 * 1024 * 1024, timeout, idle_timeout=timeout)

    def send(self, message: bytes) -> bytes:
        """Send ``message`` (no framing) and return its answer (no framing)."""
        self.sock.sendall(mllp.frame(message))
        answer = self.reader.next()
        if answer is None:
            raise ConnectionError("the server closed the connection without answering")
        return answer

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ack_code(answer: bytes) -> str:
    """MSA-1 of an answer ("" when it cannot be read)."""
    try:
        message = hl7.parse(answer.decode("latin-1").replace("\n", "\r"))
        return str(message.segment("MSA")(1))
    except Exception:
        return ""
