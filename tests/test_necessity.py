"""Rule 7, medical necessity: policies, their import, and DIAGNOSIS_MISSING / DIAGNOSIS_NOT_COVERED."""

import datetime as dt
import json
from dataclasses import replace

import pytest

from tests.conftest import EXAMPLES
from worklist import gating as g
from worklist.intake import IntakeError, parse_policies
from worklist.necessity import NecessityPolicy, covering, icd10_key
from worklist.orders import Auth, Order, Override
from worklist.policy import parse_policy

POLICY = parse_policy({"default": {"requires_auth": ["70540-70559"]}, "SELF_PAY": {"requires_auth": []}})
TODAY = dt.date(2026, 11, 28)
ORDER = Order(
    accession_number="ACC1", patient_id="MRN1", patient_name="DOE^JANE", birth_date=dt.date(1980, 2, 3),
    cpt="70553", modality="MR", scheduled_start=dt.datetime(2026, 12, 1, 10, 15), station_ae="MR1",
    ordering_npi="1234567893", facility_npi="1987654328", payer_id="ACME", diagnoses=("G43.909",),
)
AUTH = Auth(
    auth_number="PA-1", payer_id="ACME", patient_id="MRN1", cpt_codes=("70553", "70551", "70552", "70550", "70554"),
    facility_npi="1987654328", ordering_npi="1234567893",
    valid_from=dt.date(2026, 11, 20), valid_to=dt.date(2026, 12, 20),
)
BRAIN = NecessityPolicy("ACME", ("70551-70553",), ("G43", "R51.9"))


def decide(order=ORDER, policies=(BRAIN,), auths=(AUTH,), override=None):
    return g.decide(order, auths, POLICY, TODAY, override, policies)


# ------------------------------------------------------------------------ the rule, pure


@pytest.mark.parametrize("diagnoses, served", [
    (("G43",), True),           # the prefix itself
    (("G43.909",), True),       # a longer code under the prefix
    (("G43909",), True),        # dots are ignored on the order's side
    (("g43.909",), True),       # and case
    (("R51.9",), True),
    (("R519",), True),
    (("R51.90",), True),        # longer than the prefix R51.9
    (("R51",), False),          # shorter than the prefix R51.9: not covered
    (("R51.8",), False),        # a sibling code
    (("G44.1",), False),
    (("G4",), False),
    (("M54.5", "G43.1"), True),  # one covered diagnosis is enough, in any place
])
def test_prefix_match(diagnoses, served):
    d = decide(replace(ORDER, diagnoses=diagnoses))
    assert d.served is served
    assert d.codes == (() if served else (g.DIAGNOSIS_NOT_COVERED,))


def test_dots_in_the_policy_are_ignored_too():
    policy = NecessityPolicy("ACME", ("70553",), ("R519",))
    assert decide(replace(ORDER, diagnoses=("R51.9",)), [policy]).served
    assert icd10_key(" r51.9 ") == "R519"


@pytest.mark.parametrize("cpt, applies", [
    ("70550", False), ("70551", True), ("70552", True), ("70553", True), ("70554", False),
])
def test_range_ends_are_inclusive(cpt, applies):
    d = decide(replace(ORDER, cpt=cpt, diagnoses=("M54.5",)))
    assert d.codes == ((g.DIAGNOSIS_NOT_COVERED,) if applies else ())


def test_no_diagnosis_under_a_policy_is_diagnosis_missing():
    d = decide(replace(ORDER, diagnoses=()))
    assert (d.served, d.codes) == (False, (g.DIAGNOSIS_MISSING,))
    assert "has none" in d.reasons[0].text and d.reasons[0].text.endswith(".")
    assert d.auth_number == "PA-1"  # the auth that would serve it is still named


def test_payer_without_policy_or_code_outside_every_policy_is_not_checked():
    assert decide(replace(ORDER, payer_id="SELF_PAY", diagnoses=())).served
    assert decide(replace(ORDER, cpt="70540", diagnoses=()), auths=[replace(AUTH, cpt_codes=("70540",))]).served
    assert decide(replace(ORDER, diagnoses=()), policies=()).served
    other_payer = NecessityPolicy("OTHER", ("70553",), ("Z00",))
    assert decide(replace(ORDER, diagnoses=("M54.5",)), [other_payer]).served


def test_several_policies_for_one_code_any_one_covers():
    second = NecessityPolicy("ACME", ("70553",), ("C71",))
    assert decide(replace(ORDER, diagnoses=("C71.1",)), [BRAIN, second]).served
    assert decide(replace(ORDER, diagnoses=("G43.1",)), [BRAIN, second]).served
    d = decide(replace(ORDER, diagnoses=("M54.5",)), [BRAIN, second])
    assert d.codes == (g.DIAGNOSIS_NOT_COVERED,)
    assert "C71, G43, R51.9" in d.reasons[0].text  # every accepted prefix, once
    assert covering(replace(ORDER, diagnoses=("M54.5", "C71.9")), [BRAIN, second]) == ("C71.9",)


def test_diagnosis_reasons_come_after_the_auth_reasons():
    d = decide(replace(ORDER, diagnoses=()), auths=())
    assert d.codes == (g.AUTH_MISSING, g.DIAGNOSIS_MISSING)
    closed = decide(replace(ORDER, status="cancelled", diagnoses=()))
    assert closed.codes == (g.ORDER_NOT_SCHEDULED, g.DIAGNOSIS_MISSING)


def test_an_override_sets_the_diagnosis_aside_and_keeps_it():
    o = Override("ACC1", "dr.er", "stroke alert", dt.datetime(2026, 11, 28, 3, 0))
    d = decide(replace(ORDER, diagnoses=()), override=o)
    assert (d.served, d.basis, d.codes) == (True, g.BASIS_OVERRIDE, (g.DIAGNOSIS_MISSING,))
    assert not decide(replace(ORDER, status="completed", diagnoses=()), override=o).served


def test_the_codes_are_reason_codes():
    assert {g.DIAGNOSIS_MISSING, g.DIAGNOSIS_NOT_COVERED} <= set(g.REASON_CODES)


def test_the_store_question_ignores_diagnoses():
    """authorize() is the auth question (ORDER_NOT_AUTHORIZED in the store): diagnoses are the worklist's."""
    assert g.authorize(replace(ORDER, diagnoses=()), [AUTH], POLICY, TODAY).authorized


# ------------------------------------------------------------------------ the file


def test_json_ndjson_and_csv_read_alike():
    expected = [BRAIN, NecessityPolicy("ACME", ("73721", "73722-73723"), ("M23",))]
    as_json = json.dumps([{"payer_id": p.payer_id, "cpt": list(p.cpt), "covered_icd10": list(p.covered_icd10)}
                          for p in expected])
    ndjson = "\n".join(json.dumps(r) for r in json.loads(as_json))
    as_csv = "payer_id,cpt,covered_icd10\nACME,70551-70553,G43;R51.9\nACME,73721;73722-73723,M23\n"
    assert parse_policies(as_json) == parse_policies(ndjson) == parse_policies(as_csv) == expected


def test_codes_are_written_back_in_capitals_and_ranges_without_spaces():
    (p,) = parse_policies('[{"payer_id": "ACME", "cpt": [" 70551 - 70553 "], "covered_icd10": ["r51.9"]}]')
    assert (p.cpt, p.covered_icd10) == (("70551-70553",), ("R51.9",))


@pytest.mark.parametrize("record, field, words", [
    ({"cpt": ["70553"], "covered_icd10": ["G43"]}, "payer_id", "is missing"),
    ({"payer_id": "ACME", "covered_icd10": ["G43"]}, "cpt", "is missing"),
    ({"payer_id": "ACME", "cpt": [], "covered_icd10": ["G43"]}, "cpt", "at least one"),
    ({"payer_id": "ACME", "cpt": ["70553-70551"], "covered_icd10": ["G43"]}, "cpt[0]", "ascending range"),
    ({"payer_id": "ACME", "cpt": ["7055"], "covered_icd10": ["G43"]}, "cpt[0]", "not a CPT code"),
    ({"payer_id": "ACME", "cpt": ["70553"], "covered_icd10": []}, "covered_icd10", "at least one"),
    ({"payer_id": "ACME", "cpt": ["70553"], "covered_icd10": ["G4"]}, "covered_icd10[0]", "not an ICD-10-CM"),
    ({"payer_id": "ACME", "cpt": ["70553"], "covered_icd10": [43]}, "covered_icd10[0]", "not an ICD-10-CM"),
    ({"payer_id": "ACME", "cpt": "70553", "covered_icd10": ["G43"]}, "cpt", "must list"),
    ({"payer_id": "ACME", "cpt": ["70553"], "covered_icd10": ["G43"], "note": "x"}, "note", "not a field"),
])
def test_a_bad_record_is_named_with_its_field(record, field, words):
    good = {"payer_id": "ACME", "cpt": ["70540"], "covered_icd10": ["G43"]}
    text = "\n".join(json.dumps(r) for r in (good, record))
    with pytest.raises(IntakeError) as caught:
        parse_policies(text, "p.ndjson")
    (problem,) = caught.value.problems
    assert (problem.record, problem.line, problem.field) == (2, 2, field)
    assert words in problem.message and "nothing imported" in str(caught.value)


def test_the_same_policy_twice_is_refused_naming_the_first():
    rec = {"payer_id": "ACME", "cpt": ["70553"], "covered_icd10": ["G43"]}
    with pytest.raises(IntakeError) as caught:
        parse_policies(json.dumps([rec, {**rec, "covered_icd10": ["R51"]}]))
    assert "already appears in record 1" in str(caught.value) and "field cpt" in str(caught.value)
    # the same codes for another payer are another policy
    assert len(parse_policies(json.dumps([rec, {**rec, "payer_id": "OTHER"}]))) == 2


def test_csv_header_and_formula_cells_are_checked_as_for_auths():
    with pytest.raises(IntakeError, match=r"line 1, field \(header\): missing column covered_icd10"):
        parse_policies("payer_id,cpt\nACME,70553\n")
    with pytest.raises(IntakeError, match="unknown column units"):
        parse_policies("payer_id,cpt,covered_icd10,units\nACME,70553,G43,1\n")
    with pytest.raises(IntakeError, match=r"record 1 \(line 2\), field payer_id: .*formula; export the policies"):
        parse_policies("payer_id,cpt,covered_icd10\n=cmd,70553,G43\n")
    with pytest.raises(IntakeError, match="the file is empty; export the policies again"):
        parse_policies("")


# ------------------------------------------------------------------------ the commands


@pytest.fixture
def with_policies(loaded):
    assert loaded("policies", "import", str(EXAMPLES / "policies.json"))[0] == 0
    return loaded


def test_example_policies_keep_the_example_outcomes(with_policies):
    out = json.loads(with_policies("worklist", "--date", "2026-12-01", "--json")[1])
    outcome = {o["accession_number"]: (o["served"], [r["code"] for r in o["reasons"]]) for o in out["orders"]}
    assert outcome == {"ACC1001": (True, []),
                       "ACC1002": (False, ["AUTH_DATE_OUT_OF_RANGE", "AUTH_LATERALITY_MISMATCH"]),
                       "ACC1003": (True, [])}


def test_import_list_and_replace(loaded, tmp_path):
    code, out, _ = loaded("policies", "list")
    assert code == 0 and "No necessity policies on file" in out
    code, out, _ = loaded("policies", "import", str(EXAMPLES / "policies.json"))
    assert code == 0 and "2 policies imported, replacing 0 earlier policies" in out
    listed = json.loads(loaded("policies", "list", "--json")[1])
    assert listed == json.loads((EXAMPLES / "policies.json").read_text())
    code, out, _ = loaded("policies", "list")
    assert "2 policies of 1 payer:" in out and "ACME_HEALTH      CPT 70551-70553: covered by G43, R51.9" in out

    # a second file for the same payer replaces its policies; another payer's stay
    other = tmp_path / "p.csv"
    other.write_text("payer_id,cpt,covered_icd10\nACME_HEALTH,70553,C71\nBLUE,70553,G43\n")
    code, out, _ = loaded("policies", "import", str(other))
    assert code == 0 and "2 policies imported, replacing 2 earlier policies" in out
    listed = json.loads(loaded("policies", "list", "--json")[1])
    assert listed == [{"payer_id": "ACME_HEALTH", "cpt": ["70553"], "covered_icd10": ["C71"]},
                      {"payer_id": "BLUE", "cpt": ["70553"], "covered_icd10": ["G43"]}]

    # ACC1001 (G43.909, CPT 70553) is no longer covered: withheld, and why says so
    code, out, _ = loaded("worklist", "why", "ACC1001")
    assert "DIAGNOSIS_NOT_COVERED" in out and "accepts CPT 70553 for diagnoses C71" in out
    entry = json.loads(loaded("worklist", "why", "ACC1001", "--json")[1])
    assert [r["code"] for r in entry["reasons"]] == ["DIAGNOSIS_NOT_COVERED"]
    assert entry["necessity_policies"] == [{"payer_id": "ACME_HEALTH", "cpt": ["70553"], "covered_icd10": ["C71"]}]
    report = json.loads(loaded("report", "--since", "2026-11-01", "--json")[1])
    assert report["orders"]["withheld_by_reason"]["DIAGNOSIS_NOT_COVERED"] == 1
    assert report["orders"]["withheld_by_reason"]["DIAGNOSIS_MISSING"] == 0


def test_a_bad_file_changes_nothing(with_policies, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"payer_id": "ACME_HEALTH", "cpt": ["70553"], "covered_icd10": ["C71"]},
                               {"payer_id": "ACME_HEALTH", "cpt": ["99"], "covered_icd10": ["C71"]}], indent=1))
    code, out, err = with_policies("policies", "import", str(bad))
    assert code == 2 and out == ""
    assert "record 2 (line 11), field cpt[0]" in err and "nothing imported" in err
    listed = json.loads(with_policies("policies", "list", "--json")[1])
    assert listed == json.loads((EXAMPLES / "policies.json").read_text())


def test_the_import_is_audited(with_policies, app):
    from infra.audit import AuditEvent

    events = list(AuditEvent.select().where(AuditEvent.action == "policies.import"))
    assert len(events) == 1 and events[0].subject.endswith("policies.json")


# ------------------------------------------------------------------------ SQLite and PostgreSQL


@pytest.fixture(params=["sqlite", "postgres"])
def gate_db(request, tmp_path):
    from tests.test_database import NOW, POLICY, _fresh
    from worklist.gate import Gate

    url = f"sqlite:///{tmp_path / 'gk.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    db = _fresh(url)
    yield Gate(db, POLICY, lambda: NOW)
    db.close()


def test_policies_replace_per_payer_and_gate_on_both_databases(gate_db):
    from worklist.intake import parse_orders

    gate = gate_db
    orders = parse_orders((EXAMPLES / "orders.json").read_text())
    gate.import_orders(orders)
    assert gate.import_policies_text((EXAMPLES / "policies.json").read_text(), "p.json")[1].created == 2
    other = '[{"payer_id": "BLUE", "cpt": ["70553"], "covered_icd10": ["G43"]}]'
    gate.import_policies_text(other, "blue.json")
    narrower = '{"payer_id": "ACME_HEALTH", "cpt": ["70553"], "covered_icd10": ["C71"]}'
    count, result = gate.import_policies_text(narrower, "acme.ndjson")
    assert (count, result.created, result.updated) == (1, 1, 2)
    assert [p.payer_id for p in gate.necessity_policies()] == ["ACME_HEALTH", "BLUE"]
    decisions = {d.accession_number: d for d in gate.decide(orders)}
    assert decisions["ACC1001"].codes == (g.AUTH_MISSING, g.DIAGNOSIS_NOT_COVERED)  # no auths imported here
    assert g.DIAGNOSIS_NOT_COVERED not in decisions["ACC1002"].codes  # 73721 is no longer under a policy


def test_the_follow_up_queries_on_both_databases(gate_db):
    """The queries of the follow-up jobs and the report (rule 7), on SQLite and PostgreSQL."""
    from infra import audit
    from tests.test_database import NOW
    from worklist import records
    from worklist.intake import parse_orders
    from worklist.models import MppsRow, OrderRow

    gate = gate_db
    gate.import_orders(parse_orders((EXAMPLES / "orders.json").read_text()))
    OrderRow.update(status="completed").where(OrderRow.accession_number.in_(["ACC1001", "ACC1002"])).execute()
    OrderRow.update(report_status="final").where(OrderRow.accession_number == "ACC1002").execute()
    OrderRow.update(report_status="preliminary").where(OrderRow.accession_number == "ACC1003").execute()
    since = dt.datetime(2026, 11, 1)
    assert gate.report_statuses_since(since) == {"": 1, "final": 1, "preliminary": 1}
    assert [o.accession_number for o in gate.performed_without_final_report(since)] == ["ACC1001"]
    MppsRow.create(sop_instance_uid="1.2.3", accession_number="ACC1003", status="IN PROGRESS", created_at=NOW,
                   updated_at=NOW)
    assert gate.accessions_with_steps(["ACC1001", "ACC1003"]) == {"ACC1003"}
    audit.record(NOW, "job:x", "study.report_overdue", "1.2.3")
    assert audit.counts_since(["study.report_overdue", "order.filing_deadline_near"], since) == {
        "study.report_overdue": 1, "order.filing_deadline_near": 0}
    assert set(records.same_procedure_orders(gate.order("ACC1001"))) == set()
