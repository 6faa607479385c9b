"""HL7 v2 messages to the RIS feed's events (docs/hl7.md, "Order fields"): pure functions.

Each function reads a :class:`~gateway.hl7.message.Parsed` message and returns the plain
events of :mod:`worklist.feed`, with, for each order field, where the message carried it
(``SEG^n^FIELD``) so that a problem the order checks find names the segment and field.
Only what the message gives is set: an ``XO`` changes those fields and keeps the others.
The values are checked by the same rules as a file import (:mod:`worklist.intake`), not here.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from gateway.hl7.message import Parsed, component_text, field as value, repetitions
from worklist import feed
from worklist.feed import Problem

#: Coding systems of a CPT code (OBR-4.3, OBR-44.3) and of an ICD-10-CM code (DG1-3.3).
CPT_SYSTEMS = ("C4", "CPT", "CPT4", "CPT-4")
ICD10_SYSTEMS = ("I10", "ICD10CM", "ICD10", "I10C")
#: OBR-45 procedure code modifiers -> laterality.
LATERALITY = {"RT": "R", "LT": "L", "50": "B"}
#: PID-8 -> DICOM sex ("U" and empty: unknown).
SEX = {"M": "M", "F": "F", "O": "O", "U": "", "": ""}
#: OBR-25 result status -> report status.
REPORT_STATUS = {"P": "preliminary", "F": "final", "C": "corrected"}
#: ORC-5 order status of an SC -> order status.
SC_STATUS = {"IP": "in-progress", "CM": "completed", "CA": "cancelled"}
#: Message types and their events (MSH-9.1 -> MSH-9.2 taken).
TAKEN = {"ORM": ("O01",), "OMI": ("O23",), "ORU": ("R01",), "ADT": ("A08", "A40")}

_HL7_TIME = re.compile(r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?(?:\.\d+)?([+-]\d{4})?")


@dataclass(frozen=True)
class Context:
    """What the mapping needs of the settings."""

    patient_id_authority: str = ""
    default_facility_npi: str = ""
    stations: dict[str, str] = field(default_factory=dict)


def events(parsed: Parsed, context: Context) -> feed.Message:
    """The events of a message already found to be of a type taken (:func:`unsupported` is empty)."""
    code, event = parsed.message_code, parsed.event
    if code in ("ORM", "OMI"):
        return orders(parsed, context)
    if code == "ORU":
        return reports(parsed)
    if event == "A08":
        return patient_update(parsed, context)
    return patient_merge(parsed, context)


def unsupported(parsed: Parsed, processing_ids: tuple[str, ...]) -> list[Problem]:
    """Why the message is refused (AR) whatever its content: type, event, processing ID, version."""
    if parsed.message_code not in TAKEN:
        return [Problem("MSH^1^9", feed.UNSUPPORTED_MESSAGE_TYPE,
                        f"message type {parsed.message_code or '(empty)'!s} is not taken; the gatekeeper takes "
                        f"{', '.join(f'{c}^{e}' for c, es in TAKEN.items() for e in es)}")]
    if parsed.event not in TAKEN[parsed.message_code]:
        return [Problem("MSH^1^9", feed.UNSUPPORTED_EVENT,
                        f"event {parsed.message_code}^{parsed.event or '(empty)'} is not taken; "
                        f"{parsed.message_code} is taken with {', '.join(TAKEN[parsed.message_code])}")]
    if parsed.processing_id not in processing_ids:
        return [Problem("MSH^1^11", feed.UNSUPPORTED_PROCESSING_ID,
                        f"processing ID {parsed.processing_id or '(empty)'} is not taken here (hl7.processing_ids "
                        f"is {', '.join(processing_ids)}); send the message to the gatekeeper of that environment")]
    if parsed.version not in ("2.3.1", "2.4", "2.5", "2.5.1"):
        return [Problem("MSH^1^12", feed.UNSUPPORTED_VERSION,
                        f"HL7 version {parsed.version or '(empty)'} is not taken; send 2.3.1 to 2.5.1")]
    return []


# ---------------------------------------------------------------- orders


def orders(parsed: Parsed, context: Context) -> feed.Message:
    """ORM^O01 / OMI^O23: one event per ORC, each with its OBR (and IPC, TQ1) of the same rank."""
    orcs = parsed.segments("ORC")
    obrs = parsed.segments("OBR")
    if not orcs or not obrs:
        missing = "ORC" if not orcs else "OBR"
        return feed.Message(problems=(Problem(f"{missing}^1", feed.SEGMENT_SEQUENCE,
                                              f"the order message has no {missing} segment; send ORC and OBR "
                                              f"for each order"),))
    if len(obrs) != len(orcs):
        return feed.Message(problems=(Problem("OBR^1", feed.SEGMENT_SEQUENCE,
                                              f"{len(orcs)} ORC but {len(obrs)} OBR segments; send one OBR after "
                                              f"each ORC"),))
    common, where, problems = _patient_and_visit(parsed, context)
    found = []
    for n, (orc, obr) in enumerate(zip(orcs, obrs), start=1):
        ipc = _nth(parsed.segments("IPC"), n)
        tq1 = _nth(parsed.segments("TQ1"), n)
        record, here, wrong = _order(parsed, context, n, orc, obr, ipc, tq1)
        problems += wrong
        control = value(orc, 1).upper()
        status = ""
        if control not in feed.ORDER_CONTROLS:
            problems.append(Problem(f"ORC^{n}^1", feed.TABLE_VALUE_NOT_FOUND,
                                    f"order control {control or '(empty)'} is not taken; send "
                                    f"{', '.join(feed.ORDER_CONTROLS)}"))
        elif control == "SC":
            status = SC_STATUS.get(value(orc, 5).upper(), "")
            if not status:
                problems.append(Problem(f"ORC^{n}^5", feed.TABLE_VALUE_NOT_FOUND,
                                        f"order status {value(orc, 5) or '(empty)'} of an SC is not taken; send "
                                        f"{', '.join(SC_STATUS)}"))
        record = _merge(common, record)
        if control == "NW" and not record.get("scheduled", {}).get("station_ae"):
            modality = record.get("procedure", {}).get("modality", "")
            problems.append(Problem(f"IPC^{n}^9", feed.REQUIRED_FIELD_MISSING,
                                    f"no station AE title for the order: send IPC-9, or add {modality or 'MODALITY'!r} "
                                    f"(or MODALITY@LOCATION) to [hl7.stations] in the settings"))
        if control != "NW" and control != "XO":
            record = {"accession_number": record.get("accession_number", "")}  # a status change changes nothing else
        found.append(feed.OrderEvent(control, record, {**where, **here}, status))
    if problems:
        return feed.Message(problems=tuple(problems))
    return feed.Message(events=tuple(found))


def _order(parsed: Parsed, context: Context, n: int, orc, obr, ipc, tq1) -> tuple[dict, dict, list[Problem]]:
    record: dict = {}
    where: dict[str, str] = {}
    problems: list[Problem] = []

    def put(path: str, text: str, location: str) -> None:
        if text == "":
            where.setdefault(path, location)  # where it was looked for last: the problem names it
            return
        node = record
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = text
        where[path] = location

    def first(path: str, *options: tuple[str, str]) -> None:
        """The first non-empty of (value, location); none: the last location is named."""
        for text, location in options:
            if text:
                put(path, text, location)
                return
        put(path, "", options[-1][1])

    first("accession_number", (value(ipc, 1), f"IPC^{n}^1"), (value(obr, 18), f"OBR^{n}^18"),
          (value(obr, 3), f"OBR^{n}^3"))
    first("requested_procedure_id", (value(ipc, 2), f"IPC^{n}^2"), (value(obr, 19), f"OBR^{n}^19"))
    first("study_instance_uid", (value(ipc, 3), f"IPC^{n}^3"), (value(parsed.segment("ZDS"), 1), "ZDS^1^1"))
    first("scheduled_procedure_step_id", (value(ipc, 4), f"IPC^{n}^4"), (value(obr, 20), f"OBR^{n}^20"))
    modality = value(ipc, 5) or value(obr, 24)
    first("procedure.modality", (value(ipc, 5), f"IPC^{n}^5"), (value(obr, 24), f"OBR^{n}^24"))
    location = value(parsed.segment("PV1"), 3)
    station = value(ipc, 9) or context.stations.get(f"{modality.upper()}@{location.upper()}") \
        or context.stations.get(modality.upper(), "")
    put("scheduled.station_ae", station, f"IPC^{n}^9")
    start, start_at = "", ""
    for text, location in ((value(tq1, 7), f"TQ1^{n}^7"), (value(obr, 27, 1, 4), f"OBR^{n}^27"),
                           (value(orc, 7, 1, 4), f"ORC^{n}^7")):
        if text:
            start, start_at = text, location
            break
    put("scheduled.start", hl7_datetime(start), start_at or f"OBR^{n}^27")
    for number in (4, 44):
        if value(obr, number, 1, 3).upper() in CPT_SYSTEMS:
            put("procedure.cpt", value(obr, number, 1, 1), f"OBR^{n}^{number}")
            put("procedure.description", value(obr, number, 1, 2), f"OBR^{n}^{number}")
            break
    else:
        put("procedure.cpt", "", f"OBR^{n}^4")
        if value(obr, 4, 1, 1) or value(obr, 44, 1, 1):
            problems.append(Problem(f"OBR^{n}^4", feed.TABLE_VALUE_NOT_FOUND,
                                    "the procedure code is not a CPT code (OBR-4.3 and OBR-44.3 are not C4, CPT or "
                                    "CPT4); send the CPT code in OBR-4 or OBR-44"))
    modifier = value(obr, 45).upper()
    put("procedure.laterality", LATERALITY.get(modifier, modifier), f"OBR^{n}^45")
    put("procedure.body_part", value(obr, 15, 1, 4), f"OBR^{n}^15")
    provider, provider_at = (orc, f"ORC^{n}^12") if value(orc, 12) else (obr, f"OBR^{n}^16")
    number = 12 if provider is orc else 16
    put("ordering_provider.npi", value(provider, number, 1, 1), provider_at)
    put("ordering_provider.name", _person(value(provider, number, 1, 2), value(provider, number, 1, 3)), provider_at)
    first("facility_npi", (value(orc, 21, 1, 10), f"ORC^{n}^21"),
          (context.default_facility_npi, "hl7.default_facility_npi"))
    if "facility_npi" not in record:
        where["facility_npi"] = f"ORC^{n}^21"
    return record, where, problems


def _patient_and_visit(parsed: Parsed, context: Context) -> tuple[dict, dict, list[Problem]]:
    """The order fields of PID, PV1, IN1 and DG1, shared by every order of the message."""
    pid = parsed.segment("PID")
    record: dict = {}
    where = {"patient.id": "PID^1^3", "patient.issuer": "PID^1^3", "patient.name": "PID^1^5",
             "patient.birth_date": "PID^1^7", "patient.sex": "PID^1^8", "scheduled.location": "PV1^1^3",
             "payer.id": "IN1^1^3", "payer.member_id": "IN1^1^36", "payer.plan_type": "IN1^1^15"}
    problems: list[Problem] = []
    if pid is None:
        return record, where, [Problem("PID^1", feed.SEGMENT_SEQUENCE, "the message has no PID segment; send "
                                                                         "the patient in PID")]
    patient: dict = {}
    ident, issuer = patient_id(pid, 3, context.patient_id_authority)
    _set(patient, "id", ident)
    _set(patient, "issuer", issuer)
    name, wrong = person_name(pid, 5)
    if wrong:
        problems.append(Problem("PID^1^5", feed.DATA_TYPE_ERROR, wrong))
    _set(patient, "name", name)
    _set(patient, "birth_date", hl7_date(value(pid, 7)))
    sex = value(pid, 8).upper()
    if value(pid, 8):
        patient["sex"] = SEX.get(sex, sex)
    if patient:
        record["patient"] = patient
    location = value(parsed.segment("PV1"), 3)
    if location:
        record["scheduled"] = {"location": location}
    in1 = parsed.segment("IN1")
    payer: dict = {}
    _set(payer, "id", value(in1, 3))
    _set(payer, "member_id", value(in1, 36))
    _set(payer, "plan_type", value(in1, 15))
    if payer:
        record["payer"] = payer
    codes = []
    for n, dg1 in enumerate(parsed.segments("DG1"), start=1):
        if value(dg1, 3, 1, 3).upper() in ICD10_SYSTEMS and value(dg1, 3, 1, 1):
            where[f"diagnoses[{len(codes)}]"] = f"DG1^{n}^3"
            codes.append(value(dg1, 3, 1, 1))
    if codes:
        record["diagnoses"] = codes
    return record, where, problems


# ---------------------------------------------------------------- reports and patients


def reports(parsed: Parsed) -> feed.Message:
    """ORU^R01: one report status per OBR."""
    found, problems = [], []
    obrs = parsed.segments("OBR")
    if not obrs:
        return feed.Message(problems=(Problem("OBR^1", feed.SEGMENT_SEQUENCE, "the report has no OBR segment; "
                                                                            "send one OBR per order reported"),))
    for n, obr in enumerate(obrs, start=1):
        accession = value(obr, 18) or value(obr, 3)
        where = {"accession_number": f"OBR^{n}^18" if value(obr, 18) else f"OBR^{n}^3"}
        code = value(obr, 25).upper()
        if code not in REPORT_STATUS:
            problems.append(Problem(f"OBR^{n}^25", feed.TABLE_VALUE_NOT_FOUND if code else feed.REQUIRED_FIELD_MISSING,
                                    f"result status {code or '(empty)'} is not taken; send P (preliminary), F "
                                    f"(final) or C (corrected)"))
            continue
        at, text = None, value(obr, 22)
        if text:
            iso = hl7_datetime(text)
            try:
                at = _local(iso)
            except ValueError:
                problems.append(Problem(f"OBR^{n}^22", feed.DATA_TYPE_ERROR,
                                        f"OBR^{n}^22 {text!r} is not a date-time; write YYYYMMDDHHMM[SS] in local time"))
                continue
        found.append(feed.ReportEvent(accession, REPORT_STATUS[code], at, component_text(obr, 32), where))
    if problems:
        return feed.Message(problems=tuple(problems))
    return feed.Message(events=tuple(found))


def patient_update(parsed: Parsed, context: Context) -> feed.Message:
    """ADT^A08: name, birth date and sex of the patient of PID-3."""
    pid = parsed.segment("PID")
    if pid is None:
        return feed.Message(problems=(Problem("PID^1", feed.SEGMENT_SEQUENCE, "the patient update has no PID"),))
    ident, _ = patient_id(pid, 3, context.patient_id_authority)
    if not ident:
        return feed.Message(problems=(Problem("PID^1^3", feed.REQUIRED_FIELD_MISSING,
                                              "PID^1^3 (patient.id) is missing: the update names no patient"),))
    fields: dict = {}
    name, wrong = person_name(pid, 5)
    if wrong:
        return feed.Message(problems=(Problem("PID^1^5", feed.DATA_TYPE_ERROR, wrong),))
    _set(fields, "name", name)
    _set(fields, "birth_date", hl7_date(value(pid, 7)))
    if value(pid, 8):
        sex = value(pid, 8).upper()
        fields["sex"] = SEX.get(sex, sex)
    where = {"patient.name": "PID^1^5", "patient.birth_date": "PID^1^7", "patient.sex": "PID^1^8"}
    return feed.Message(events=(feed.PatientUpdate(ident, fields, where),))


def patient_merge(parsed: Parsed, context: Context) -> feed.Message:
    """ADT^A40: the orders of MRG-1 move to PID-3."""
    pid, mrg = parsed.segment("PID"), parsed.segment("MRG")
    ident, issuer = patient_id(pid, 3, context.patient_id_authority)
    prior, _ = patient_id(mrg, 1, context.patient_id_authority)
    if not ident:
        return feed.Message(problems=(Problem("PID^1^3", feed.REQUIRED_FIELD_MISSING,
                                              "PID^1^3 is missing: the merge names no surviving patient"),))
    if not prior:
        return feed.Message(problems=(Problem("MRG^1^1", feed.REQUIRED_FIELD_MISSING,
                                              "MRG^1^1 is missing: the merge names no prior patient ID"),))
    where = {"patient.id": "PID^1^3", "patient.issuer": "PID^1^3", "prior_id": "MRG^1^1"}
    return feed.Message(events=(feed.PatientMerge(ident, issuer, prior, where),))


# ---------------------------------------------------------------- values


def patient_id(segment, number: int, authority: str) -> tuple[str, str]:
    """(CX-1, CX-4.1) of the repetition whose CX-4 is ``authority`` when set, else of the first."""
    count = repetitions(segment, number)
    chosen = 1
    if authority:
        for rep in range(1, count + 1):
            if value(segment, number, rep, 4).upper() == authority.upper():
                chosen = rep
                break
    return value(segment, number, chosen, 1), value(segment, number, chosen, 4)


def person_name(segment, number: int) -> tuple[str, str]:
    """XPN ``family^given^second^suffix^prefix`` as DICOM PN ``family^given^second^prefix^suffix``,
    and a sentence when a part holds what PN cannot carry (``^`` or ``=`` sent as ``\\S\\``)."""
    family, given, second, suffix, prefix = (value(segment, number, 1, c) for c in (1, 2, 3, 4, 5))
    for part in (family, given, second, suffix, prefix):
        if "^" in part or "=" in part:
            return "", (f"a part of the name, {part!r}, holds '^' or '=', which a DICOM person name uses as a "
                        f"separator; send each part in its own component")
    return _person(family, given, second, prefix, suffix), ""


def _person(*parts: str) -> str:
    return "^".join(parts).rstrip("^")


def hl7_date(text: str) -> str:
    """``YYYYMMDD...`` (first 8 digits) as ``YYYY-MM-DD``; anything else as sent, for the checks to name."""
    if re.fullmatch(r"\d{8}\d*([.+-].*)?", text):
        return f"{text[:4]}-{text[4:6]}-{text[6:8]}"
    return text


def hl7_datetime(text: str) -> str:
    """``YYYYMMDDHHMM[SS][.S][+ZZZZ]`` as ISO ``YYYY-MM-DDTHH:MM:SS[+HH:MM]``; else as sent."""
    match = _HL7_TIME.fullmatch(text)
    if not match:
        return text
    year, month, day, hour, minute, second, offset = match.groups()
    iso = f"{year}-{month}-{day}T{hour}:{minute}:{second or '00'}"
    return iso + (f"{offset[:3]}:{offset[3:]}" if offset else "")


def _local(iso: str) -> dt.datetime:
    """A local date-time from ISO text; ValueError for other text or one with a UTC offset."""
    when = dt.datetime.fromisoformat(iso)
    if when.tzinfo is not None:
        raise ValueError("has an offset")
    return when


def _set(node: dict, key: str, text: str) -> None:
    if text:
        node[key] = text


def _nth(items: list, n: int):
    return items[n - 1] if len(items) >= n else None


def _merge(base: dict, given: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, v in given.items():
        if isinstance(v, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **v}
        else:
            out[key] = v
    return out
