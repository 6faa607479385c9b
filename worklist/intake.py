"""Parse and check order and auth files before anything is written.

Accepted forms: a JSON array, NDJSON (one object a line), and for auths also CSV
(payer portals export CSV; columns named as the JSON keys, CPT codes separated by
``;``). The shapes of an order and an auth are described in ``examples/README.md``.

A file is all or nothing: :func:`parse_orders` and :func:`parse_auths` either return
every record or raise :class:`IntakeError` listing each bad record by number (the first
is record 1) and line, with the field at fault. A CSV whose header lacks a required
column or names an unknown one is rejected once, naming the header line, not row by row.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from infra.errors import InvalidInput
from worklist.npi import is_valid_npi
from worklist.orders import AUTH_STATUSES, LATERALITIES, ORDER_STATUSES, Auth, Order

_CPT = re.compile(r"^[0-9]{4}[0-9A-Z]$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_ICD10 = re.compile(r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")
_MAX_ERRORS = 20
#: CSV columns for auths: the keys of an auth (examples/README.md); the first eight are required.
AUTH_REQUIRED = ("auth_number", "payer_id", "patient_id", "cpt_codes", "facility_npi", "ordering_npi",
                 "valid_from", "valid_to")
AUTH_COLUMNS = AUTH_REQUIRED + ("units", "units_used", "laterality", "body_part", "status")


@dataclass(frozen=True)
class Problem:
    """One bad field of one record, numbered as a person counts: ``record`` from 1 (None when
    the fault is the file's, not a record's: a CSV header, an unclosed array); ``line`` and
    ``column`` from 1, as editors show them (``column`` only for broken JSON)."""

    record: int | None
    line: int
    field: str
    message: str
    column: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" if self.column is None else f"line {self.line}, column {self.column}"
        if self.record is None:
            return f"{where}, field {self.field}: {self.message}"
        return f"record {self.record} ({where}), field {self.field}: {self.message}"


class IntakeError(InvalidInput):
    """The file was rejected whole; nothing was imported."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        shown = "\n  ".join(str(p) for p in problems[:_MAX_ERRORS])
        more = f"\n  ... and {len(problems) - _MAX_ERRORS} more" if len(problems) > _MAX_ERRORS else ""
        super().__init__(
            f"{source}: rejected, nothing imported. Fix these and import the file again:\n  {shown}{more}"
        )


class _Bad(Exception):
    def __init__(self, field: str, message: str):
        self.field, self.message = field, message


# ---------------------------------------------------------------- reading records


def records(text: str, *, allow_csv: bool, source: str) -> Iterator[tuple[int, dict | Any]]:
    """Yield ``(line, record)`` from a JSON array, NDJSON or (auths) CSV text."""
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("["):
        yield from _json_array(text, source)
    elif stripped.startswith("{"):
        yield from _ndjson(text, source)
    elif allow_csv:
        yield from _csv_rows(text, source)  # an empty file too: a CSV needs its header
    elif stripped:
        raise IntakeError(source, [Problem(None, 1, "(file)", "expected a JSON array or one JSON object per line")])


def _ndjson(text: str, source: str) -> Iterator[tuple[int, Any]]:
    record = 0
    # Lines end at "\n" only, as in _json_array: str.splitlines() would also split at
    # characters JSON strings may hold (U+2028, form feed), misnumbering the lines after.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            record += 1
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                problem = Problem(record, number, "(line)", f"not valid JSON: {exc.msg}", exc.colno)
                raise IntakeError(source, [problem]) from None


def _json_array(text: str, source: str) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    record = 1  # the number of the next record
    ws = re.compile(r"[\s,]*")
    line, counted = 1, 0  # line number at offset `counted`, advanced as we go
    while True:
        pos = ws.match(text, pos).end()
        line += text.count("\n", counted, pos)
        counted = pos
        if pos >= len(text):
            last = line - 1 if text.endswith("\n") else line  # a final newline ends the last line
            message = (f"the file ends at line {last} without the ] that closes the JSON array; "
                       "check the file was copied whole")
            raise IntakeError(source, [Problem(None, last, "(file)", message)])
        if text[pos] == "]":
            return
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            problem = Problem(record, exc.lineno, "(record)", f"not valid JSON: {exc.msg}", exc.colno)
            raise IntakeError(source, [problem]) from None
        yield line, value
        record += 1


def _csv_rows(text: str, source: str) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, record)`` per row, the line where the row starts, after checking the header."""
    reader = csv.reader(io.StringIO(text))
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        message = "the file is empty; export the auths again, with a header line naming the columns"
        raise IntakeError(source, [Problem(None, 1, "(file)", message)])
    names = [name.strip().lstrip("\ufeff") for name in header]
    problems = [Problem(None, reader.line_num, "(header)", m) for m in _header_faults(names)]
    if problems:
        raise IntakeError(source, problems)
    start = reader.line_num + 1
    for row in reader:
        if row:  # a blank line is no row
            yield start, _csv_record(names, row)
        start = reader.line_num + 1


def _header_faults(names: list[str]) -> list[str]:
    """What is wrong with a CSV header: required columns it lacks, columns no auth has.
    Unnamed columns (a trailing comma) are ignored."""
    faults = []
    missing = [c for c in AUTH_REQUIRED if c not in names]
    if missing:
        has = ", ".join(n for n in names if n) or "no named columns"
        faults.append(f"missing {_columns(missing)}; add {_it(missing)} and import the file again "
                      f"(the header has {has})")
    unknown = [n for n in names if n and n not in AUTH_COLUMNS]
    if unknown:
        faults.append(f"unknown {_columns(unknown)}; rename or remove {_it(unknown)} and import the file again "
                      f"(accepted columns: {', '.join(AUTH_COLUMNS)})")
    return faults


def _columns(names: list[str]) -> str:
    return ("column " if len(names) == 1 else "columns ") + ", ".join(names)


def _it(names: list[str]) -> str:
    return "it" if len(names) == 1 else "them"


def _csv_record(names: list[str], row: list[str]) -> dict[str, Any]:
    """One CSV row as an auth record: blank cells left out, CPT codes split at ``;``."""
    record: dict[str, Any] = {}
    for key, value in zip(names, row):
        value = value.strip()
        if not key or value == "":
            continue
        if key == "cpt_codes":
            record[key] = [c.strip() for c in value.split(";") if c.strip()]
        elif key in ("units", "units_used"):
            record[key] = int(value) if value.lstrip("-").isdigit() else value
        else:
            record[key] = value
    return record


# ---------------------------------------------------------------- field checks


def _get(rec: dict, path: str, required: bool = True, default: Any = "") -> Any:
    node: Any = rec
    for part in path.split("."):
        if not isinstance(node, dict):
            raise _Bad(path, "must be an object")
        if part not in node or node[part] is None:
            if required:
                raise _Bad(path, "is missing")
            return default
        node = node[part]
    return node


def _text(rec: dict, path: str, required: bool = True, max_len: int | None = None) -> str:
    value = _get(rec, path, required)
    if not isinstance(value, str):
        raise _Bad(path, f"must be text, got {value!r}")
    value = value.strip()
    if required and not value:
        raise _Bad(path, "is empty")
    if max_len and len(value) > max_len:
        raise _Bad(path, f"{value!r} is longer than {max_len} characters")
    if "\\" in value:
        raise _Bad(path, f"{value!r} contains a backslash, which DICOM reserves as a separator")
    return value


def _date(rec: dict, path: str) -> dt.date:
    value = _get(rec, path)
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise _Bad(path, f"{value!r} is not a date; write YYYY-MM-DD") from None


def _npi(rec: dict, path: str) -> str:
    value = _text(rec, path)
    if not is_valid_npi(value):
        raise _Bad(path, f"{value!r} is not a valid NPI (ten digits, Luhn check digit over 80840)")
    return value


def _cpt(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _CPT.match(value):
        raise _Bad(path, f"{value!r} is not a CPT code (four digits then a digit or capital letter, e.g. 70553)")
    return value


def _choice(rec: dict, path: str, allowed: tuple, default: Any) -> Any:
    value = _get(rec, path, required=False, default=default)
    if value == "" and "" not in allowed:
        value = default
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed if a is not None)
        raise _Bad(path, f"{value!r} is not one of {shown}")
    return value


def _int(rec: dict, path: str, default: int, minimum: int) -> int:
    value = _get(rec, path, required=False, default=default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Bad(path, f"{value!r} must be a whole number of at least {minimum}")
    return value


# ---------------------------------------------------------------- records to types


def order_from_record(rec: Any) -> Order:
    """One order record (examples/README.md) to an :class:`Order`; raises _Bad."""
    if not isinstance(rec, dict):
        raise _Bad("(record)", "must be a JSON object")
    accession = _text(rec, "accession_number", max_len=16)
    start_text = _get(rec, "scheduled.start")
    try:
        start = dt.datetime.fromisoformat(start_text)
    except (TypeError, ValueError):
        raise _Bad("scheduled.start", f"{start_text!r} is not a date-time; write YYYY-MM-DDTHH:MM:SS") from None
    if start.tzinfo is not None:
        raise _Bad("scheduled.start", f"{start_text!r} carries a UTC offset; give local time without one")
    diagnoses = _get(rec, "diagnoses", required=False, default=[])
    if not isinstance(diagnoses, list):
        raise _Bad("diagnoses", "must be a list of ICD-10-CM codes")
    for i, code in enumerate(diagnoses):
        if not isinstance(code, str) or not _ICD10.match(code):
            raise _Bad(f"diagnoses[{i}]", f"{code!r} is not an ICD-10-CM code (e.g. G43.909)")
    study_uid = _text(rec, "study_instance_uid", required=False, max_len=64)
    if study_uid and not _UID.match(study_uid):
        raise _Bad("study_instance_uid", f"{study_uid!r} is not a DICOM UID (digits and dots)")
    modality = _text(rec, "procedure.modality", max_len=16).upper()
    if not re.match(r"^[A-Z0-9_]+$", modality):
        raise _Bad("procedure.modality", f"{modality!r} is not a DICOM modality code (e.g. CT, MR, DX)")
    return Order(
        accession_number=accession,
        status=_choice(rec, "status", ORDER_STATUSES, "scheduled"),
        patient_id=_text(rec, "patient.id", max_len=64),
        patient_issuer=_text(rec, "patient.issuer", required=False, max_len=64),
        patient_name=_text(rec, "patient.name", max_len=320),
        birth_date=_date(rec, "patient.birth_date"),
        sex=_choice(rec, "patient.sex", ("M", "F", "O", ""), ""),
        cpt=_cpt(_get(rec, "procedure.cpt"), "procedure.cpt"),
        description=_text(rec, "procedure.description", required=False, max_len=64),
        modality=modality,
        body_part=_text(rec, "procedure.body_part", required=False, max_len=16),
        laterality=_choice(rec, "procedure.laterality", LATERALITIES + (None,), None),
        scheduled_start=start,
        station_ae=_text(rec, "scheduled.station_ae", max_len=16),
        station_name=_text(rec, "scheduled.station_name", required=False, max_len=16),
        location=_text(rec, "scheduled.location", required=False, max_len=16),
        ordering_npi=_npi(rec, "ordering_provider.npi"),
        ordering_name=_text(rec, "ordering_provider.name", required=False, max_len=320),
        facility_npi=_npi(rec, "facility_npi"),
        payer_id=_text(rec, "payer.id", max_len=64),
        member_id=_text(rec, "payer.member_id", required=False, max_len=64),
        plan_type=_text(rec, "payer.plan_type", required=False, max_len=64),
        diagnoses=tuple(diagnoses),
        study_instance_uid=study_uid,
        requested_procedure_id=_text(rec, "requested_procedure_id", required=False, max_len=16),
        scheduled_procedure_step_id=_text(rec, "scheduled_procedure_step_id", required=False, max_len=16),
    )


def auth_from_record(rec: Any) -> Auth:
    """One auth record (examples/README.md) to an :class:`Auth`; raises _Bad."""
    if not isinstance(rec, dict):
        raise _Bad("(record)", "must be a JSON object")
    codes = _get(rec, "cpt_codes")
    if not isinstance(codes, list) or not codes:
        raise _Bad("cpt_codes", "must list at least one CPT code")
    cpts = tuple(_cpt(c, f"cpt_codes[{i}]") for i, c in enumerate(codes))
    valid_from, valid_to = _date(rec, "valid_from"), _date(rec, "valid_to")
    if valid_to < valid_from:
        raise _Bad("valid_to", f"{valid_to} is before valid_from {valid_from}")
    units = _int(rec, "units", 1, 1)
    return Auth(
        auth_number=_text(rec, "auth_number", max_len=64),
        payer_id=_text(rec, "payer_id", max_len=64),
        patient_id=_text(rec, "patient_id", max_len=64),
        cpt_codes=cpts,
        facility_npi=_npi(rec, "facility_npi"),
        ordering_npi=_npi(rec, "ordering_npi"),
        valid_from=valid_from,
        valid_to=valid_to,
        units=units,
        units_used=_int(rec, "units_used", 0, 0),
        laterality=_choice(rec, "laterality", LATERALITIES + (None,), None),
        body_part=_text(rec, "body_part", required=False, max_len=16),
        status=_choice(rec, "status", AUTH_STATUSES, "approved"),
    )


def _parse(text: str, source: str, build: Callable[[Any], Any], key: str, allow_csv: bool) -> list:
    items, problems, seen = [], [], {}  # seen: identifier -> number of the record that has it
    for number, (line, rec) in enumerate(records(text, allow_csv=allow_csv, source=source), start=1):
        try:
            item = build(rec)
        except _Bad as bad:
            problems.append(Problem(number, line, bad.field, bad.message))
            continue
        ident = getattr(item, key)
        if ident in seen:
            problems.append(Problem(number, line, key, f"{ident!r} already appears in record {seen[ident]}"))
            continue
        seen[ident] = number
        items.append(item)
    if problems:
        raise IntakeError(source, problems)
    return items


def parse_orders(text: str, source: str = "orders") -> list[Order]:
    """Every order in a JSON array or NDJSON text, or :class:`IntakeError`."""
    return _parse(text, source, order_from_record, "accession_number", allow_csv=False)


def parse_auths(text: str, source: str = "auths") -> list[Auth]:
    """Every auth in a JSON array, NDJSON or CSV text, or :class:`IntakeError`."""
    return _parse(text, source, auth_from_record, "auth_number", allow_csv=True)
