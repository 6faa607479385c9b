"""Change 12 of gateway/dicom/tuning.py: a C-STORE request's command set is decoded without
pydicom, into the same values and the same C_STORE primitive as pynetdicom's own decoding.

Command sets that pynetdicom encodes are compared value by value over the edges (the longest
UID, odd and even lengths, every priority, the first and last message ID); every command set
that is not a plain C-STORE request must be left to pydicom.
"""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.uid import UID, generate_uid
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage

from gateway.dicom import tuning
from tests.test_store_encoding import LONGEST, UIDS
from tests.test_store_scp import Modality, gateway, instance  # noqa: F401 (gateway: a fixture)

KEYWORDS = ("CommandGroupLength", "AffectedSOPClassUID", "CommandField", "MessageID", "Priority",
            "CommandDataSetType", "AffectedSOPInstanceUID")


def encoded_request(sop_instance: str, message_id: int = 1, priority: int = 2, sop_class: str = str(CTImageStorage),
                    **others) -> bytes:
    """A C-STORE-RQ command set as pynetdicom encodes it for sending."""
    primitive = C_STORE()
    primitive.MessageID, primitive.Priority = message_id, priority
    primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID = sop_class, sop_instance
    for name, value in others.items():
        setattr(primitive, name, value)
    primitive.DataSet = BytesIO(b"\x08\x00\x16\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


def pydicom_decoded(encoded: bytes):
    return tuning._original_decode(BytesIO(encoded), True, True)


@pytest.mark.parametrize("sop_instance", UIDS)
@pytest.mark.parametrize("message_id, priority", [(0, 0), (1, 1), (65535, 2)])
def test_the_values_are_those_pydicom_decodes(sop_instance, message_id, priority):
    encoded = encoded_request(sop_instance, message_id, priority)
    ours, theirs = tuning._decode(BytesIO(encoded), True, True), pydicom_decoded(encoded)
    assert isinstance(ours, tuning._StoreCommand)
    for keyword in KEYWORDS:
        value, expected = getattr(ours, keyword), getattr(theirs, keyword)
        assert value == expected and isinstance(value, type(expected)), keyword
        # a UID is pydicom's, marked as checked (change 13); a number is an int
        assert type(value) is (tuning._PlainUID if type(expected) is UID else type(expected)), keyword
    # anything else is pydicom's answer for the same bytes
    assert [(e.tag, e.value) for e in ours] == [(e.tag, e.value) for e in theirs]
    assert len(ours) == len(theirs) and 0x00001000 in ours and "MoveOriginatorApplicationEntityTitle" not in ours
    assert ours[0x00000100].value == 0x0001
    with pytest.raises(AttributeError):
        ours.NotAKeyword  # noqa: B018


@pytest.mark.parametrize("sop_instance", ["1.2.3.4", LONGEST])
def test_the_primitive_is_the_one_pynetdicom_makes(sop_instance, tmp_path):
    encoded = encoded_request(sop_instance, message_id=7, priority=1)

    def message(command_set):
        msg = C_STORE_RQ()
        msg.command_set, msg.context_id = command_set, 3
        msg._data_set_path = tmp_path / "rx.dcm"
        msg._data_set_file = object()
        return msg

    ours = tuning._store_rq_to_primitive(message(tuning._decode(BytesIO(encoded), True, True)))
    theirs = tuning._original_store_rq_to_primitive(message(pydicom_decoded(encoded)))
    for name in ("MessageID", "Priority", "AffectedSOPClassUID", "AffectedSOPInstanceUID",
                 "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "_context_id", "_dataset_path"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert type(ours.AffectedSOPInstanceUID) is tuning._PlainUID and ours.is_valid_request == theirs.is_valid_request
    assert isinstance(ours.DataSet, BytesIO) and ours.DataSet.getvalue() == theirs.DataSet.getvalue() == b""
    assert ours._dataset_path == Path(tmp_path / "rx.dcm")
    # a command set pydicom decoded is converted by pynetdicom itself
    assert tuning._store_rq_to_primitive(message(pydicom_decoded(encoded))).MessageID == 7


def element(number: int, value: bytes, group: int = 0x0000) -> bytes:
    return struct.pack("<HHL", group, number, len(value)) + value


def command(*elements: bytes, group_length: int | None = None) -> bytes:
    rest = b"".join(elements)
    return element(0x0000, struct.pack("<L", len(rest) if group_length is None else group_length)) + rest


def us(value: int) -> bytes:
    return struct.pack("<H", value)


CLASS, SOP = b"1.2.840.10008.5.1.4.1.1.2\x00", b"1.2.3.4\x00"
PLAIN = [element(0x0002, CLASS), element(0x0100, us(1)), element(0x0110, us(5)), element(0x0700, us(2)),
         element(0x0800, us(0x0001)), element(0x1000, SOP)]


def replaced(number: int, value: bytes) -> list[bytes]:
    return [element(number, value) if struct.unpack_from("<H", e, 2)[0] == number else e for e in PLAIN]


def test_the_hand_made_request_is_decoded():
    values = tuning.store_request_values(command(*PLAIN))
    assert values is not None and values["AffectedSOPInstanceUID"] == "1.2.3.4"
    assert values["AffectedSOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2" and values["MessageID"] == 5


@pytest.mark.parametrize("elements, why", [
    (PLAIN + [element(0x1030, b"PACS")], "a Move Originator (pydicom decodes its AE title)"),
    (PLAIN + [element(0x1031, us(3))], "a Move Originator Message ID"),
    (replaced(0x0100, us(0x0030)), "a C-ECHO-RQ"),
    (replaced(0x0100, us(0x8001)), "a C-STORE-RSP"),
    (replaced(0x0800, us(0x0101)), "no data set"),
    (replaced(0x1000, b"1.02.3"), "a component with a leading zero"),
    (replaced(0x1000, b"1.2.3 "), "padded with a space"),
    (replaced(0x1000, b"1..2"), "an empty component"),
    (replaced(0x1000, b".1.2"), "starting with a dot"),
    (replaced(0x1000, b""), "an empty UID"),
    (replaced(0x1000, b"\x00\x00"), "padding alone"),
    (replaced(0x1000, b"1.2.3"), "an odd length"),
    (replaced(0x1000, ("1." + "2" * 63).encode() + b"\x00"), "65 characters"),
    (replaced(0x0110, us(5) + b"\x00\x00"), "a US of four bytes"),
    (replaced(0x0110, b"\x05"), "a US of one byte"),
    ([e for e in PLAIN if e[2:4] != b"\x00\x10"], "no Affected SOP Instance UID"),
    (list(reversed(PLAIN)), "elements out of order"),
    (PLAIN[:1] + PLAIN, "an element twice"),
    (PLAIN + [element(0x0001, b"\x00\x00")], "an element this does not know"),
    (PLAIN[:-1] + [element(0x1000, SOP, group=0x0008)], "another group"),
])
def test_any_other_command_set_is_left_to_pydicom(elements, why):
    encoded = command(*elements)
    assert tuning.store_request_values(encoded) is None, why
    assert not isinstance(tuning._decode(BytesIO(encoded), True, True), tuning._StoreCommand), why


@pytest.mark.parametrize("encoded, why", [
    (command(*PLAIN, group_length=len(b"".join(PLAIN)) + 2), "a group length that is not the group's"),
    (command(*PLAIN)[:-1], "cut short in the last value"),
    (command(*PLAIN) + b"\x00\x00\x00", "bytes after the last element, too few for another"),
    (command(*PLAIN)[12:], "no group length"),
])
def test_a_malformed_command_set_is_left_to_pydicom(encoded, why):
    assert tuning.store_request_values(encoded) is None, why


def test_only_implicit_little_endian_is_decoded_here(monkeypatch):
    monkeypatch.setattr(tuning, "_original_decode", lambda *args: ("pydicom", args[1:]))
    encoded = command(*PLAIN)
    assert isinstance(tuning._decode(BytesIO(encoded), True, True), tuning._StoreCommand)
    assert tuning._decode(BytesIO(encoded), True, True, True) == ("pydicom", (True, True, True))
    assert tuning._decode(BytesIO(encoded), False, True) == ("pydicom", (False, True, False))
    assert tuning._decode(BytesIO(encoded), True, False) == ("pydicom", (True, False, False))


# ------------------------------------------------------------------ over a real association


def test_requests_are_decoded_here_and_a_c_move_store_by_pydicom(app, gateway, monkeypatch):  # noqa: F811
    made = []
    real = tuning._decode

    def recording(*args, **kwargs):
        decoded = real(*args, **kwargs)
        if decoded.CommandField == 0x0001:  # the modality's own responses are decoded here too
            made.append(type(decoded).__name__)
        return decoded

    monkeypatch.setattr(tuning.dimse_messages, "decode", recording)
    with Modality(gateway) as mr:
        assert mr.store(instance(SOPInstanceUID=generate_uid())) == 0x0000
        status = mr.assoc.send_c_store(instance(SOPInstanceUID=generate_uid()), originator_aet="PACS",
                                       originator_id=9)
        assert status.Status == 0x0000
    assert made == ["_StoreCommand", "Dataset"]


def test_pynetdicom_logging_reads_the_command_set_at_debug(app, gateway, caplog):  # noqa: F811
    import logging

    with caplog.at_level(logging.DEBUG, logger="pynetdicom"):  # its handlers stay bound (change 10)
        with Modality(gateway) as mr:
            assert mr.store(instance(SOPInstanceUID="1.2.826.0.1.3680043.8.498.77")) == 0x0000
    lines = [r.getMessage() for r in caplog.records if r.name == "pynetdicom._handlers"]
    assert "Received Store Request" in lines
    assert "Affected SOP Instance UID     : 1.2.826.0.1.3680043.8.498.77" in lines
    assert "Priority                      : Low" in lines


# ------------------------------------------------------- change 13: a UID checked once, kept


@pytest.mark.parametrize("name", ["AffectedSOPClassUID", "AffectedSOPInstanceUID"])
def test_a_uid_decoded_here_is_kept_as_it_is_by_the_primitive(name):
    decoded = tuning._decode(BytesIO(encoded_request(LONGEST)), True, True)
    value = getattr(decoded, name)
    primitive = C_STORE()
    setattr(primitive, name, value)
    assert getattr(primitive, name) is value


def _set_as_pynetdicom(name: str, value):
    """What pynetdicom's own setter keeps for ``value`` (or the error it raises)."""
    primitive = C_STORE()
    prop = tuning._original_uid_properties["_AffectedSOPInstanceUID" if name == "AffectedSOPInstanceUID" else name]
    try:
        prop.fset(primitive, value)
    except (TypeError, ValueError) as exc:
        return type(exc)
    return getattr(primitive, name)


@pytest.mark.parametrize("name", ["AffectedSOPClassUID", "AffectedSOPInstanceUID"])
@pytest.mark.parametrize("value", ["1.2.3", UID("1.2.840.10008.5.1.4.1.1.2"), b"1.2.3.4\x00", "", None, 7,
                                   "1." + "2" * 70])
def test_any_other_value_is_set_by_pynetdicom_as_before(name, value):
    tuning.apply()
    primitive = C_STORE()
    try:
        setattr(primitive, name, value)
    except (TypeError, ValueError) as exc:
        assert _set_as_pynetdicom(name, value) is type(exc)
        return
    kept = getattr(primitive, name)
    expected = _set_as_pynetdicom(name, value)
    assert kept == expected and type(kept) is type(expected)
    assert type(kept) is not tuning._PlainUID


def test_the_response_to_a_c_store_names_the_request_s_uids(app, gateway):  # noqa: F811
    from pynetdicom import evt

    sop = "1.2.826.0.1.3680043.8.498." + "9" * 38  # 64 characters, the longest
    received = []
    with Modality(gateway) as mr:
        mr.assoc.bind(evt.EVT_DIMSE_RECV, lambda event: received.append(event.message.command_set))
        assert mr.store(instance(SOPInstanceUID=sop)) == 0x0000
    (response,) = received
    assert response.CommandField == 0x8001 and response.Status == 0x0000
    assert response.AffectedSOPInstanceUID == sop and len(sop) == 64
    assert response.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
