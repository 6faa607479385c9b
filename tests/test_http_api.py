"""The HTTP API under /api/, in process: every endpoint, role and error, and the CLI's JSON shapes."""

from __future__ import annotations

import json

import pytest

from infra.audit import AuditEvent
from store.states import ARCHIVED, REJECTED
from tests.conftest import EXAMPLES
from tests.desk_fixtures import MISSPELLED, ROLES, USERS, basic, hold

PROBLEM = "application/problem+json"


def problem(response, status: int, words: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"]
    assert words in body["detail"], body["detail"]
    return body


def last_audit(action: str) -> AuditEvent:
    return AuditEvent.select().where(AuditEvent.action == action).order_by(AuditEvent.id.desc()).get()


# ---------------------------------------------------------------- logins


def test_no_credentials_is_401_with_a_basic_challenge(desk):
    response = desk.get("/api/held")
    problem(response, 401, "HTTP Basic")
    assert response.headers["www-authenticate"].startswith("Basic ")


@pytest.mark.parametrize("headers", [
    basic("tech1", "wrong password!"),
    basic("nobody"),
    {"Authorization": "Basic not-base64!"},
    {"Authorization": "Bearer abc"},
])
def test_wrong_credentials_are_401(desk, headers):
    problem(desk.get("/api/held", headers=headers), 401)


def test_a_disabled_user_is_refused_at_once_even_after_a_good_call(desk, app):
    assert desk.get("/api/held", headers=basic("billing")).status_code == 200
    app.users.disable(USERS["billing"], by="test")
    problem(desk.get("/api/held", headers=basic("billing")), 401, "disabled")


def test_a_new_password_takes_effect_at_once(desk, app):
    assert desk.get("/api/held", headers=basic("billing")).status_code == 200
    app.users.set_password(USERS["billing"], "another-password-2", by="test")
    problem(desk.get("/api/held", headers=basic("billing")), 401)
    assert desk.get("/api/held", headers=basic("billing", "another-password-2")).status_code == 200


def test_failed_logins_are_slowed_per_user(desk, sleeps):
    for _ in range(3):
        problem(desk.get("/api/held", headers=basic("tech1", "wrong password!")), 401)
    assert sleeps.delays == []  # the first three are free
    problem(desk.get("/api/held", headers=basic("tech1", "wrong password!")), 401)
    problem(desk.get("/api/held", headers=basic("tech1", "wrong password!")), 401)
    assert sleeps.delays == [1.0, 2.0]
    assert desk.get("/api/held", headers=basic("technologist")).status_code == 200  # slowed, not locked out
    assert sleeps.delays[-1] == 4.0
    sleeps.delays.clear()
    assert desk.get("/api/held", headers=basic("scheduler")).status_code == 200  # another user, same address
    assert sleeps.delays == [4.0]  # the address has failed five times: slowed as the user was


# ---------------------------------------------------------------- reads, every role


READS = ["/api/worklist?date=2026-12-01", "/api/worklist", "/api/orders/ACC1002/why", "/api/held", "/api/studies",
         "/api/auths", "/api/policies", "/api/report", "/api/report?since=2026-11-01"]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("path", READS)
def test_every_role_reads(desk, role, path):
    response = desk.get(path, headers=basic(role))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"


def test_the_worklist_is_the_clis_json(desk, run):
    code, out, _ = run("worklist", "--date", "2026-12-01", "--json")
    assert code == 0
    api = desk.get("/api/worklist?date=2026-12-01", headers=basic("billing")).json()
    cli = json.loads(out)
    assert api.pop("evaluated_at") and cli.pop("evaluated_at")
    assert api == cli
    assert {o["accession_number"]: o["served"] for o in api["orders"]} == {
        "ACC1001": True, "ACC1002": False, "ACC1003": True}


def test_why_is_the_clis_json(desk, run):
    code, out, _ = run("worklist", "why", "ACC1002", "--json")
    api = desk.get("/api/orders/ACC1002/why", headers=basic("billing")).json()
    assert code == 0 and api == json.loads(out)
    assert {r["code"] for r in api["reasons"]} == {"AUTH_DATE_OUT_OF_RANGE", "AUTH_LATERALITY_MISMATCH"}


def test_held_list_and_show_are_the_clis_json(desk, app, run, tmp_path):
    study = hold(app, tmp_path)
    listing = desk.get("/api/held", headers=basic("billing")).json()
    code, out, _ = run("held", "list", "--json")
    assert code == 0 and listing == json.loads(out)
    assert [s["study_instance_uid"] for s in listing["held"]] == [study]
    shown = desk.get(f"/api/held/{study}", headers=basic("billing")).json()
    code, out, _ = run("held", "show", study, "--json")
    assert shown == json.loads(out)
    found = {f["code"]: (f["instance_value"], f["order_value"]) for f in shown["findings"]}
    assert found["PATIENT_NAME_MISMATCH"] == (MISSPELLED, "DOE^JANE^Q") and set(found) <= {
        "PATIENT_NAME_MISMATCH", "STUDY_UID_MISMATCH"}  # the order names its own Study Instance UID: a warning
    assert desk.get("/api/held/ACC1001", headers=basic("billing")).json() == shown  # by accession number too


def test_the_report_is_the_clis_json(desk, run):
    code, out, _ = run("report", "--since", "2026-11-01", "--json")
    api = desk.get("/api/report?since=2026-11-01", headers=basic("billing")).json()
    assert code == 0 and api == json.loads(out)


def test_auths_show_units_left(desk):
    auths = desk.get("/api/auths", headers=basic("billing")).json()["auths"]
    assert [a["auth_number"] for a in auths] == ["PA-112233", "PA-778899"]  # PA-112233 ends 2026-11-30: sooner
    assert all(a["units_left"] == a["units"] - a["units_used"] for a in auths)


@pytest.mark.parametrize("path, status, words", [
    ("/api/orders/NOPE/why", 404, "no order with accession number 'NOPE'"),
    ("/api/held/1.2.3.4", 404, "no study has Study Instance UID"),
    ("/api/report?since=2027-01-01", 422, "in the future"),
    ("/api/report?since=yesterday", 422, "since"),
    ("/api/worklist?date=2026-13-01", 422, "date"),
    ("/api/nothing-here", 404, "/api/nothing-here"),
])
def test_read_errors_are_problem_details(desk, path, status, words):
    problem(desk.get(path, headers=basic("billing")), status, words)


def test_openapi_lists_every_endpoint(desk):
    doc = desk.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) >= {
        "/api/worklist", "/api/orders/{accession}/why", "/api/orders/{accession}/override", "/api/held",
        "/api/held/{study}", "/api/held/{study}/release", "/api/held/{study}/correct", "/api/held/{study}/reject",
        "/api/studies", "/api/auths", "/api/report", "/api/orders/import", "/api/auths/import", "/api/policies",
        "/api/policies/import"}
    assert not any(p.startswith("/held") or p == "/login" for p in doc["paths"])  # pages are not the API


# ---------------------------------------------------------------- override


@pytest.mark.parametrize("role", ["technologist", "billing"])
def test_override_is_refused_to_other_roles_and_changes_nothing(desk, role):
    body = problem(desk.post("/api/orders/ACC1002/override", json={"reason": "stroke"}, headers=basic(role)), 403,
                   f"your role, {role}, may not override withheld orders: ask a scheduler or admin")
    assert body["type"].endswith("/forbidden")
    assert desk.get("/api/orders/ACC1002/why", headers=basic("billing")).json()["served"] is False


@pytest.mark.parametrize("role", ["scheduler", "admin"])
def test_a_scheduler_overrides_and_is_the_audit_user(desk, role):
    response = desk.post("/api/orders/ACC1002/override", json={"reason": "suspected stroke"}, headers=basic(role))
    assert response.status_code == 200, response.text
    assert response.json()["served"] is True and response.json()["basis"] == "override"
    assert response.json()["override"]["user"] == USERS[role]
    event = last_audit("order.override")
    assert (event.user, event.subject, event.reason) == (USERS[role], "ACC1002", "suspected stroke")


@pytest.mark.parametrize("body, status, words", [
    ({"reason": "  "}, 422, "--reason"),
    ({}, 422, "reason"),
    ("not json", 422, ""),
])
def test_override_needs_a_reason(desk, body, status, words):
    kwargs = {"json": body} if isinstance(body, dict) else {"content": body}
    problem(desk.post("/api/orders/ACC1002/override", headers=basic("scheduler"), **kwargs), status, words)


def test_override_of_an_unknown_order_is_404(desk):
    problem(desk.post("/api/orders/NOPE/override", json={"reason": "x"}, headers=basic("scheduler")), 404, "NOPE")


# ---------------------------------------------------------------- held studies


@pytest.mark.parametrize("action", ["release", "correct", "reject"])
@pytest.mark.parametrize("role", ["scheduler", "billing"])
def test_review_actions_are_refused_to_other_roles(desk, app, tmp_path, action, role):
    study = hold(app, tmp_path)
    problem(desk.post(f"/api/held/{study}/{action}", json={"reason": "x"}, headers=basic(role)), 403,
            "ask a technologist or admin")
    assert [s.study_instance_uid for s in app.store.held_studies()] == [study]


def test_release_then_again_is_409(desk, app, tmp_path):
    study = hold(app, tmp_path)
    response = desk.post(f"/api/held/{study}/release", json={"reason": "name typo, same patient"},
                         headers=basic("technologist"))
    assert response.status_code == 200, response.text
    assert response.json() == {"study_instance_uid": study, "action": "study.released", "state": ARCHIVED,
                               "instances": 2, "accession_number": "ACC1001", "changed": [], "remaining_codes": []}
    assert last_audit("study.released").user == USERS["technologist"]
    problem(desk.post(f"/api/held/{study}/release", json={"reason": "again"}, headers=basic("technologist")), 409)


def test_correct_from_the_order(desk, app, tmp_path):
    study = hold(app, tmp_path)
    response = desk.post(f"/api/held/{study}/correct", json={"reason": "typo at the console"},
                         headers=basic("technologist"))
    assert response.status_code == 200, response.text
    assert response.json()["changed"] == ["IssuerOfPatientID", "PatientName"]  # the order's issuer is written too
    assert response.json()["state"] == ARCHIVED
    studies = desk.get("/api/studies", headers=basic("billing")).json()["studies"]
    assert [s["study_instance_uid"] for s in studies] == [study]
    assert studies[0]["order"]["accession_number"] == "ACC1001"


def test_reassigning_to_another_patient_needs_the_confirmation(desk, app, tmp_path):
    study = hold(app, tmp_path, PatientName="DOE^JANE^Q", AccessionNumber="ACC9999", Modality="DX",
                 SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1")
    body = {"reason": "wrong order picked", "accession": "ACC1003"}  # another patient's chest X-ray
    problem(desk.post(f"/api/held/{study}/correct", json=body, headers=basic("admin")), 409, "another patient")
    assert app.store.held_studies()[0].study_instance_uid == study
    response = desk.post(f"/api/held/{study}/correct", json={**body, "patient_change": True}, headers=basic("admin"))
    assert response.status_code == 200, response.text
    assert response.json()["accession_number"] == "ACC1003"


def test_reject(desk, app, tmp_path):
    study = hold(app, tmp_path)
    response = desk.post(f"/api/held/{study}/reject", json={"reason": "test images"}, headers=basic("technologist"))
    assert response.status_code == 200 and response.json()["state"] == REJECTED
    assert desk.get("/api/held", headers=basic("billing")).json() == {"held": []}


@pytest.mark.parametrize("action", ["release", "correct", "reject"])
def test_review_errors(desk, app, tmp_path, action):
    problem(desk.post(f"/api/held/1.2.3/{action}", json={"reason": "x"}, headers=basic("technologist")), 404)
    study = hold(app, tmp_path)
    problem(desk.post(f"/api/held/{study}/{action}", json={"reason": ""}, headers=basic("technologist")), 422)
    problem(desk.post(f"/api/held/{study}/{action}", json={"no": "reason"}, headers=basic("technologist")), 422)


def test_an_accession_with_two_held_studies_is_409_naming_the_choice(desk, app, tmp_path):
    hold(app, tmp_path / "a")
    hold(app, tmp_path / "b")
    problem(desk.get("/api/held/ACC1001", headers=basic("billing")), 409, "name one by its Study Instance UID")


# ---------------------------------------------------------------- imports


def orders_text(**changes) -> str:
    orders = json.loads((EXAMPLES / "orders.json").read_text())
    orders[0].update(changes)
    return json.dumps(orders)


@pytest.mark.parametrize("role", ["technologist", "billing"])
def test_imports_are_refused_to_other_roles(desk, role):
    problem(desk.post("/api/orders/import", content=orders_text(), headers=basic(role)), 403)
    problem(desk.post("/api/auths/import", content=(EXAMPLES / "auths.json").read_text(), headers=basic(role)), 403)
    problem(desk.post("/api/policies/import", content=(EXAMPLES / "policies.json").read_text(), headers=basic(role)),
            403)


def test_orders_import_upserts_and_audits_the_user(desk):
    response = desk.post("/api/orders/import", content=orders_text(), headers=basic("scheduler"))
    assert response.status_code == 200, response.text
    assert response.json() == {"imported": "orders", "records": 3, "created": 0, "updated": 3}
    assert last_audit("orders.import").user == USERS["scheduler"]


def test_a_bad_order_file_is_rejected_whole_naming_each_problem(desk):
    text = orders_text(accession_number="ACC7777", facility_npi="1234567890")
    body = problem(desk.post("/api/orders/import", content=text, headers=basic("scheduler")), 422, "nothing imported")
    [found] = body["problems"]
    assert (found["record"], found["line"], found["field"]) == (1, 1, "facility_npi")  # json.dumps: one line
    assert "check digit" in found["message"]
    problem(desk.get("/api/orders/ACC7777/why", headers=basic("billing")), 404)


def test_auths_import_as_csv(desk):
    csv = ("auth_number,payer_id,patient_id,cpt_codes,facility_npi,ordering_npi,valid_from,valid_to,units\n"
           "PA-CSV1,ACME_HEALTH,MRN5002,73721;73722,1987654328,1456789019,2026-11-01,2026-12-31,2\n")
    response = desk.post("/api/auths/import", content=csv, headers={**basic("scheduler"), "Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 1
    auths = {a["auth_number"]: a for a in desk.get("/api/auths", headers=basic("billing")).json()["auths"]}
    assert auths["PA-CSV1"]["cpt_codes"] == ["73721", "73722"] and auths["PA-CSV1"]["units_left"] == 2


def test_a_claim_response_becomes_an_auth(desk):
    from tests.test_claim_response import claim_response

    response = desk.post("/api/auths/import", json=claim_response(), headers=basic("admin"))
    assert response.status_code == 200, response.text
    assert response.json() == {"imported": "auths", "records": 1, "created": 1, "updated": 0}
    auths = {a["auth_number"]: a for a in desk.get("/api/auths", headers=basic("billing")).json()["auths"]}
    assert auths["PAS-2026-0001"]["status"] == "approved" and auths["PAS-2026-0001"]["cpt_codes"] == ["73721"]
    assert last_audit("auths.import").user == USERS["admin"]


def test_a_claim_response_with_a_bad_npi_is_rejected(desk):
    from tests.test_claim_response import claim_response

    bad = claim_response()
    bad["requestor"]["identifier"]["value"] = "1234567890"
    body = problem(desk.post("/api/auths/import", json=bad, headers=basic("admin")), 422, "nothing imported")
    assert body["problems"][0]["field"] == "ordering_npi"


def test_an_import_body_that_is_not_utf8_is_422(desk):
    problem(desk.post("/api/orders/import", content=b"\xff\xfe[", headers=basic("scheduler")), 422, "UTF-8")


def test_policies_import_replaces_the_payers_policies_and_lists_them_as_the_cli(desk, run):
    policy = {"payer_id": "ACME_HEALTH", "cpt": ["70551-70553"], "covered_icd10": ["G43", "R51.9"]}
    response = desk.post("/api/policies/import", content=json.dumps([policy]), headers=basic("scheduler"))
    assert response.status_code == 200, response.text
    assert response.json()["imported"] == "policies" and response.json()["records"] == 1
    assert last_audit("policies.import").user == USERS["scheduler"]
    listed = desk.get("/api/policies", headers=basic("billing")).json()["policies"]
    assert listed == [policy]
    code, out, _ = run("policies", "list", "--json")
    assert code == 0 and json.loads(out) == listed


def test_a_bad_policy_file_is_rejected_whole_naming_the_field(desk):
    bad = [{"payer_id": "ACME_HEALTH", "cpt": ["70551-70553"], "covered_icd10": []}]
    body = problem(desk.post("/api/policies/import", content=json.dumps(bad), headers=basic("scheduler")), 422)
    assert body["problems"] and body["problems"][0]["field"] == "covered_icd10"
    assert desk.get("/api/policies", headers=basic("billing")).json()["policies"] == []
