"""HL7 v2 to order fields (docs/hl7.md): pure, table-driven; no socket, no database."""

from __future__ import annotations

import socket

import pytest

from gateway.hl7 import mapping, mllp
from gateway.hl7.message import Unreadable, parse
from tests.hl7_messages import edited, example
from worklist import feed
from worklist.intake import order_from_record

CONTEXT = mapping.Context("NORTHSIDE", "", {"MR": "MR2", "MR@RAD1": "MR1", "CT": "CT1"})


def msg(*segments: str, version: str = "2.5.1", kind: str = "ORM^O01", charset: str = "") -> bytes:
    head = f"MSH|^~\\&|RIS|NORTHSIDE|GATEKEEPER|NORTHSIDE|20261201080000||{kind}|C1|P|{version}||||||{charset}"
    return "\r".join((head, *segments)).encode("utf-8") + b"\r"


def with_field(segment: str, number: int, text: str) -> str:
    """``segment`` with field ``number`` set to ``text``."""
    fields = segment.split("|")
    fields += [""] * (number + 1 - len(fields))
    fields[number] = text
    return "|".join(fields)


def order_of(data: bytes, context: mapping.Context = CONTEXT) -> tuple[dict, dict]:
    message = mapping.events(parse(data, "UNICODE UTF-8"), context)
    assert not message.problems, message.problems
    (event,) = message.events
    return event.record, event.where


ORC = "ORC|NW|P1|F1||SC||^^^202612011000|||||1234567893^SMITH^JOHN|||||||||IMAGING^^^^^^^^^1987654328"
OBR = "OBR|1|P1|F1|70553^MRI BRAIN^C4||||||||||||||ACC1|RP1|SPS1||||MR"
PID = "PID|1||MRN1^^^NORTHSIDE||DOE^JANE||19800203|F"
IN1 = "IN1|1||ACME_HEALTH"


# ---------------------------------------------------------------- the examples


def test_the_v231_orm_reads_every_field_of_the_table():
    record, where = order_of(example("orm_nw_v231"))
    order = order_from_record(record)
    assert order.accession_number == "ACC6001" and where["accession_number"] == "OBR^1^18"
    assert (order.patient_id, order.patient_issuer) == ("MRN6001", "NORTHSIDE")  # the authority's repetition
    assert order.patient_name == "MÜLLER^JOSÉ^A^DR^JR"  # Latin-1 (MSH-18 8859/1), prefix and suffix swapped
    assert (order.birth_date.isoformat(), order.sex) == ("1975-04-12", "M")
    assert (order.cpt, order.description) == ("70553", "MRI BRAIN WO & W CONTRAST")  # \T\ is &
    assert (order.modality, order.body_part, order.location) == ("MR", "BRAIN", "RAD1")
    assert order.station_ae == "MR1"  # MR@RAD1 wins over MR
    assert order.scheduled_start.isoformat() == "2026-12-01T09:30:00" and where["scheduled.start"] == "OBR^1^27"
    assert (order.ordering_npi, order.ordering_name, order.facility_npi) == ("1234567893", "SMITH^JOHN", "1987654328")
    assert (order.payer_id, order.member_id, order.plan_type) == ("ACME_HEALTH", "W555000111", "PPO")
    assert order.diagnoses == ("G43.909",)
    assert (order.requested_procedure_id, order.scheduled_procedure_step_id) == ("RP6001", "SPS6001")


def test_the_v251_omi_reads_ipc_and_tq1():
    record, where = order_of(example("omi_nw_v251"))
    order = order_from_record(record)
    assert (order.accession_number, order.requested_procedure_id, order.scheduled_procedure_step_id) == (
        "ACC6002", "RP6002", "SPS6002")
    assert order.study_instance_uid == "1.2.826.0.1.3680043.10.1138.6002"
    assert order.station_ae == "MR1" and where["scheduled.station_ae"] == "IPC^1^9"
    assert order.scheduled_start.isoformat() == "2026-12-01T10:15:00" and where["scheduled.start"] == "TQ1^1^7"
    assert order.laterality == "R" and order.patient_name == "ØSTERGÅRD^SØREN"
    assert order.description == "MRI KNEE WO CONTRAST^RIGHT"  # \S\ is ^
    assert order.diagnoses == ("M23.91",)


def test_lf_crlf_and_cr_read_alike():
    data = example("omi_nw_v251")
    assert b"\n" not in data
    records = [order_of(data.replace(b"\r", end))[0] for end in (b"\r", b"\n", b"\r\n")]
    assert records[0] == records[1] == records[2]


# ---------------------------------------------------------------- fallbacks, one by one


@pytest.mark.parametrize("obr, ipc, accession, location", [
    (OBR, "IPC|ACC9|RP9|1.2.3|SPS9|CT", "ACC9", "IPC^1^1"),
    (OBR, None, "ACC1", "OBR^1^18"),
    (OBR.replace("ACC1", ""), None, "F1", "OBR^1^3"),
])
def test_accession_is_ipc1_else_obr18_else_obr3(obr, ipc, accession, location):
    record, where = order_of(msg(PID, IN1, ORC, obr, *([ipc] if ipc else [])))
    assert (record["accession_number"], where["accession_number"]) == (accession, location)


@pytest.mark.parametrize("segments, start, location", [
    (["TQ1|1||||||202612011130", OBR + "|||^^^202612011200"], "2026-12-01T11:30:00", "TQ1^1^7"),
    ([OBR + "|||^^^20261201120015"], "2026-12-01T12:00:15", "OBR^1^27"),
    ([OBR], "2026-12-01T10:00:00", "ORC^1^7"),
])
def test_start_is_tq1_else_obr27_else_orc7(segments, start, location):
    record, where = order_of(msg(PID, IN1, ORC, *segments))
    assert (record["scheduled"]["start"], where["scheduled.start"]) == (start, location)


@pytest.mark.parametrize("obr4, obr44, cpt", [
    ("70553^MRI^C4", "", "70553"),
    ("70553^MRI^CPT", "", "70553"),
    ("X123^LOCAL^L", "70551^MRI^CPT4", "70551"),
])
def test_cpt_is_obr4_when_coded_as_cpt_else_obr44(obr4, obr44, cpt):
    obr = OBR.replace("70553^MRI BRAIN^C4", obr4) + "|" * 20 + obr44
    record, _ = order_of(msg(PID, IN1, ORC, obr))
    assert record["procedure"]["cpt"] == cpt


def test_a_local_code_without_cpt_is_refused_naming_obr4():
    obr = OBR.replace("70553^MRI BRAIN^C4", "X123^LOCAL^L")
    problems = mapping.events(parse(msg(PID, IN1, ORC, obr), "UNICODE UTF-8"), CONTEXT).problems
    assert [(p.location, p.code) for p in problems] == [("OBR^1^4", feed.TABLE_VALUE_NOT_FOUND)]


@pytest.mark.parametrize("modifier, laterality", [("RT", "R"), ("LT", "L"), ("50", "B"), ("", None)])
def test_laterality_from_obr45(modifier, laterality):
    record, _ = order_of(msg(PID, IN1, ORC, OBR + "|" * 21 + modifier))
    assert record["procedure"].get("laterality") == laterality


@pytest.mark.parametrize("pid3, authority, patient", [
    ("A1^^^SOUTH~B2^^^NORTHSIDE", "NORTHSIDE", ("B2", "NORTHSIDE")),
    ("A1^^^SOUTH~B2^^^NORTHSIDE", "", ("A1", "SOUTH")),
    ("A1^^^SOUTH~B2^^^NORTHSIDE", "EAST", ("A1", "SOUTH")),
    ("C3", "NORTHSIDE", ("C3", "")),
])
def test_patient_id_is_the_authoritys_repetition_else_the_first(pid3, authority, patient):
    record, _ = order_of(msg(PID.replace("MRN1^^^NORTHSIDE", pid3), IN1, ORC, OBR),
                         mapping.Context(authority, "", {"MR": "MR2"}))
    assert (record["patient"]["id"], record["patient"].get("issuer", "")) == patient


@pytest.mark.parametrize("xpn, pn", [
    ("DOE^JANE", "DOE^JANE"),
    ("DOE^JANE^Q^III^DR", "DOE^JANE^Q^DR^III"),
    ("DOE^JANE^^^DR", "DOE^JANE^^DR"),
    ("O\\T\\BRIEN^PAT", "O&BRIEN^PAT"),
])
def test_xpn_becomes_dicom_pn(xpn, pn):
    record, _ = order_of(msg(PID.replace("DOE^JANE", xpn), IN1, ORC, OBR))
    assert record["patient"]["name"] == pn


def test_a_name_part_holding_a_separator_is_refused():
    data = msg(PID.replace("DOE^JANE", "DOE\\S\\X^JANE"), IN1, ORC, OBR)
    problems = mapping.events(parse(data, "UNICODE UTF-8"), CONTEXT).problems
    assert [(p.location, p.code) for p in problems] == [("PID^1^5", feed.DATA_TYPE_ERROR)]


@pytest.mark.parametrize("sex, expected", [("M", "M"), ("F", "F"), ("O", "O"), ("U", ""), ("", None), ("X", "X")])
def test_sex_u_and_empty_are_unknown(sex, expected):
    record, _ = order_of(msg(PID.replace("|F", f"|{sex}"), IN1, ORC, OBR))
    assert record["patient"].get("sex") == expected  # "X" is left to the checks, which refuse it


@pytest.mark.parametrize("orc, obr, npi, location", [
    (ORC, OBR, "1234567893", "ORC^1^12"),
    (ORC.replace("1234567893^SMITH^JOHN", ""), with_field(OBR, 16, "1456789019^JONES^ANNA"), "1456789019", "OBR^1^16"),
    (ORC, with_field(OBR, 16, "1456789019^JONES^ANNA"), "1234567893", "ORC^1^12"),
])
def test_provider_is_orc12_else_obr16(orc, obr, npi, location):
    record, where = order_of(msg(PID, IN1, orc, obr))
    assert (record["ordering_provider"]["npi"], where["ordering_provider.npi"]) == (npi, location)


def test_facility_is_orc21_else_the_setting():
    orc = ORC.replace("IMAGING^^^^^^^^^1987654328", "")
    record, _ = order_of(msg(PID, IN1, orc, OBR), mapping.Context("", "1245319599", {"MR": "MR2"}))
    assert record["facility_npi"] == "1245319599"
    record, _ = order_of(msg(PID, IN1, ORC, OBR), mapping.Context("", "1245319599", {"MR": "MR2"}))
    assert record["facility_npi"] == "1987654328"
    record, where = order_of(msg(PID, IN1, orc, OBR))
    assert "facility_npi" not in record and where["facility_npi"] == "ORC^1^21"


@pytest.mark.parametrize("pv1, ipc, station", [
    ("PV1|1|O|RAD1", None, "MR1"),     # MODALITY@LOCATION
    ("PV1|1|O|RAD7", None, "MR2"),     # MODALITY
    ("PV1|1|O|RAD1", "IPC|ACC1||||MR||||MR9", "MR9"),  # IPC-9 first
])
def test_station_is_ipc9_else_the_stations_table(pv1, ipc, station):
    record, _ = order_of(msg(PID, pv1, IN1, ORC, OBR, *([ipc] if ipc else [])))
    assert record["scheduled"]["station_ae"] == station


def test_nw_without_a_station_names_ipc9_and_the_table():
    data = msg(PID, IN1, ORC, OBR.replace("||||MR", "||||US"))
    problems = mapping.events(parse(data, "UNICODE UTF-8"), CONTEXT).problems
    assert [(p.location, p.code) for p in problems] == [("IPC^1^9", feed.REQUIRED_FIELD_MISSING)]
    assert "[hl7.stations]" in problems[0].text and "'US'" in problems[0].text


def test_diagnoses_are_the_icd10_coded_dg1s():
    dg1s = ["DG1|1||M54.5^Low back pain^I10", "DG1|2||724.2^Lumbago^I9", "DG1|3||R51^Headache^ICD10CM",
            "DG1|4||G44.1^Vascular^ICD10"]
    record, where = order_of(msg(PID, IN1, *dg1s, ORC, OBR))
    assert record["diagnoses"] == ["M54.5", "R51", "G44.1"]
    assert (where["diagnoses[1]"], where["diagnoses[2]"]) == ("DG1^3^3", "DG1^4^3")


@pytest.mark.parametrize("text, iso", [
    ("202612011015", "2026-12-01T10:15:00"), ("20261201101530", "2026-12-01T10:15:30"),
    ("20261201101530.1234", "2026-12-01T10:15:30"), ("202612011015-0500", "2026-12-01T10:15:00-05:00"),
    ("20261201", "20261201"), ("tomorrow", "tomorrow"), ("", ""),
])
def test_hl7_datetime(text, iso):
    assert mapping.hl7_datetime(text) == iso


@pytest.mark.parametrize("text, iso", [("19800203", "1980-02-03"), ("198002031200", "1980-02-03"),
                                       ("1980-02-03", "1980-02-03"), ("1980", "1980"), ("", "")])
def test_hl7_date_takes_the_first_eight_digits(text, iso):
    assert mapping.hl7_date(text) == iso


@pytest.mark.parametrize("orc1, orc5, control, status", [
    ("CA", "", "CA", ""), ("OC", "", "OC", ""), ("DC", "", "DC", ""), ("SC", "IP", "SC", "in-progress"),
    ("SC", "CM", "SC", "completed"), ("SC", "CA", "SC", "cancelled"),
])
def test_order_controls(orc1, orc5, control, status):
    orc = ORC.replace("ORC|NW|P1|F1||SC", f"ORC|{orc1}|P1|F1||{orc5}")
    message = mapping.events(parse(msg(PID, IN1, orc, OBR), "UNICODE UTF-8"), CONTEXT)
    (event,) = message.events
    assert (event.control, event.status, event.record) == (control, status, {"accession_number": "ACC1"})


@pytest.mark.parametrize("orc1, orc5, location", [("ZZ", "", "ORC^1^1"), ("SC", "XX", "ORC^1^5")])
def test_unknown_controls_are_table_values_not_found(orc1, orc5, location):
    orc = ORC.replace("ORC|NW|P1|F1||SC", f"ORC|{orc1}|P1|F1||{orc5}")
    problems = mapping.events(parse(msg(PID, IN1, orc, OBR), "UNICODE UTF-8"), CONTEXT).problems
    assert [(p.location, p.code) for p in problems] == [(location, feed.TABLE_VALUE_NOT_FOUND)]


@pytest.mark.parametrize("segments, location", [((PID, IN1, OBR), "ORC^1"), ((PID, IN1, ORC), "OBR^1"),
                                                ((PID, IN1, ORC, OBR, ORC), "OBR^1")])
def test_orders_need_an_obr_for_each_orc(segments, location):
    problems = mapping.events(parse(msg(*segments), "UNICODE UTF-8"), CONTEXT).problems
    assert [(p.location, p.code) for p in problems] == [(location, feed.SEGMENT_SEQUENCE)]


def test_two_orders_in_one_message():
    second_orc = ORC.replace("P1|F1", "P2|F2")
    second_obr = OBR.replace("ACC1|RP1|SPS1", "ACC2|RP2|SPS2")
    message = mapping.events(parse(msg(PID, IN1, ORC, OBR, second_orc, second_obr), "UNICODE UTF-8"), CONTEXT)
    assert [e.record["accession_number"] for e in message.events] == ["ACC1", "ACC2"]
    assert message.events[1].where["accession_number"] == "OBR^2^18"


# ---------------------------------------------------------------- reports and patients


@pytest.mark.parametrize("obr25, status", [("P", "preliminary"), ("F", "final"), ("C", "corrected")])
def test_oru_report_status(obr25, status):
    data = edited("oru_final_v251", ("|F|||||||1111111112", f"|{obr25}|||||||1111111112"))
    (event,) = mapping.events(parse(data, "UNICODE UTF-8"), CONTEXT).events
    assert (event.accession_number, event.status, event.at.isoformat()) == ("ACC6001", status, "2026-12-01T14:55:00")
    assert event.radiologist == "1111111112^KLEIN^PETRA"


@pytest.mark.parametrize("change, location, code", [
    (("|F|||||||1111111112", "|X|||||||1111111112"), "OBR^1^25", feed.TABLE_VALUE_NOT_FOUND),
    (("|F|||||||1111111112", "||||||||1111111112"), "OBR^1^25", feed.REQUIRED_FIELD_MISSING),
    (("20261201145500", "20261341"), "OBR^1^22", feed.DATA_TYPE_ERROR),
])
def test_oru_problems(change, location, code):
    problems = mapping.events(parse(edited("oru_final_v251", change), "UNICODE UTF-8"), CONTEXT).problems
    assert [(p.location, p.code) for p in problems] == [(location, code)]


def test_a08_reads_name_birth_date_and_sex():
    (event,) = mapping.events(parse(example("adt_a08_v231"), "UNICODE UTF-8"), CONTEXT).events
    assert (event.patient_id, event.fields) == ("MRN6001", {"name": "MÜLLER^JOSÉ^ANTON^DR^JR",
                                                            "birth_date": "1975-04-21", "sex": "M"})


def test_a40_reads_the_prior_and_the_new_id():
    (event,) = mapping.events(parse(example("adt_a40_v251"), "UNICODE UTF-8"), CONTEXT).events
    assert (event.patient_id, event.issuer, event.prior_id) == ("MRN6100", "NORTHSIDE", "MRN6001")
    problems = mapping.events(parse(edited("adt_a40_v251", ("MRG|MRN6001^^^NORTHSIDE", "MRG|")),
                                    "UNICODE UTF-8"), CONTEXT).problems
    assert [(p.location, p.code) for p in problems] == [("MRG^1^1", feed.REQUIRED_FIELD_MISSING)]


# ---------------------------------------------------------------- the header


@pytest.mark.parametrize("kind, version, proc, code", [
    ("ORM^O01", "2.3.1", "P", None), ("OMI^O23", "2.5.1", "P", None), ("ADT^A40", "2.4", "P", None),
    ("SIU^S12", "2.5.1", "P", feed.UNSUPPORTED_MESSAGE_TYPE), ("ADT^A01", "2.5.1", "P", feed.UNSUPPORTED_EVENT),
    ("ORM^O02", "2.3.1", "P", feed.UNSUPPORTED_EVENT), ("ORM^O01", "2.3.1", "T", feed.UNSUPPORTED_PROCESSING_ID),
    ("ORM^O01", "2.2", "P", feed.UNSUPPORTED_VERSION), ("ORM^O01", "2.6", "P", feed.UNSUPPORTED_VERSION),
])
def test_what_is_refused_whatever_the_content(kind, version, proc, code):
    data = msg(PID, kind=kind, version=version).replace(b"|C1|P|", f"|C1|{proc}|".encode())
    problems = mapping.unsupported(parse(data, "UNICODE UTF-8"), ("P",))
    assert [p.code for p in problems] == ([code] if code else [])


@pytest.mark.parametrize("data, code", [
    (b"PID|1||MRN1\r", "100"), (b"", "100"), (b"\x00\x01garbage", "100"),
    (b"MSH|^~\\&|RIS|||||||||||||||KOI8-R\r", "102"),
    ("MSH|^~\\&|RIS|||||||||2.5.1||||||UNICODE UTF-8\rPID|1||M||MÜLLER\r".encode("latin-1"), "102"),
])
def test_unreadable_messages(data, code):
    with pytest.raises(Unreadable) as bad:
        parse(data, "UNICODE UTF-8")
    assert bad.value.code == code


def test_an_empty_msh18_takes_the_setting():
    data = "MSH|^~\\&|RIS|||||||C1|P|2.3.1\rPID|1||M||MÜLLER^JOSÉ\r".encode("latin-1")
    assert parse(data, "8859/1").charset == "8859/1"
    assert mapping.person_name(parse(data, "8859/1").segment("PID"), 5)[0] == "MÜLLER^JOSÉ"


# ---------------------------------------------------------------- framing


@pytest.mark.parametrize("data, count", [
    (b"MSH|a\rPID|1\r\rMSH|b\r", 2), (b"MSH|a\nPID|1\n\n\nMSH|b\n", 2), (b"MSH|a\r\nPID|1\r\n\r\nMSH|b\r\n", 2),
    (b"\x0bMSH|a\rPID|1\r\x1c\r\x0bMSH|b\r\x1c\r", 2), (b"MSH|a\rPID|1\r", 1), (b"\n\n", 0),
])
def test_a_file_splits_into_messages(data, count):
    parts = mllp.split(data)
    assert len(parts) == count and all(p.startswith(b"MSH") for p in parts)


def _reader(data: bytes, max_bytes: int = 100) -> mllp.FrameReader:
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.close()
    return mllp.FrameReader(ours, max_bytes, 2)


def test_frames_are_read_in_sequence_with_cr_or_lf_between():
    reader = _reader(b"\x0bMSH|1\r\x1c\r\x0bMSH|2\r\x1c\n\x0bMSH|3\r\x1c")
    assert [reader.next(), reader.next(), reader.next(), reader.next()] == [b"MSH|1\r", b"MSH|2\r", b"MSH|3\r", None]


@pytest.mark.parametrize("data, error", [
    (b"MSH|1\r", mllp.NotMllp), (b"\x0bMSH|1\r", mllp.Truncated), (b"\x0b" + b"x" * 101 + b"\x1c\r", mllp.TooLarge),
    (b"\x0b" + b"x" * 500, mllp.TooLarge),
])
def test_what_is_not_a_frame(data, error):
    with pytest.raises(error):
        _reader(data).next()


def test_a_frame_of_exactly_the_limit_is_read():
    assert _reader(b"\x0b" + b"x" * 100 + b"\x1c\r").next() == b"x" * 100
