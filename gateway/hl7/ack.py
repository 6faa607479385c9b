"""The answer to a message (HL7 ACK, docs/hl7.md "ACK"), and the one map of core errors to answers.

``MSH`` with sender and receiver swapped, ``MSH-9`` ``ACK^<event>^ACK``, a new ``MSH-10``,
the received ``MSH-11`` and ``MSH-12``; ``MSA`` with the code and the received ``MSH-10``;
one ``ERR`` per problem: the 2.5 layout (ERR-2 location, ERR-3 code, ERR-4 severity,
ERR-8 a sentence) from 2.5 on, ERR-1 before (2.3.1, 2.4). python-hl7 builds the MSH and
MSA (``Message.create_ack``) and escapes the sentences.
"""

from __future__ import annotations

import datetime as dt
import logging

import hl7

from gateway.hl7.message import Parsed
from infra.errors import GatekeeperError, InvalidInput, NotFound
from worklist import feed
from worklist.feed import Outcome, Problem

log = logging.getLogger("gateway.hl7")

#: Sentences of HL7 table 0357 for the codes used.
CODE_TEXT = {
    "100": "Segment sequence error", "101": "Required field missing", "102": "Data type error",
    "103": "Table value not found", "200": "Unsupported message type", "201": "Unsupported event code",
    "202": "Unsupported processing id", "203": "Unsupported version id", "204": "Unknown key identifier",
    "205": "Duplicate key identifier", "207": "Application internal error",
}


def encode(parsed: Parsed, outcome: Outcome, *, application: str, now: dt.datetime) -> str:
    """The ACK of ``parsed`` saying ``outcome`` (segments ended by ``<CR>``)."""
    message = parsed.message
    msh = message.segment("MSH")
    receiving_app = str(msh(5)) if len(msh) > 5 and str(msh(5)) else application
    receiving_facility = str(msh(6)) if len(msh) > 6 else ""
    ack = message.create_ack(outcome.code, message_id=hl7.generate_message_control_id(),
                             application=receiving_app, facility=receiving_facility)
    ack.segment("MSH").assign_field(now.strftime("%Y%m%d%H%M%S"), 7)
    segments = [str(segment) for segment in ack]
    if outcome.problems:
        segments[1] += "|" + _escape(message, outcome.problems[0].text[:80])  # MSA-3, for older receivers
    new_layout = parsed.version.startswith("2.5") or parsed.version >= "2.6"
    for problem in outcome.problems:
        segments.append(_err(message, problem, new_layout))
    return "\r".join(segments) + "\r"


def unreadable(code: str, text: str, location: str, *, application: str, now: dt.datetime) -> str:
    """An AR for a frame with no readable MSH: our own header, MSA-2 empty."""
    stamp = now.strftime("%Y%m%d%H%M%S")
    msh = f"MSH|^~\\&|{application}||||{stamp}||ACK^^ACK|{hl7.generate_message_control_id()}|P|2.5.1"
    message = hl7.parse(msh)
    text = _escape(message, text)
    return "\r".join([msh, f"MSA|AR||{text[:80]}", f"ERR||{location}|{code}^{CODE_TEXT.get(code, '')}^HL70357|E||||{text}"]) + "\r"


def outcome_of_error(exc: Exception) -> Outcome:
    """A core error (or any exception) met while applying a message, as an answer: the one map."""
    if isinstance(exc, NotFound):
        return Outcome(feed.ERROR, (Problem("MSH^1^10", feed.UNKNOWN_KEY, str(exc)),))
    if isinstance(exc, InvalidInput):
        return Outcome(feed.ERROR, (Problem("MSH^1^10", feed.DATA_TYPE_ERROR, str(exc)),))
    if isinstance(exc, GatekeeperError):
        return Outcome(feed.ERROR, (Problem("MSH^1^10", feed.APPLICATION_ERROR, f"{exc}; nothing was applied, "
                                                                               "send the message again"),))
    return Outcome(feed.ERROR, (Problem("MSH^1^10", feed.APPLICATION_ERROR,
                                        "the gatekeeper could not apply the message (see its log); nothing was "
                                        "applied, send the message again"),))


def _err(message: hl7.Message, problem: Problem, new_layout: bool) -> str:
    text = _escape(message, problem.text)
    name = CODE_TEXT.get(problem.code, "")
    location = problem.location if "^" in problem.location else f"{problem.location}^1"
    if new_layout:
        return f"ERR||{location}|{problem.code}^{name}^HL70357|E||||{text}"
    return f"ERR|{location}^{problem.code}&{_escape(message, name)}&HL70357"


def _escape(message: hl7.Message, text: str) -> str:
    return message.escape(text.replace("\r", " ").replace("\n", " "))
