"""``gatekeeper hl7 send FILE``: send the messages of a file to an MLLP listener and print each answer.

The file holds one or more messages, as MLLP frames or separated by blank lines
(segments may end in CR, CR LF or LF). Each is sent over one connection in turn and its
answer printed, segments one a line. Exit 0 when every answer is AA, 1 when one is not
(the rest are still sent), 2 when the file cannot be read or holds no message.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.hl7 import mllp
from gateway.hl7.client import Client, ack_code


def register(verbs, common) -> None:
    hl7 = verbs.add_parser("hl7", parents=[common], help="the RIS feed: send HL7 messages from a file")
    sub = hl7.add_subparsers(dest="hl7_verb", metavar="ACTION", required=True)
    send = sub.add_parser("send", parents=[common], help="send the messages of FILE over MLLP, print each ACK")
    send.add_argument("file", metavar="FILE")
    send.add_argument("--host", default="127.0.0.1", help="listener host (default 127.0.0.1)")
    send.add_argument("--port", type=int, help="listener port (default: hl7.port of the settings)")
    send.set_defaults(run=send_file, needs_app=False)


def send_file(_app, args) -> int:
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"gatekeeper: cannot read {path}: {exc.strerror or exc}; check the path", file=sys.stderr)
        return 2
    messages = mllp.split(data)
    if not messages:
        print(f"gatekeeper: {path} holds no HL7 message; write each message's segments on lines of their "
              f"own, messages separated by a blank line", file=sys.stderr)
        return 2
    port = args.port or args.settings.hl7_port
    if not port:
        print("gatekeeper: no port to send to: hl7.port is 0 in the settings; pass --port", file=sys.stderr)
        return 2
    failed = 0
    try:
        with Client(args.host, port) as client:
            for number, message in enumerate(messages, start=1):
                answer = client.send(message)
                code = ack_code(answer)
                failed += code != "AA"
                print(f"message {number}: {code or 'no MSA'}")
                print(_text(answer).replace("\r", "\n").rstrip("\n"))
    except (OSError, ConnectionError) as exc:
        print(f"gatekeeper: cannot send to {args.host}:{port}: {exc}. Check that the gatekeeper is serving and "
              f"hl7.port.", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _text(answer: bytes) -> str:
    try:
        return answer.decode("utf-8")
    except UnicodeDecodeError:
        return answer.decode("latin-1")
