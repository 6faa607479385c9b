"""Parse and check order, auth and necessity policy files before anything is written.

Accepted forms: a JSON array, NDJSON (one object a line), and for auths and policies also
CSV (payer portals export CSV; columns named as the JSON keys, codes separated by ``;``,
:class:`CsvShape`). The shapes of an order, an auth and a policy are described in
``examples/README.md``.

A file is all or nothing: :func:`parse_orders`, :func:`parse_auths` and :func:`parse_policies` either return
every record or raise :class:`IntakeError` listing each bad record by number (the first
is record 1) and line, with the field at fault. A CSV whose header lacks a required
column or names an unknown one is rejected once, naming the header line, not row by row.

What reads as more than one thing is refused rather than guessed: a key twice in one
object (JSON keeps the last silently), anything after the array's closing ``]`` or a
missing or extra comma between records, a control character in a text field (they are
single-line, and ESC or NUL would be served in DICOM attributes), a CSV cell a
spreadsheet would run as a formula. A message shows at most 64 characters of a value.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import reprlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from infra.errors import InvalidInput
from worklist.necessity import NecessityPolicy
from worklist.npi import is_valid_npi
from worklist.orders import AUTH_STATUSES, LATERALITIES, ORDER_STATUSES, Auth, Order

# Matched with fullmatch: "$" would let a trailing newline through ("70553\n").
_CPT = re.compile(r"[0-9]{4}[0-9A-Z]")
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_ICD10 = re.compile(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?")
_MAX_ERRORS = 20
#: Characters of a value a message shows; a file may hold a 50 MB value by mistake or by design.
_SHOWN = 64
#: C0 controls, DEL and C1 controls: none belongs in a single-line name or text field (ESC
#: and NUL would reach PatientName and other attributes served on the worklist).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_C0_NAMES = ("NUL SOH STX ETX EOT ENQ ACK BEL BS TAB LF VT FF CR SO SI DLE DC1 DC2 DC3 DC4 NAK SYN ETB CAN EM "
             "SUB ESC FS GS RS US").split()
#: First characters by which a spreadsheet takes a cell for a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@")
#: CSV columns holding whole numbers: there a leading "-" is a minus sign, not a formula. A
#: negative number is refused by the range check (units at least 1, units_used at least 0),
#: and a cell that is not a number at all ("-1+cmd|...") is refused as not a whole number.
_NUMBER_COLUMNS = ("units", "units_used")
#: CSV columns for auths: the keys of an auth (examples/README.md); the first eight are required.
AUTH_REQUIRED = ("auth_number", "payer_id", "patient_id", "cpt_codes", "facility_npi", "ordering_npi",
                 "valid_from", "valid_to")
AUTH_COLUMNS = AUTH_REQUIRED + ("units", "units_used", "laterality", "body_part", "status")


@dataclass(frozen=True)
class CsvShape:
    """The columns a CSV of one kind of record has: all required here, and those whose cells
    list several values separated by ``;``; ``numbers`` are the whole-number columns
    (see :data:`_NUMBER_COLUMNS`). ``what`` names the records in messages ("auths")."""

    what: str
    required: tuple[str, ...]
    columns: tuple[str, ...]
    lists: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()


AUTH_CSV = CsvShape("auths", AUTH_REQUIRED, AUTH_COLUMNS, lists=("cpt_codes",), numbers=_NUMBER_COLUMNS)
#: CSV columns for necessity policies (rule 7): every one required, both code columns lists.
POLICY_COLUMNS = ("payer_id", "cpt", "covered_icd10")
POLICY_CSV = CsvShape("policies", POLICY_COLUMNS, POLICY_COLUMNS, lists=("cpt", "covered_icd10"))


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


#: The one bad field of a record (``field`` as the record names it, ``message`` why), as
#: :func:`order_from_record` raises it; other intakes (the RIS feed) name it in their own terms.
FieldError = _Bad


def _shown(value: Any) -> str:
    """``value`` as a message shows it: its repr, cut at 64 characters with the full length."""
    if isinstance(value, str):
        if len(value) <= _SHOWN:
            return repr(value)
        return f"{value[:_SHOWN]!r}…({len(value):,} characters)"
    text = _REPR.repr(value)  # never builds the whole repr of a huge list or object
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}…"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _SHOWN
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4


def _key(name: str) -> str:
    """A key or column name from the file, as a field name in a message: as is when it is a
    plain short name, else quoted and cut (it may be huge or hold control characters)."""
    return name if re.fullmatch(r"[\w.\- ]{1,64}", name) else _shown(name)


class _Read(dict):
    """A record with faults found while reading it (a key twice, a formula cell): each a
    (field, message), reported instead of checking the record."""

    faults: list[tuple[str, str]]


# ---------------------------------------------------------------- reading records


def records(text: str, *, allow_csv: bool, source: str, shape: CsvShape = AUTH_CSV) -> Iterator[tuple[int, dict | Any]]:
    """Yield ``(line, record)`` from a JSON array, NDJSON or (auths, policies) CSV text of ``shape``."""
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("["):
        yield from _json_array(text, source)
    elif stripped.startswith("{"):
        yield from _ndjson(text, source)
    elif allow_csv:
        yield from _csv_rows(text, source, shape)  # an empty file too: a CSV needs its header
    elif stripped:
        raise IntakeError(source, [Problem(None, 1, "(file)", "expected a JSON array or one JSON object per line")])


class _Objects:
    """JSON objects for the decoder (``object_pairs_hook``) that notice a key given twice:
    JSON itself keeps the last value silently ("cancelled" then "scheduled" is scheduled)."""

    def __init__(self) -> None:
        self.twice = False  # an object with a repeated key was decoded since the last record

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        self.twice = True
        obj = _Twice(obj)
        values: dict[str, list] = {}
        for key, value in pairs:
            values.setdefault(key, []).append(value)
        obj.keys_twice = {key: given for key, given in values.items() if len(given) > 1}
        return obj

    def record(self, value: Any) -> Any:
        """``value`` as read, with a fault per repeated key (named by its path) when it has any."""
        if not self.twice:
            return value
        self.twice = False
        faults = list(_repeated_keys(value, ""))
        if not isinstance(value, dict) or not faults:
            return value  # a record that is no object is refused as such
        read = _Read(value)
        read.faults = faults
        return read


class _Twice(dict):
    keys_twice: dict[str, list]  # each key given more than once: its values in file order


def _repeated_keys(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field, message) for each key given more than once in ``node`` or below it (a loop,
    not recursion: the file decides how deep it nests)."""
    todo = [(node, path)]
    while todo:
        node, path = todo.pop()
        if isinstance(node, dict):
            if isinstance(node, _Twice):
                for key, given in node.keys_twice.items():
                    shown = ", then ".join(_shown(v) for v in given[:3]) + (", ..." if len(given) > 3 else "")
                    yield (f"{path}.{_key(key)}" if path else _key(key),
                           f"is given {len(given)} times in one object ({shown}); only the last would count, "
                           f"so give it once")
            todo.extend((value, f"{path}.{_key(key)}" if path else _key(key)) for key, value in reversed(node.items()))
        elif isinstance(node, list):
            todo.extend((value, f"{path}[{i}]") for i, value in reversed(list(enumerate(node))))


def _ndjson(text: str, source: str) -> Iterator[tuple[int, Any]]:
    record = 0
    objects = _Objects()
    decoder = json.JSONDecoder(object_pairs_hook=objects)
    # Lines end at "\n" only, as in _json_array: str.splitlines() would also split at
    # characters JSON strings may hold (U+2028, form feed), misnumbering the lines after.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            record += 1
            try:
                value = decoder.decode(line)
            except json.JSONDecodeError as exc:
                problem = Problem(record, number, "(line)", f"not valid JSON: {exc.msg}", exc.colno)
                raise IntakeError(source, [problem]) from None
            except RecursionError:
                raise IntakeError(source, [Problem(record, number, "(line)", _TOO_DEEP)]) from None
            yield number, objects.record(value)


_TOO_DEEP = "nests arrays or objects too deeply to read; an order or auth nests two levels at most"
_JSON_SPACE = re.compile(r"[ \t\n\r]*")  # the whitespace JSON allows between values


def _json_array(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """The records of one JSON array, with the line each starts on. Strict where a lenient
    reading would guess: one comma between records, none before the first or after the
    last, and nothing but whitespace after the closing ``]`` (``[A][B]`` is not one array)."""
    objects = _Objects()
    decoder = json.JSONDecoder(object_pairs_hook=objects)
    pos = text.index("[") + 1
    record = 1  # the number of the next record
    after = "["  # what came last: "[", "," or "record"
    line, counted = 1, 0  # line number at offset `counted`, advanced as we go

    def fault(at: int, number: int | None, field: str, message: str) -> IntakeError:
        where = text.rfind("\n", 0, at)
        return IntakeError(source, [Problem(number, text.count("\n", 0, at) + 1, field, message, at - where)])

    while True:
        pos = _JSON_SPACE.match(text, pos).end()
        line += text.count("\n", counted, pos)
        counted = pos
        if pos >= len(text):
            last = line - 1 if text.endswith("\n") else line  # a final newline ends the last line
            message = (f"the file ends at line {last} without the ] that closes the JSON array; "
                       "check the file was copied whole")
            raise IntakeError(source, [Problem(None, last, "(file)", message)])
        char = text[pos]
        if char == "]":
            if after == ",":
                raise fault(pos, None, "(file)", f"a comma after record {record - 1} and no record after it; "
                                                 "remove the comma")
            rest = _JSON_SPACE.match(text, pos + 1).end()
            if rest < len(text):
                raise fault(rest, None, "(file)", f"{_shown(text[rest:])} follows the ] that closes the JSON array; "
                                                  "a file holds one array of records, so join them into one")
            return
        if char == ",":
            if after != "record":
                what = "the first record" if record == 1 else f"record {record}"
                raise fault(pos, record, "(record)", f"a comma where {what} should start; remove it")
            after = ","
            pos += 1
            continue
        if after == "record":
            raise fault(pos, record, "(record)", f"record {record} starts without a comma after record {record - 1}; "
                                                 "separate the records with commas")
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            problem = Problem(record, exc.lineno, "(record)", f"not valid JSON: {exc.msg}", exc.colno)
            raise IntakeError(source, [problem]) from None
        except RecursionError:
            raise IntakeError(source, [Problem(record, line, "(record)", _TOO_DEEP)]) from None
        yield line, objects.record(value)
        record += 1
        after = "record"


def _csv_rows(text: str, source: str, shape: CsvShape = AUTH_CSV) -> Iterator[tuple[int, dict]]:
    """Yield ``(line, record)`` per row, the line where the row starts, after checking the header."""
    reader = csv.reader(io.StringIO(text))

    def row_or_none(record: int | None, start: int) -> list[str] | None:
        try:
            return next(reader, None)
        except csv.Error as exc:  # a cell over the reader's size limit, a lone carriage return
            if "field limit" in str(exc):
                message = (f"a cell is longer than the {csv.field_size_limit():,} characters the CSV reader "
                           f"takes; no field is longer than 64 characters")
            elif "new-line character" in str(exc):
                message = "a line break inside a cell that is not in quotes; quote the cell or remove the line break"
            else:
                message = f"not valid CSV: {exc}"
            raise IntakeError(source, [Problem(record, start, "(row)" if record else "(header)", message)]) from None

    header = row_or_none(None, 1)
    while header is not None and not any(cell.strip() for cell in header):
        header = row_or_none(None, reader.line_num + 1)
    if header is None:
        message = f"the file is empty; export the {shape.what} again, with a header line naming the columns"
        raise IntakeError(source, [Problem(None, 1, "(file)", message)])
    names = [name.strip().lstrip("\ufeff") for name in header]
    problems = [Problem(None, reader.line_num, "(header)", m) for m in _header_faults(names, shape)]
    if problems:
        raise IntakeError(source, problems)
    start, record = reader.line_num + 1, 1
    while True:
        row = row_or_none(record, start)
        if row is None:
            return
        if row:  # a blank line is no row
            yield start, _csv_record(names, row, shape)
            record += 1
        start = reader.line_num + 1


def _header_faults(names: list[str], shape: CsvShape = AUTH_CSV) -> list[str]:
    """What is wrong with a CSV header: required columns it lacks, columns no auth has.
    Unnamed columns (a trailing comma) are ignored."""
    faults = []
    missing = [c for c in shape.required if c not in names]
    if missing:
        has = ", ".join(_key(n) for n in names if n) or "no named columns"
        faults.append(f"missing {_columns(missing)}; add {_it(missing)} and import the file again "
                      f"(the header has {has})")
    unknown = [n for n in names if n and n not in shape.columns]
    if unknown:
        faults.append(f"unknown {_columns(unknown)}; rename or remove {_it(unknown)} and import the file again "
                      f"(accepted columns: {', '.join(shape.columns)})")
    return faults


def _columns(names: list[str]) -> str:
    return ("column " if len(names) == 1 else "columns ") + ", ".join(_key(n) for n in names)


def _it(names: list[str]) -> str:
    return "it" if len(names) == 1 else "them"


def _csv_record(names: list[str], row: list[str], shape: CsvShape = AUTH_CSV) -> dict[str, Any]:
    """One CSV row as an auth record: blank cells left out, CPT codes split at ``;``, a cell a
    spreadsheet would take for a formula kept as a fault of the record."""
    record: dict[str, Any] = {}
    faults = []
    for key, value in zip(names, row):
        value = value.strip()
        if not key or value == "":
            continue
        # Any column but the numbers: no auth number, id, code, NPI, date, laterality or
        # status starts with these, and such a cell is run as a formula once the auths are
        # exported to a spreadsheet again. In the number columns a leading "-" is a sign
        # (see _NUMBER_COLUMNS); "=", "+" and "@" are refused there too.
        if value.startswith(_FORMULA_START) and not (key in shape.numbers and value.startswith("-")):
            faults.append((key, f"{_shown(value)} starts with {value[0]!r}, which a spreadsheet runs as a "
                                f"formula; export the {shape.what} again without it"))
            continue
        if key in shape.lists:
            record[key] = [c.strip() for c in value.split(";") if c.strip()]
        elif key in shape.numbers:
            # Only ASCII digits with an optional minus: "--5" or "²" pass str.isdigit() but not int().
            record[key] = int(value) if re.fullmatch(r"-?[0-9]+", value) else value
        else:
            record[key] = value
    if faults:
        record = _Read(record)
        record.faults = faults
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
        raise _Bad(path, f"must be text, got {_shown(value)}")
    value = value.strip()
    if required and not value:
        raise _Bad(path, "is empty")
    if max_len and len(value) > max_len:
        raise _Bad(path, f"{_shown(value)} is longer than {max_len} characters")
    control = _CONTROL.search(value)
    if control:
        raise _Bad(path, f"{_shown(value)} contains the control character {_control_name(control.group())} "
                         f"at character {control.start() + 1}; text fields are one line of printable text")
    if "\\" in value:
        raise _Bad(path, f"{_shown(value)} contains a backslash, which DICOM reserves as a separator")
    return value


def _control_name(char: str) -> str:
    code = ord(char)
    name = _C0_NAMES[code] if code < 32 else "DEL" if code == 127 else "C1"
    return f"U+{code:04X} ({name})"


def _date(rec: dict, path: str) -> dt.date:
    value = _get(rec, path)
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise _Bad(path, f"{_shown(value)} is not a date; write YYYY-MM-DD") from None


def _npi(rec: dict, path: str) -> str:
    value = _text(rec, path)
    if not is_valid_npi(value):
        raise _Bad(path, f"{_shown(value)} is not a valid NPI (ten digits, Luhn check digit over 80840)")
    return value


def _cpt(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _CPT.fullmatch(value):
        raise _Bad(path, f"{_shown(value)} is not a CPT code (four digits then a digit or capital letter, e.g. 70553)")
    return value


def _choice(rec: dict, path: str, allowed: tuple, default: Any) -> Any:
    value = _get(rec, path, required=False, default=default)
    if value == "" and "" not in allowed:
        value = default
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed if a is not None)
        raise _Bad(path, f"{_shown(value)} is not one of {shown}")
    return value


def _int(rec: dict, path: str, default: int, minimum: int) -> int:
    value = _get(rec, path, required=False, default=default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _Bad(path, f"{_shown(value)} must be a whole number of at least {minimum}")
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
        raise _Bad("scheduled.start", f"{_shown(start_text)} is not a date-time; write YYYY-MM-DDTHH:MM:SS") from None
    if start.tzinfo is not None:
        raise _Bad("scheduled.start", f"{_shown(start_text)} carries a UTC offset; give local time without one")
    diagnoses = _get(rec, "diagnoses", required=False, default=[])
    if not isinstance(diagnoses, list):
        raise _Bad("diagnoses", "must be a list of ICD-10-CM codes")
    for i, code in enumerate(diagnoses):
        if not isinstance(code, str) or not _ICD10.fullmatch(code):
            raise _Bad(f"diagnoses[{i}]", f"{_shown(code)} is not an ICD-10-CM code (e.g. G43.909)")
    study_uid = _text(rec, "study_instance_uid", required=False, max_len=64)
    if study_uid and not _UID.fullmatch(study_uid):
        raise _Bad("study_instance_uid", f"{_shown(study_uid)} is not a DICOM UID (digits and dots)")
    modality = _text(rec, "procedure.modality", max_len=16).upper()
    if not re.fullmatch(r"[A-Z0-9_]+", modality):
        raise _Bad("procedure.modality", f"{_shown(modality)} is not a DICOM modality code (e.g. CT, MR, DX)")
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


def _parse(text: str, source: str, build: Callable[[Any], Any], key: str, allow_csv: bool,
           shape: CsvShape = AUTH_CSV, key_field: str | None = None) -> list:
    items, problems, seen = [], [], {}  # seen: identifier -> number of the record that has it
    for number, (line, rec) in enumerate(records(text, allow_csv=allow_csv, source=source, shape=shape), start=1):
        if isinstance(rec, _Read):  # a key twice, a formula cell: each named, the record not checked further
            problems.extend(Problem(number, line, field, message) for field, message in rec.faults)
            continue
        try:
            item = build(rec)
        except _Bad as bad:
            problems.append(Problem(number, line, bad.field, bad.message))
            continue
        ident = getattr(item, key)
        if ident in seen:
            problems.append(Problem(number, line, key_field or key, f"{_shown(ident)} already appears in record {seen[ident]}"))
            continue
        seen[ident] = number
        items.append(item)
    if problems:
        raise IntakeError(source, problems)
    return items


def auths_from_records(recs: list, source: str) -> list[Auth]:
    """Auth records already read (e.g. mapped from a FHIR ClaimResponse), checked as a file's are:
    all or nothing, numbered from 1."""
    items, problems, seen = [], [], {}
    for number, rec in enumerate(recs, start=1):
        try:
            item = auth_from_record(rec)
        except _Bad as bad:
            problems.append(Problem(number, 1, bad.field, bad.message))
            continue
        if item.auth_number in seen:
            problems.append(Problem(number, 1, "auth_number",
                                    f"{_shown(item.auth_number)} already appears in record {seen[item.auth_number]}"))
            continue
        seen[item.auth_number] = number
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


# ---------------------------------------------------------------- necessity policies (rule 7)


def _code_list(rec: dict, path: str, check: Callable[[Any, str], str]) -> tuple[str, ...]:
    values = _get(rec, path)
    if not isinstance(values, list) or not values:
        raise _Bad(path, "must list at least one code")
    return tuple(check(v, f"{path}[{i}]") for i, v in enumerate(values))


def _cpt_entry(value: Any, path: str) -> str:
    """A CPT code or an ascending inclusive range ("70551-70553"), as payer policies write them."""
    if isinstance(value, str):
        first, dash, last = (part.strip() for part in value.strip().partition("-"))
        last = last if dash else first
        if _CPT.fullmatch(first) and _CPT.fullmatch(last) and first <= last:
            return f"{first}-{last}" if dash else first
    raise _Bad(path, f"{_shown(value)} is not a CPT code or an ascending range of them (e.g. 70553 or 70551-70553)")


def _icd10_prefix(value: Any, path: str) -> str:
    """An ICD-10-CM code or prefix: a letter, two characters, then up to four after an optional dot."""
    if isinstance(value, str) and _ICD10_PREFIX.fullmatch(value.strip().upper()):
        return value.strip().upper()
    raise _Bad(path, f"{_shown(value)} is not an ICD-10-CM code or prefix (e.g. G43 or R51.9)")


_ICD10_PREFIX = re.compile(r"[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?")


def policy_from_record(rec: Any) -> NecessityPolicy:
    """One necessity policy record (examples/README.md) to a :class:`~worklist.necessity.NecessityPolicy`."""
    if not isinstance(rec, dict):
        raise _Bad("(record)", "must be a JSON object")
    unknown = sorted(set(rec) - set(POLICY_COLUMNS))
    if unknown:
        raise _Bad(_key(unknown[0]), f"is not a field of a policy (fields: {', '.join(POLICY_COLUMNS)})")
    return NecessityPolicy(
        payer_id=_text(rec, "payer_id", max_len=64),
        cpt=_code_list(rec, "cpt", _cpt_entry),
        covered_icd10=_code_list(rec, "covered_icd10", _icd10_prefix),
    )


def parse_policies(text: str, source: str = "policies") -> list[NecessityPolicy]:
    """Every necessity policy in a JSON array, NDJSON or CSV text, or :class:`IntakeError`."""
    return _parse(text, source, policy_from_record, "key", allow_csv=True, shape=POLICY_CSV, key_field="cpt")
