"""A Da Vinci PAS ClaimResponse (FHIR R4) read as an auth: table-driven, no IO."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from worklist.claim_response import NotClaimResponse, auth_record, is_claim_response, parse_claim_responses
from worklist.intake import IntakeError

CPT = "http://www.ama-assn.org/go/cpt"
NPI = "http://hl7.org/fhir/sid/us-npi"
REVIEW = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/extension-reviewAction"


def review(code: str) -> dict:
    return {"url": REVIEW, "extension": [
        {"url": "number", "valueString": "AUTH0001"},
        {"url": "code", "valueCodeableConcept": {"coding": [{"system": "https://codesystem.x12.org/005010/306",
                                                             "code": code}]}}]}


def claim_response(**changes) -> dict:
    """A synthetic approved PAS ClaimResponse for patient MRN5002's right knee MRI."""
    resource = {
        "resourceType": "ClaimResponse",
        "id": "synthetic-1",
        "status": "active",
        "use": "preauthorization",
        "patient": {"reference": "Patient/MRN5002", "identifier": {"system": "urn:mrn", "value": "MRN5002"}},
        "created": "2026-11-25T10:00:00-05:00",
        "insurer": {"identifier": {"system": "urn:payer", "value": "ACME_HEALTH"}},
        "requestor": {"identifier": {"system": NPI, "value": "1456789019"}},
        "outcome": "complete",
        "preAuthRef": "PAS-2026-0001",
        "preAuthPeriod": {"start": "2026-11-25", "end": "2026-12-31"},
        "item": [{"itemSequence": 1, "extension": [review("A1")],
                  "productOrService": {"coding": [{"system": CPT, "code": "73721"}]},
                  "adjudication": [{"category": {"coding": [{"code": "submitted"}]}}]}],
        "addItem": [{"itemSequence": [1], "productOrService": {"coding": [{"system": "urn:other", "code": "X"}]},
                     "locationReference": {"identifier": {"system": NPI, "value": "1987654328"}}}],
    }
    resource.update(changes)
    return resource


def test_an_approved_response_maps_every_field():
    assert auth_record(claim_response()) == {
        "auth_number": "PAS-2026-0001", "payer_id": "ACME_HEALTH", "patient_id": "MRN5002", "cpt_codes": ["73721"],
        "facility_npi": "1987654328", "ordering_npi": "1456789019", "valid_from": "2026-11-25",
        "valid_to": "2026-12-31", "units": 1, "status": "approved"}


def _item(**item) -> list:
    base = copy.deepcopy(claim_response()["item"][0])
    base.update(item)
    return [base]


@pytest.mark.parametrize("changes, field, expected", [
    ({"item": _item(extension=[review("A2")])}, "status", "approved"),
    ({"item": _item(extension=[review("A6")])}, "status", "approved"),
    ({"item": _item(extension=[review("A3")])}, "status", "denied"),
    ({"item": _item(extension=[review("A4")])}, "status", "pended"),
    ({"item": _item(extension=[], adjudication=[{"category": {"coding": [{"code": "denied"}]}}])}, "status", "denied"),
    ({"item": _item(extension=[], adjudication=[])[:0], "outcome": "queued", "addItem": []}, "status", "pended"),
    ({"status": "cancelled"}, "status", "cancelled"),
    ({"item": _item(extension=[review("A1")]) + _item(extension=[review("A3")])}, "status", "denied"),  # worst wins
    ({"patient": {"reference": "Patient/MRN7"}}, "patient_id", "MRN7"),
    ({"preAuthPeriod": None, "item": _item(extension=[review("A1"), {
        "url": "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/extension-itemPreAuthPeriod",
        "valuePeriod": {"start": "2026-12-01", "end": "2026-12-15"}}])}, "valid_to", "2026-12-15"),
    ({"preAuthPeriod": {"start": "2026-11-25T00:00:00Z", "end": "2026-12-31T23:59:59Z"}}, "valid_from", "2026-11-25"),
    ({"item": _item(quantity={"value": 3})}, "units", 3),
    ({"item": _item(productOrService={"coding": [{"code": "73722"}]})}, "cpt_codes", ["73722"]),  # no system: CPT
    ({"item": _item(productOrService={"coding": [{"system": "urn:hcpcs", "code": "G0001"}]})}, "cpt_codes", []),
    ({"requestor": {"identifier": {"system": "urn:other", "value": "1456789019"}}}, "ordering_npi", ""),
])
def test_fields(changes, field, expected):
    resource = claim_response(**changes)
    resource = {k: v for k, v in resource.items() if v is not None}
    assert auth_record(resource)[field] == expected


@pytest.mark.parametrize("changes, field", [
    ({"resourceType": "Claim"}, "resourceType"),
    ({"use": "claim"}, "use"),
    ({"preAuthRef": ""}, "preAuthRef"),
    ({"preAuthPeriod": {"start": "2026-11-25"}}, "preAuthPeriod"),
    ({"item": _item(extension=[], adjudication=[]), "addItem": []}, "item.adjudication"),
])
def test_what_cannot_be_read_is_named(changes, field):
    with pytest.raises(NotClaimResponse) as err:
        auth_record(claim_response(**changes))
    assert err.value.field == field


def test_defaults_fill_missing_npis_only():
    resource = claim_response(requestor=None, addItem=[])
    record = auth_record(resource, {"facility_npi": "1245319599", "ordering_npi": "1234567893"})
    assert (record["facility_npi"], record["ordering_npi"]) == ("1245319599", "1234567893")
    assert auth_record(claim_response(), {"ordering_npi": "1234567893"})["ordering_npi"] == "1456789019"


def test_a_bundle_is_read_and_checked_like_an_import():
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": claim_response()}, {"resource": {"resourceType": "Patient", "id": "MRN5002"}}]}
    assert is_claim_response(bundle) and not is_claim_response({"resourceType": "Bundle", "entry": []})
    [auth] = parse_claim_responses(bundle)
    assert (auth.auth_number, auth.cpt_codes, auth.valid_to) == ("PAS-2026-0001", ("73721",), dt.date(2026, 12, 31))


@pytest.mark.parametrize("value, field", [
    ({"resourceType": "Patient"}, "resourceType"),
    (claim_response(requestor=None), "ordering_npi"),
    (claim_response(preAuthPeriod={"start": "2026-12-31", "end": "2026-11-01"}), "valid_to"),
    (claim_response(item=_item(productOrService={"coding": []})), "cpt_codes"),
])
def test_problems_reject_the_whole_import(value, field):
    with pytest.raises(IntakeError) as err:
        parse_claim_responses(value)
    assert [p.field for p in err.value.problems] == [field]
