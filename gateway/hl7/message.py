"""One HL7 v2 message: bytes to text in its character set, parsed by python-hl7, its header read.

python-hl7 (``hl7`` on PyPI) does the parsing: separators from MSH-1/MSH-2, repetitions,
components, subcomponents and escape sequences (``\\T\\``, ``\\S\\``, ...). This module only
decodes the bytes (MSH-18, else the ``hl7.charset`` setting), turns ``<CR><LF>`` and a
lone ``<LF>`` into the ``<CR>`` that ends a segment, and gives plain access to fields.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import hl7

from gateway.settings import HL7_CHARSETS

#: Versions taken (MSH-12).
VERSIONS = ("2.3.1", "2.4", "2.5", "2.5.1")


class Unreadable(Exception):
    """No message could be read (no MSH, bad separators, undecodable bytes): ``code`` and a sentence."""

    def __init__(self, code: str, text: str, location: str = "MSH^1^1"):
        super().__init__(text)
        self.code, self.text, self.location = code, text, location


def field(segment: hl7.Segment | None, number: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """A value of ``segment`` (``SEG-number.comp.sub`` of repetition ``rep``), unescaped and
    stripped; "" when the segment, field or part is not there."""
    if segment is None:
        return ""
    try:
        value = segment.extract_field(field_num=number, repeat_num=rep, component_num=comp, subcomponent_num=sub)
    except (IndexError, KeyError):
        return ""
    return str(value).strip()


def component_text(segment: hl7.Segment | None, number: int, rep: int = 1, comp: int = 1) -> str:
    """A component with its subcomponents joined by ``^`` (e.g. a name in OBR-32.1)."""
    parts = []
    for sub in range(1, 8):
        parts.append(field(segment, number, rep, comp, sub))
    return "^".join(parts).rstrip("^") if any(parts) else ""


def repetitions(segment: hl7.Segment | None, number: int) -> int:
    """How many repetitions field ``number`` of ``segment`` has (0 when empty or absent)."""
    if segment is None:
        return 0
    try:
        value = segment(number)
    except (IndexError, KeyError):
        return 0
    if len(value) and isinstance(value[0], hl7.Repetition):
        return len(value)
    return 1 if str(value) else 0


@dataclass(frozen=True)
class Parsed:
    """A parsed message with its header's values."""

    message: hl7.Message
    sending_application: str
    sending_facility: str
    control_id: str
    message_code: str  # MSH-9.1
    event: str  # MSH-9.2
    processing_id: str  # MSH-11.1
    version: str  # MSH-12.1
    charset: str

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.event}" if self.event else self.message_code

    @functools.cached_property
    def _by_name(self) -> dict[str, list[hl7.Segment]]:
        found: dict[str, list[hl7.Segment]] = {}
        for segment in self.message:
            found.setdefault(str(segment[0]), []).append(segment)
        return found

    def segments(self, name: str) -> list[hl7.Segment]:
        """The segments named ``name``, in message order."""
        return list(self._by_name.get(name, ()))

    def segment(self, name: str) -> hl7.Segment | None:
        found = self.segments(name)
        return found[0] if found else None


_LINE_ENDS = re.compile(r"\r\n|\n")


def parse(data: bytes, default_charset: str) -> Parsed:
    """``data`` (one message, without MLLP framing) decoded and parsed; :class:`Unreadable` if it cannot be."""
    latin = data.decode("latin-1")  # every byte is a character: enough to read MSH-18
    text = _segments(latin)
    plain = data.isascii()  # the same text in every character set taken: parsed once
    if not text.startswith("MSH") or len(text) < 8:
        raise Unreadable("100", "the message does not start with an MSH segment; send MSH first")
    message = _parse(text)
    name = field(message.segment("MSH"), 18).upper() or default_charset
    codec = HL7_CHARSETS.get(name)
    if codec is None:
        raise Unreadable("102", f"MSH-18 names the character set {name!r}, which is not taken; send "
                                f"{', '.join(repr(c) for c in HL7_CHARSETS)}", "MSH^1^18")
    if codec != "latin-1" and not plain:
        try:
            message = _parse(_segments(data.decode(codec)))
        except UnicodeDecodeError as exc:
            raise Unreadable("102", f"the message is not valid {name} (byte {exc.start + 1}); send it in the "
                                    f"character set MSH-18 names", "MSH^1^18") from None
    msh = message.segment("MSH")
    return Parsed(message, field(msh, 3), field(msh, 4), field(msh, 10), field(msh, 9, 1, 1).upper(),
                  field(msh, 9, 1, 2).upper(), field(msh, 11).upper(), field(msh, 12), name)


def _segments(text: str) -> str:
    """Segments ended by ``<CR>`` (``<CR><LF>`` and ``<LF>`` taken too), no empty lines, no trailing blanks."""
    lines = [line for line in _LINE_ENDS.sub("\r", text).split("\r") if line.strip()]
    return "\r".join(lines).lstrip("\ufeff \t")


def _parse(text: str) -> hl7.Message:
    try:
        message = hl7.parse(text)
        message.segment("MSH")
    except Exception as exc:  # python-hl7 raises several kinds for a broken header
        raise Unreadable("100", f"the MSH segment cannot be read ({exc}); check MSH-1 and MSH-2 "
                                f"(the separators, usually |^~\\&)") from None
    return message
