"""Example HL7 messages for the feed tests: the files of examples/hl7 and edits of them."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import EXAMPLES

HL7 = EXAMPLES / "hl7"
#: [hl7] settings of the tests: the examples' authority and stations.
STATIONS = '"MR" = "MR2"\n"MR@RAD1" = "MR1"\n"CT" = "CT1"\n'


def example(name: str) -> bytes:
    """The bytes of examples/hl7/NAME.hl7."""
    return (HL7 / f"{name}.hl7").read_bytes()


def edited(name: str, *changes: tuple[str, str], control_id: str | None = None) -> bytes:
    """An example with text replaced (each old text must be there) and, optionally, a new MSH-10."""
    raw = example(name)
    charset = "latin-1" if b"8859/1" in raw.split(b"\n", 1)[0].split(b"\r", 1)[0] else "utf-8"
    text = raw.decode(charset)
    for old, new in changes:
        assert old in text, (name, old)
        text = text.replace(old, new, 1)
    if control_id:
        first = text.split("|")
        text = text.replace(f"|{first[9]}|", f"|{control_id}|", 1)
    return text.encode(charset)


def hl7_settings(path: Path, port: int = 0, extra: str = "") -> Path:
    """``path`` (a settings file from write_settings) with the HL7 listener on ``port`` and the tests' [hl7]."""
    text = path.read_text()
    text = text.replace('patient_id_authority = ""', 'patient_id_authority = "NORTHSIDE"', 1)
    text = text.replace("[hl7.stations]\n", "[hl7.stations]\n" + STATIONS, 1)
    marker = "# TCP port of the MLLP listener; 0 = no listener.\nport = 0"
    assert marker in text
    text = text.replace(marker, f"# TCP port of the MLLP listener; 0 = no listener.\nport = {port}", 1)
    path.write_text(text + extra)
    return path
