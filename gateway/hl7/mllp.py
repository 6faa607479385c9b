"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): ``<VT>`` message ``<FS><CR>``.

:class:`FrameReader` reads frames off a socket one at a time, refusing what is not a
frame or is larger than the limit; :func:`frame` wraps a message; :func:`split` cuts a
file into messages (MLLP frames, or messages separated by blank lines).
"""

from __future__ import annotations

import re
import socket

START, END, CR = b"\x0b", b"\x1c", b"\r"
#: Bytes read at a time.
CHUNK = 64 * 1024
#: Bytes of a refused frame kept to try to read its MSH (for an AR).
HEAD = 4096


class FrameError(Exception):
    """The connection cannot go on; ``head`` holds the first bytes of the frame, for an AR."""

    def __init__(self, text: str, head: bytes = b""):
        super().__init__(text)
        self.head = head


class NotMllp(FrameError):
    """Bytes that do not start with ``<VT>``."""


class TooLarge(FrameError):
    """A frame longer than the limit."""


class Truncated(FrameError):
    """The peer closed the connection inside a frame."""


class FrameReader:
    """Frames from ``sock``; between frames the reader waits ``idle_timeout`` (a server: as
    long as the peer keeps the connection), inside one ``timeout`` seconds for each piece."""

    def __init__(self, sock: socket.socket, max_bytes: int, timeout: float | None,
                 idle_timeout: float | None = None) -> None:
        self.sock = sock
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.buffer = bytearray()

    def _recv(self) -> bytes:
        return self.sock.recv(CHUNK)

    def next(self) -> bytes | None:
        """The next message (without framing), or None when the peer closed between frames."""
        self.sock.settimeout(self.idle_timeout)
        while True:
            while self.buffer[:1] in (b"\r", b"\n", b" ", b"\t"):  # a CR or LF after the last <FS>
                del self.buffer[:1]
            if self.buffer:
                break
            chunk = self._recv()
            if not chunk:
                return None
            self.buffer += chunk
        self.sock.settimeout(self.timeout)
        if self.buffer[:1] != START:
            raise NotMllp("the bytes received do not start with <VT> (0x0B): not an MLLP frame",
                          bytes(self.buffer[:HEAD]))
        searched = 1
        while True:
            end = self.buffer.find(END, searched)
            if end >= 0:
                message = bytes(self.buffer[1:end])
                del self.buffer[:end + 1]
                if len(message) > self.max_bytes:
                    raise TooLarge(f"a message of {len(message):,} bytes, more than hl7.max_message_bytes",
                                   message[:HEAD])
                return message
            if len(self.buffer) - 1 > self.max_bytes:
                raise TooLarge(f"a message of more than {self.max_bytes:,} bytes (hl7.max_message_bytes)",
                               bytes(self.buffer[1:HEAD]))
            searched = max(len(self.buffer), 1)
            chunk = self._recv()
            if not chunk:
                raise Truncated(f"the connection closed inside a frame after {len(self.buffer) - 1:,} bytes")
            self.buffer += chunk


def frame(message: bytes) -> bytes:
    """``message`` as one MLLP frame."""
    return START + message + END + CR




def split(data: bytes) -> list[bytes]:
    """The messages of a file: its MLLP frames when it has any, else the blocks between blank lines."""
    if START in data:
        return [part.split(END, 1)[0] for part in data.split(START)[1:] if part.split(END, 1)[0].strip()]
    normal = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    blocks = re.split(rb"\n[ \t]*\n", normal)
    return [block.strip(b"\n").replace(b"\n", b"\r") + b"\r" for block in blocks if block.strip()]
