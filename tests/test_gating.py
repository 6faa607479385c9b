"""Rule 1 of docs/rules.md: every reason code, choosing among auths, overrides, NPI checks."""

import datetime as dt
from dataclasses import replace

import pytest

from infra.errors import InvalidInput
from worklist import gating as g
from worklist.npi import is_valid_npi, luhn_check_digit
from worklist.orders import Auth, Order, Override
from worklist.policy import parse_policy

POLICY = parse_policy({"default": {"requires_auth": ["70450-70498", "70540-70559", "73718-73725"]},
                       "SELF_PAY": {"requires_auth": []}})
TODAY = dt.date(2026, 11, 28)

ORDER = Order(
    accession_number="ACC1", patient_id="MRN1", patient_name="DOE^JANE", birth_date=dt.date(1980, 2, 3),
    cpt="73721", modality="MR", scheduled_start=dt.datetime(2026, 12, 1, 10, 15), station_ae="MR1",
    ordering_npi="1234567893", facility_npi="1987654328", payer_id="ACME", laterality="R",
)
AUTH = Auth(
    auth_number="PA-1", payer_id="ACME", patient_id="MRN1", cpt_codes=("73721",),
    facility_npi="1987654328", ordering_npi="1234567893",
    valid_from=dt.date(2026, 11, 20), valid_to=dt.date(2026, 12, 20), units=1, units_used=0,
)


def test_matching_auth_serves_and_names_it():
    d = g.decide(ORDER, [AUTH], POLICY, TODAY)
    assert (d.served, d.basis, d.auth_number, d.reasons) == (True, g.BASIS_AUTH, "PA-1", ())


def test_code_off_the_list_needs_no_auth():
    d = g.decide(replace(ORDER, cpt="71046"), [], POLICY, TODAY)
    assert (d.served, d.basis, d.auth_number) == (True, g.BASIS_NOT_REQUIRED, None)


def test_payer_with_empty_list_needs_no_auth():
    d = g.decide(replace(ORDER, payer_id="SELF_PAY"), [], POLICY, TODAY)
    assert d.served and d.basis == g.BASIS_NOT_REQUIRED


@pytest.mark.parametrize("order_change, auth_change, code", [
    ({}, {"status": "pended"}, g.AUTH_NOT_APPROVED),
    ({}, {"status": "denied"}, g.AUTH_NOT_APPROVED),
    ({}, {"cpt_codes": ("73722",)}, g.AUTH_CPT_MISMATCH),
    ({}, {"facility_npi": "1456789019"}, g.AUTH_FACILITY_MISMATCH),
    ({}, {"ordering_npi": "1456789019"}, g.AUTH_ORDERING_NPI_MISMATCH),
    ({}, {"valid_to": dt.date(2026, 11, 30)}, g.AUTH_DATE_OUT_OF_RANGE),
    ({}, {"valid_from": dt.date(2026, 12, 2)}, g.AUTH_DATE_OUT_OF_RANGE),
    ({}, {"units": 2, "units_used": 2}, g.AUTH_EXHAUSTED),
    ({}, {"laterality": "L"}, g.AUTH_LATERALITY_MISMATCH),
    ({"laterality": None}, {"laterality": "R"}, g.AUTH_LATERALITY_MISMATCH),
    ({"status": "cancelled"}, {}, g.ORDER_NOT_SCHEDULED),
    ({"status": "completed"}, {}, g.ORDER_NOT_SCHEDULED),
    ({"ordering_npi": "1234567890"}, {"ordering_npi": "1234567890"}, g.INVALID_NPI),
    ({"facility_npi": "198765432"}, {"facility_npi": "198765432"}, g.INVALID_NPI),
])
def test_each_reason_code_alone(order_change, auth_change, code):
    d = g.decide(replace(ORDER, **order_change), [replace(AUTH, **auth_change)], POLICY, TODAY)
    assert not d.served
    assert d.codes == (code,)
    assert all(r.text.endswith(".") and len(r.text) > 30 for r in d.reasons)


def test_no_auth_on_file_is_auth_missing():
    d = g.decide(ORDER, [], POLICY, TODAY)
    assert (d.served, d.codes, d.auth_number) == (False, (g.AUTH_MISSING,), None)


def test_auth_of_another_payer_or_patient_is_not_a_candidate():
    others = [replace(AUTH, payer_id="OTHER"), replace(AUTH, patient_id="MRN2", auth_number="PA-2")]
    assert g.decide(ORDER, others, POLICY, TODAY).codes == (g.AUTH_MISSING,)


def test_in_progress_order_is_still_served():
    assert g.decide(replace(ORDER, status="in-progress"), [AUTH], POLICY, TODAY).served


def test_bilateral_auth_does_not_cover_one_side():
    d = g.decide(ORDER, [replace(AUTH, laterality="B")], POLICY, TODAY)
    assert d.codes == (g.AUTH_LATERALITY_MISMATCH,)


def test_auth_without_laterality_covers_any_side():
    assert g.decide(ORDER, [replace(AUTH, laterality=None)], POLICY, TODAY).served


def test_several_problems_are_all_reported():
    auth = replace(AUTH, valid_to=dt.date(2026, 11, 30), laterality="L")
    d = g.decide(ORDER, [auth], POLICY, TODAY)
    assert d.codes == (g.AUTH_DATE_OUT_OF_RANGE, g.AUTH_LATERALITY_MISMATCH)
    assert d.auth_number == "PA-1"


def test_valid_auth_wins_over_closer_looking_ones():
    bad = replace(AUTH, auth_number="PA-0", cpt_codes=("70553",))
    good = replace(AUTH, auth_number="PA-9")
    d = g.decide(ORDER, [bad, good], POLICY, TODAY)
    assert d.served and d.auth_number == "PA-9"


def test_reasons_come_from_the_closest_auth():
    two_problems = replace(AUTH, auth_number="PA-A", cpt_codes=("70553",), ordering_npi="1456789019")
    one_problem = replace(AUTH, auth_number="PA-B", units=1, units_used=1)
    d = g.decide(ORDER, [two_problems, one_problem], POLICY, TODAY)
    assert (d.auth_number, d.codes) == ("PA-B", (g.AUTH_EXHAUSTED,))


def test_tie_goes_to_the_auth_nearest_the_exam_date():
    far = replace(AUTH, auth_number="PA-FAR", valid_from=dt.date(2026, 1, 1), valid_to=dt.date(2026, 1, 31))
    near = replace(AUTH, auth_number="PA-NEAR", valid_from=dt.date(2026, 11, 1), valid_to=dt.date(2026, 11, 30))
    assert g.decide(ORDER, [far, near], POLICY, TODAY).auth_number == "PA-NEAR"


def test_overdue_order_needs_an_auth_valid_today():
    # Scheduled on 2026-12-01, still open on 2026-12-21: the auth ended on 2026-12-20.
    d = g.decide(ORDER, [AUTH], POLICY, dt.date(2026, 12, 21))
    assert d.codes == (g.AUTH_DATE_OUT_OF_RANGE,)
    assert g.decide(ORDER, [AUTH], POLICY, dt.date(2026, 12, 20)).served


def test_override_serves_a_withheld_order_and_keeps_the_reasons():
    ov = Override("ACC1", "dr.house", "stroke protocol", dt.datetime(2026, 11, 28, 3, 0))
    d = g.decide(ORDER, [], POLICY, TODAY, ov)
    assert (d.served, d.basis, d.override, d.codes) == (True, g.BASIS_OVERRIDE, ov, (g.AUTH_MISSING,))
    assert "dr.house" in d.summary()


def test_override_does_not_serve_a_cancelled_order():
    ov = Override("ACC1", "dr.house", "stroke protocol", dt.datetime(2026, 11, 28, 3, 0))
    d = g.decide(replace(ORDER, status="cancelled"), [AUTH], POLICY, TODAY, ov)
    assert not d.served and d.codes == (g.ORDER_NOT_SCHEDULED,)


def test_override_on_a_served_order_changes_nothing():
    ov = Override("ACC1", "u", "r", dt.datetime(2026, 11, 28))
    d = g.decide(ORDER, [AUTH], POLICY, TODAY, ov)
    assert d.basis == g.BASIS_AUTH and d.override is None


@pytest.mark.parametrize("npi, valid", [
    ("1234567893", True), ("1987654328", True), ("1456789019", True),
    ("1234567890", False), ("123456789", False), ("12345678931", False),
    ("12345678a3", False), ("", False), ("１２３４５６７８９３", False),
])
def test_npi_check_digit(npi, valid):
    assert is_valid_npi(npi) is valid


def test_luhn_check_digit_of_cms_example():
    # CMS's worked example: NPI 123456789 + check digit 3, prefixed 80840.
    assert luhn_check_digit("80840123456789") == 3


def test_policy_ranges_are_inclusive_and_per_payer():
    assert POLICY.requires_auth("ACME", "70450") and POLICY.requires_auth("ACME", "70498")
    assert not POLICY.requires_auth("ACME", "70499")
    assert not POLICY.requires_auth("SELF_PAY", "70450")


@pytest.mark.parametrize("entry", ["7045", "70498-70450", "ABCDE", "70450-"])
def test_policy_rejects_malformed_codes(entry):
    with pytest.raises(InvalidInput, match="requires_auth"):
        parse_policy({"default": {"requires_auth": [entry]}})


def test_default_policy_shipped_covers_advanced_imaging_only():
    from pathlib import Path

    from gateway.settings import load

    policy = load(Path(__file__).parent.parent / "settings.toml", environ={}).policy
    for code in ("70553", "70450", "71250", "74177", "72148", "73721", "78815", "78452", "75574"):
        assert policy.requires_auth("ANY", code), code
    for code in ("71046", "73030", "76700", "77067", "77065", "72100"):
        assert not policy.requires_auth("ANY", code), code
