"""Order and auth files: all or nothing, every problem named by record, line and field."""

import copy
import json

import pytest

from tests.conftest import EXAMPLES
from worklist.intake import IntakeError, parse_auths, parse_orders

ORDERS = json.loads((EXAMPLES / "orders.json").read_text())
AUTHS = json.loads((EXAMPLES / "auths.json").read_text())


def _with(record: dict, path: str, value):
    rec = copy.deepcopy(record)
    node = rec
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return rec


def test_examples_parse():
    orders = parse_orders((EXAMPLES / "orders.json").read_text())
    assert [o.accession_number for o in orders] == ["ACC1001", "ACC1002", "ACC1003"]
    assert orders[1].laterality == "R" and orders[0].diagnoses == ("G43.909",)
    auths = parse_auths((EXAMPLES / "auths.json").read_text())
    assert auths[1].laterality == "L" and auths[0].units == 1 and auths[0].status == "approved"


def test_ndjson_is_accepted():
    text = "\n".join(json.dumps(o) for o in ORDERS) + "\n"
    assert len(parse_orders(text)) == 3


@pytest.mark.parametrize("path, value, field, words", [
    ("ordering_provider.npi", "1234567890", "ordering_provider.npi", "not a valid NPI"),
    ("facility_npi", "123", "facility_npi", "not a valid NPI"),
    ("patient.birth_date", "1980-13-01", "patient.birth_date", "not a date"),
    ("status", "booked", "status", "not one of"),
    ("patient.id", KeyError, "patient.id", "is missing"),
    ("procedure.cpt", "7055", "procedure.cpt", "not a CPT code"),
    ("procedure.cpt", "70553-26", "procedure.cpt", "not a CPT code"),
    ("scheduled.start", "2026-12-01 9:30", "scheduled.start", "not a date-time"),
    ("scheduled.start", "2026-12-01T09:30:00+01:00", "scheduled.start", "UTC offset"),
    ("accession_number", "A" * 17, "accession_number", "longer than 16"),
    ("procedure.laterality", "X", "procedure.laterality", "not one of"),
    ("diagnoses", ["not-a-code"], "diagnoses[0]", "ICD-10"),
    ("study_instance_uid", "1.2.abc", "study_instance_uid", "not a DICOM UID"),
])
def test_bad_order_field_rejects_the_whole_file(path, value, field, words):
    records = [ORDERS[0], _with(ORDERS[1], path, value), ORDERS[2]]
    text = json.dumps(records, indent=2)
    with pytest.raises(IntakeError) as err:
        parse_orders(text, "orders.json")
    (problem,) = err.value.problems
    assert (problem.record, problem.field) == (2, field)
    assert words in problem.message
    # The line named is where record 2 starts in the file.
    assert text.splitlines()[problem.line - 1].strip() == "{"
    assert text.splitlines()[problem.line].strip().startswith('"accession_number"')
    assert "nothing imported" in str(err.value) and "orders.json" in str(err.value)


def test_ndjson_problem_names_its_line():
    text = json.dumps(ORDERS[0]) + "\n\n" + json.dumps(_with(ORDERS[1], "patient.sex", "X")) + "\n"
    with pytest.raises(IntakeError) as err:
        parse_orders(text)
    assert (err.value.problems[0].record, err.value.problems[0].line, err.value.problems[0].field) == (2, 3, "patient.sex")


def test_duplicate_accession_in_one_file_is_rejected():
    with pytest.raises(IntakeError, match="already appears in record 1"):
        parse_orders(json.dumps([ORDERS[0], ORDERS[0]]))


def test_records_are_numbered_from_1_in_what_a_person_reads():
    text = json.dumps([ORDERS[0], _with(ORDERS[1], "facility_npi", "1"), ORDERS[0]], indent=2)
    _, second, third = [n for n, line in enumerate(text.splitlines(), 1) if line == "  {"]  # record starts
    with pytest.raises(IntakeError) as err:
        parse_orders(text, "orders.json")
    shown = str(err.value).splitlines()[1:]
    assert shown[0].startswith(f"  record 2 (line {second}), field facility_npi: '1' is not a valid NPI")
    assert shown[1] == f"  record 3 (line {third}), field accession_number: 'ACC1001' already appears in record 1"


def test_broken_json_is_rejected_with_its_line():
    with pytest.raises(IntakeError, match=r"record 1 \(line 3, column 1\), field \(record\): not valid JSON"):
        parse_orders('[\n{"accession_number": "A1",\n')


def test_broken_json_in_an_array_names_its_line_and_column():
    text = json.dumps(ORDERS, indent=2).replace('"ACC1002",', '"ACC1002"')
    broken = next(n for n, line in enumerate(text.splitlines(), 1) if '"ACC1002"' in line) + 1
    with pytest.raises(IntakeError) as err:
        parse_orders(text)
    (problem,) = err.value.problems
    assert str(problem) == f"record 2 (line {broken}, column 5), field (record): not valid JSON: Expecting ',' delimiter"


def test_broken_ndjson_names_its_record_line_and_column():
    text = json.dumps(ORDERS[0]) + "\n\n\n" + '{"accession_number": "A2" "status": "scheduled"}\n'
    with pytest.raises(IntakeError) as err:
        parse_orders(text)
    (problem,) = err.value.problems
    assert str(problem) == "record 2 (line 4, column 27), field (line): not valid JSON: Expecting ',' delimiter"


def test_ndjson_lines_are_counted_at_newlines_only():
    # U+2028 may stand unescaped in a JSON string; it does not end an NDJSON line.
    first = json.dumps(_with(ORDERS[0], "patient.name", "DOE\u2028JANE"), ensure_ascii=False)
    text = first + "\n" + json.dumps(_with(ORDERS[1], "patient.sex", "X")) + "\n"
    with pytest.raises(IntakeError) as err:
        parse_orders(text)
    (problem,) = err.value.problems
    assert (problem.record, problem.line, problem.field) == (2, 2, "patient.sex")


@pytest.mark.parametrize("ending", ["\n", ""])
def test_unclosed_array_names_the_line_where_the_file_ends(ending):
    text = json.dumps(ORDERS[:2], indent=2).rstrip("]").rstrip() + ending
    last = len(text.splitlines())
    with pytest.raises(IntakeError) as err:
        parse_orders(text)
    (problem,) = err.value.problems
    assert (problem.line, problem.field) == (last, "(file)")
    assert str(problem).startswith(f"line {last}, field (file): the file ends at line {last} without the ]")


def test_at_most_20_problems_are_shown():
    bad = [_with(ORDERS[0], "accession_number", f"A{i}") | {"facility_npi": "1"} for i in range(25)]
    with pytest.raises(IntakeError) as err:
        parse_orders(json.dumps(bad))
    shown = str(err.value).splitlines()[1:]
    assert len(shown) == 21 and shown[-1] == "  ... and 5 more"
    assert shown[0].startswith("  record 1 (") and shown[19].startswith("  record 20 (")


def test_every_bad_record_is_listed():
    bad = [_with(o, "facility_npi", "1") for o in ORDERS]
    with pytest.raises(IntakeError) as err:
        parse_orders(json.dumps(bad))
    assert [p.record for p in err.value.problems] == [1, 2, 3]


@pytest.mark.parametrize("key, value, words", [
    ("cpt_codes", [], "at least one"),
    ("cpt_codes", ["70553", "x"], "not a CPT code"),
    ("ordering_npi", "1234567890", "not a valid NPI"),
    ("valid_to", "2026-10-31", "before valid_from"),
    ("valid_from", "yesterday", "not a date"),
    ("status", "maybe", "not one of"),
    ("units", 0, "at least 1"),
    ("units_used", -1, "at least 0"),
    ("auth_number", KeyError, "is missing"),
])
def test_bad_auth_field_rejects_the_whole_file(key, value, words):
    with pytest.raises(IntakeError) as err:
        parse_auths(json.dumps([AUTHS[0], _with(AUTHS[1], key, value)]))
    (problem,) = err.value.problems
    assert problem.record == 2 and problem.field.startswith(key) and words in problem.message


CSV = """auth_number,payer_id,patient_id,cpt_codes,facility_npi,ordering_npi,valid_from,valid_to,units,units_used,laterality,status
PA-1,ACME,MRN1,70553;70551,1987654328,1234567893,2026-11-01,2026-11-30,2,0,,approved
PA-2,ACME,MRN2,73721,1987654328,1456789019,2026-11-01,2026-11-30,1,1,L,pended
"""


def test_csv_auths_from_a_payer_portal():
    a1, a2 = parse_auths(CSV)
    assert a1.cpt_codes == ("70553", "70551") and a1.units == 2 and a1.laterality is None
    assert (a2.laterality, a2.units_used, a2.status) == ("L", 1, "pended")


def test_csv_problem_names_the_line_and_column():
    text = CSV.replace("1456789019", "1456789010")
    with pytest.raises(IntakeError) as err:
        parse_auths(text)
    (problem,) = err.value.problems
    assert (problem.record, problem.line, problem.field) == (2, 3, "ordering_npi")


def test_orders_are_not_read_from_csv():
    with pytest.raises(IntakeError, match="JSON"):
        parse_orders("accession_number,patient\nA,B\n")


def _csv_with(header_from: str, header_to: str) -> str:
    lines = CSV.splitlines(keepends=True)
    return lines[0].replace(header_from, header_to) + "".join(lines[1:])


def test_csv_missing_column_is_one_problem_on_the_header_line():
    text = _csv_with(",valid_to,", ",")
    with pytest.raises(IntakeError) as err:
        parse_auths(text, "auths.csv")
    (problem,) = err.value.problems
    assert (problem.record, problem.line, problem.field) == (None, 1, "(header)")
    assert str(problem) == (
        "line 1, field (header): missing column valid_to; add it and import the file again (the header has "
        "auth_number, payer_id, patient_id, cpt_codes, facility_npi, ordering_npi, valid_from, units, units_used, "
        "laterality, status)"
    )


def test_csv_missing_columns_are_named_together():
    with pytest.raises(IntakeError) as err:
        parse_auths("auth_number,payer_id,patient_id,cpt_codes,facility_npi,ordering_npi\nPA-1,ACME,MRN1,70553,1,2\n")
    (problem,) = err.value.problems
    assert problem.message.startswith("missing columns valid_from, valid_to; add them")


def test_csv_unknown_column_is_named_on_the_header_line():
    text = _csv_with(",status", ",status,notes").replace(",approved\n", ",approved,call first\n")
    with pytest.raises(IntakeError) as err:
        parse_auths(text)
    (problem,) = err.value.problems
    assert (problem.line, problem.field) == (1, "(header)")
    assert problem.message == (
        "unknown column notes; rename or remove it and import the file again (accepted columns: auth_number, "
        "payer_id, patient_id, cpt_codes, facility_npi, ordering_npi, valid_from, valid_to, units, units_used, "
        "laterality, body_part, status)"
    )


def test_csv_misspelt_column_is_both_missing_and_unknown():
    with pytest.raises(IntakeError) as err:
        parse_auths(_csv_with(",valid_to,", ",valid_too,"))
    missing, unknown = err.value.problems
    assert [(p.line, p.field) for p in (missing, unknown)] == [(1, "(header)"), (1, "(header)")]
    assert missing.message.startswith("missing column valid_to;") and "valid_too" in missing.message
    assert unknown.message.startswith("unknown column valid_too;")


def test_csv_header_is_found_after_blank_lines_and_a_byte_order_mark():
    assert len(parse_auths("\ufeff" + CSV)) == 2
    assert len(parse_auths("\n" + CSV)) == 2
    with pytest.raises(IntakeError) as err:
        parse_auths("\n" + _csv_with(",valid_to,", ","))
    assert [(p.line, p.field) for p in err.value.problems] == [(2, "(header)")]


def test_csv_problem_names_the_line_where_a_multiline_row_starts():
    text = CSV.replace("1234567893", '"123456789\n3"', 1)  # a quoted cell over lines 2 and 3
    with pytest.raises(IntakeError) as err:
        parse_auths(text)
    (problem,) = err.value.problems
    assert (problem.record, problem.line, problem.field) == (1, 2, "ordering_npi")


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_empty_csv_is_rejected_as_empty(text):
    with pytest.raises(IntakeError) as err:
        parse_auths(text, "auths.csv")
    (problem,) = err.value.problems
    assert str(problem).startswith("line 1, field (file): the file is empty")


# ---------------------------------------------------------------- what reads as more than one thing


def _only_problem(text: str, parse=parse_orders):
    with pytest.raises(IntakeError) as err:
        parse(text, "file")
    (problem,) = err.value.problems
    return problem


@pytest.mark.parametrize("form", ["array", "ndjson"])
def test_a_key_given_twice_is_refused_not_last_wins(form):
    # JSON keeps the last value silently: this order would be imported as scheduled.
    second = json.dumps(_with(ORDERS[1], "status", "scheduled")).replace(
        '"status": "scheduled"', '"status": "cancelled", "status": "scheduled"')
    if form == "array":
        text, line = "[\n" + json.dumps(ORDERS[0]) + ",\n" + second + "\n]\n", 3
    else:
        text, line = json.dumps(ORDERS[0]) + "\n" + second + "\n", 2
    problem = _only_problem(text)
    assert (problem.record, problem.line, problem.field) == (2, line, "status")
    assert problem.message == ("is given 2 times in one object ('cancelled', then 'scheduled'); only the last "
                               "would count, so give it once")


def test_a_key_given_twice_deep_in_a_record_is_named_by_its_path():
    text = json.dumps([ORDERS[1], ORDERS[0]])
    text = text.replace('"name": "DOE^JANE^Q"', '"name": "DOE^JANE^Q", "name": "ROE^JANE"')
    assert (problem := _only_problem(text)).field == "patient.name" and problem.record == 2
    auth = json.dumps(AUTHS[1]).replace('"status": "approved"', '"status": "denied", "status": "approved"')
    assert auth != json.dumps(AUTHS[1])
    assert _only_problem("[" + json.dumps(AUTHS[0]) + "," + auth + "]", parse_auths).field == "status"


@pytest.mark.parametrize("text, line, column, words", [
    ('[{"a": 1}]\n[{"b": 2}]\n', 2, 1, "'[{\"b\": 2}]\\n' follows the ] that closes the JSON array"),
    ('[{"a": 1}][{"b": 2}]', 1, 11, "follows the ] that closes the JSON array"),
    ('[{"a": 1}]\nrm -rf /\n', 2, 1, "'rm -rf /\\n' follows the ]"),
    ('[{"a": 1}]\x00', 1, 11, "'\\x00' follows the ]"),
    ('[\n{"a": 1},\n]', 3, 1, "a comma after record 1 and no record after it"),
])
def test_anything_after_the_array_or_a_dangling_comma_is_refused(text, line, column, words):
    problem = _only_problem(text)
    assert (problem.record, problem.line, problem.column, problem.field) == (None, line, column, "(file)")
    assert words in problem.message


@pytest.mark.parametrize("text, record, line, words", [
    ('[\n{"a": 1}\n{"b": 2}\n]', 2, 3, "record 2 starts without a comma after record 1"),
    ('[\n{"a": 1},\n,{"b": 2}\n]', 2, 3, "a comma where record 2 should start"),
    ('[,{"a": 1}]', 1, 1, "a comma where the first record should start"),
])
def test_records_are_separated_by_exactly_one_comma(text, record, line, words):
    problem = _only_problem(text)
    assert (problem.record, problem.line, problem.field) == (record, line, "(record)") and words in problem.message


def test_whitespace_after_the_array_is_fine():
    assert len(parse_orders(json.dumps(ORDERS) + "\n\n  \r\n")) == 3


CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\x9b"]


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_a_control_character_in_a_text_field_is_refused(char):
    # ESC (or NUL) would be served in PatientName on the worklist; names and text are one line.
    problem = _only_problem(json.dumps([ORDERS[0], _with(ORDERS[1], "patient.name", f"ROE^{char}RICHARD")]))
    assert (problem.record, problem.field) == (2, "patient.name")
    assert f"contains the control character U+{ord(char):04X}" in problem.message
    assert "at character 5" in problem.message and char not in str(problem)


@pytest.mark.parametrize("path", ["accession_number", "procedure.description", "scheduled.station_ae",
                                  "ordering_provider.name", "payer.member_id"])
def test_escape_is_refused_in_every_text_field(path):
    problem = _only_problem(json.dumps([_with(ORDERS[0], path, "A\x1b[2JB")]))
    assert (problem.record, problem.field) == (1, path) and "U+001B (ESC)" in problem.message


def test_codes_with_a_trailing_newline_are_refused():
    assert _only_problem(json.dumps([_with(ORDERS[0], "procedure.cpt", "70553\n")])).field == "procedure.cpt"
    assert _only_problem(json.dumps([_with(ORDERS[0], "diagnoses", ["G43.909\n"])])).field == "diagnoses[0]"
    assert _only_problem(json.dumps([_with(AUTHS[0], "cpt_codes", ["70553\n"])]), parse_auths).field == "cpt_codes[0]"


def test_a_control_character_in_a_csv_cell_is_refused():
    problem = _only_problem(CSV.replace("MRN2", "MRN\x002"), parse_auths)
    assert (problem.record, problem.line, problem.field) == (2, 3, "patient_id") and "U+0000 (NUL)" in problem.message


@pytest.mark.parametrize("column, cell", [
    ("auth_number", "=HYPERLINK(\"http://x\",\"PA-1\")"),
    ("patient_id", "+MRN1"),
    ("payer_id", "-2+3+cmd|' /C calc'!A0"),
    ("payer_id", "@SUM(1+1)"),
    ("facility_npi", "=1987654328"),
    ("cpt_codes", "=70553;70551"),
    ("valid_from", "-2026-11-01"),
    ("laterality", "=L"),
    ("status", "+approved"),
    ("units", "=1+1"),
    ("units", "+2"),
    ("units_used", "@0"),
])
def test_a_csv_cell_a_spreadsheet_runs_as_a_formula_is_refused(column, cell):
    header, first, second = CSV.splitlines()
    row = dict(zip(header.split(","), second.split(",")))
    row[column] = cell
    text = "\n".join([header, first, ",".join(f'"{v}"' for v in row.values())]) + "\n"
    problem = _only_problem(text, parse_auths)
    assert (problem.record, problem.line, problem.field) == (2, 3, column)
    assert f"starts with {cell[0]!r}, which a spreadsheet runs as a formula" in problem.message


@pytest.mark.parametrize("cell, words", [
    ("-1", "-1 must be a whole number of at least 1"),  # a minus sign in a number column: refused as negative
    ("--5", "'--5' must be a whole number"),
    ("\u00b2", "'²' must be a whole number"),  # str.isdigit() says yes, int() says no
])
def test_a_leading_minus_in_units_is_a_negative_number(cell, words):
    problem = _only_problem(CSV.replace(",1,1,L,", f",{cell},1,L,"), parse_auths)
    assert (problem.record, problem.field) == (2, "units") and words in problem.message


def test_a_huge_value_is_cut_in_the_message():
    huge = "A" * 50_000_000
    with pytest.raises(IntakeError) as err:
        parse_orders(json.dumps([_with(ORDERS[0], "patient.name", huge)]), "orders.json")
    (problem,) = err.value.problems
    assert problem.field == "patient.name"
    assert problem.message == f"'{'A' * 64}'…(50,000,000 characters) is longer than 320 characters"
    assert len(str(err.value)) < 300


@pytest.mark.parametrize("value", [list(range(1_000_000)), {"k": "v" * 1_000_000}])
def test_a_huge_value_of_the_wrong_type_is_cut_in_the_message(value):
    problem = _only_problem(json.dumps([_with(ORDERS[0], "patient.name", value)]))
    assert problem.field == "patient.name" and problem.message.startswith("must be text, got ")
    assert len(problem.message) < 150


def test_huge_trailing_text_and_keys_are_cut_in_the_message():
    problem = _only_problem(json.dumps(ORDERS) + "x" * 1_000_000)
    assert problem.message.startswith(f"'{'x' * 64}'…(1,000,000 characters) follows the ]")
    key = "k" * 100_000
    problem = _only_problem("[" + json.dumps(ORDERS[0])[:-1] + f', "{key}": 1, "{key}": 2}}]')
    assert problem.field == f"'{'k' * 64}'…(100,000 characters)" and len(problem.message) < 150


def test_a_huge_csv_cell_is_refused_by_record_not_with_a_traceback():
    problem = _only_problem(CSV.replace("PA-2", "P" * 200_000), parse_auths)
    assert (problem.record, problem.line, problem.field) == (2, 3, "(row)")
    assert problem.message.startswith("a cell is longer than the 131,072 characters the CSV reader takes")
    problem = _only_problem(CSV.replace("PA-2", "P" * 100_000), parse_auths)
    assert (problem.record, problem.field) == (2, "auth_number")
    assert problem.message == f"'{'P' * 64}'…(100,000 characters) is longer than 64 characters"


@pytest.mark.parametrize("text, record, line", [
    ("[" * 100_000, 1, 1),
    (json.dumps(ORDERS[0]) + "\n" + '{"a":' * 100_000, 2, 2),
])
def test_nesting_too_deep_to_read_is_a_rejection_not_a_crash(text, record, line):
    problem = _only_problem(text)
    assert (problem.record, problem.line) == (record, line) and "too deeply" in problem.message


@pytest.mark.parametrize("text, line, field", [
    ("auth_number,pay\rer_id\n", 1, "(header)"),
    (CSV.replace("PA-2,ACME", "PA-2,AC\rME"), 3, "(row)"),
])
def test_a_line_break_in_an_unquoted_csv_cell_is_a_rejection_not_a_crash(text, line, field):
    problem = _only_problem(text, parse_auths)
    assert (problem.line, problem.field) == (line, field)
    assert problem.message.startswith("a line break inside a cell that is not in quotes")
