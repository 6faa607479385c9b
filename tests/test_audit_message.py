"""DICOM Audit Messages (PS3.15 A.5) from audit log events: pure, no socket, no database."""

from __future__ import annotations

import base64
import datetime as dt
import re
import xml.etree.ElementTree as ET

import pytest

from infra import audit_message as am
from infra import users
from store import aging, receiving, report, review
from store import watch as store_watch
from tests.conftest import ROOT
from worklist import mpps, watch

AT = dt.datetime(2026, 12, 1, 10, 15, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
SOURCE = am.Source("GATEKEEPER", "gk1.example.org", "General Hospital")
STUDY = "1.2.826.0.1.3680043.8.498.1"
SOP = "1.2.826.0.1.3680043.8.498.1.1.1"

#: A plausible event of each mapped action: (user, subject, detail).
EXAMPLES = {
    "study.released": ("tech1", STUDY, {"accession_number": "ACC1002", "instances": 3, "codes": ["SEX_MISMATCH"]}),
    "study.corrected": ("tech1", STUDY, {"accession_number": "ACC1002", "previous_accession": "ACC9",
                                         "patient_change": True, "previous_patient_id": "P7"}),
    "study.rejected": ("tech2", STUDY, {"accession_number": "ACC1002", "instances": 1}),
    "study.reopened": ("MR1", STUDY, {"accession_number": "ACC1002", "sop_instance_uid": SOP}),
    "study.held_too_long": ("job:held_age", STUDY, {"accession_number": "ACC1002", "hours_held": 50}),
    "study.purged": ("job:purge_rejected", STUDY, {"accession_number": "", "files_deleted": 3}),
    "orders.import": ("import", "orders.json", {"created": 3, "updated": 0}),
    "auths.import": ("import", "auths.csv", {"created": 2, "updated": 1}),
    "order.override": ("dr.smith", "ACC1002", {}),
    "worklist.served": ("job:reevaluate", "ACC1002", {"basis": "auth", "auth_number": "PA-1"}),
    "worklist.withheld": ("job:reevaluate", "ACC1002", {"codes": ["AUTH_EXPIRED"]}),
    "order.auth_will_expire": ("job:expiring_auths", "ACC1002", {"auth_number": "PA-1"}),
    "order.auth_units_short": ("job:expiring_auths", "ACC1002", {"auth_number": "PA-1"}),
    "auth.unit_used": ("MR1", "PA-1", {"accession_number": "ACC1002", "sop_instance_uid": SOP}),
    "mpps.start": ("MR1", "ACC1002", {"sop_instance_uid": SOP, "step_status": "IN PROGRESS"}),
    "mpps.complete": ("MR1", "ACC1002", {"sop_instance_uid": SOP, "step_status": "COMPLETED"}),
    "mpps.discontinue": ("MR1", "ACC1002", {"sop_instance_uid": SOP, "step_status": "DISCONTINUED"}),
    "association.refused": ("XR9", "XR9", {"address": "10.9.9.9", "called_ae": "GATEKEEPER", "service": "worklist"}),
    "operation.refused": ("MR1", "MR1", {"address": "10.1.2.3", "called_ae": "GATEKEEPER", "service": "mpps"}),
    "security.alert": ("GATEKEEPER", "tls", {"address": "10.9.9.9"}),
    "policies.import": ("import", "policies.json", {"created": 2, "updated": 0}),
    "order.completed_from_images": ("job:complete_without_mpps", "ACC1002", {"study_instance_uid": STUDY}),
    "study.report_overdue": ("job:report_watch", STUDY, {"accession_number": "ACC1002", "report_status": ""}),
    "order.filing_deadline_near": ("job:report_watch", "ACC1002", {"deadline": "2027-03-01"}),
    "order.feed": ("hl7:RIS^NORTH", "ACC6001", {"control_id": "MSG1", "message_type": "ORM^O01"}),
    "order.report_status": ("hl7:RIS^NORTH", "ACC6001", {"before": "", "after": "final"}),
    "order.patient_update": ("hl7:RIS^NORTH", "ACC6001", {"patient_id": "MRN6001"}),
    "order.patient_merge": ("hl7:RIS^NORTH", "ACC6001", {"patient_id": "MRN6100", "prior_patient_id": "MRN6001"}),
    "study.rechecked": ("tech1", STUDY, {"accession_number": "ACC6001"}),
    "user.added": ("admin", "jane", {"role": "technologist"}),
    "user.disabled": ("admin", "jane", {}),
    "user.password_changed": ("admin", "jane", {}),
}

#: What each action must say (EventID code, EventActionCode, EventOutcomeIndicator).
EXPECTED = {
    "study.released": ("110103", "U", "0"), "study.corrected": ("110103", "U", "0"),
    "study.rejected": ("110103", "D", "0"), "study.reopened": ("110104", "C", "0"),
    "study.held_too_long": ("110100", "E", "0"), "study.purged": ("110105", "D", "0"),
    "orders.import": ("110107", "C", "0"), "auths.import": ("110107", "C", "0"),
    "order.override": ("110109", "U", "0"), "worklist.served": ("110109", "U", "0"),
    "worklist.withheld": ("110109", "U", "0"), "order.auth_will_expire": ("110109", "R", "0"),
    "order.auth_units_short": ("110109", "R", "0"), "auth.unit_used": ("110109", "U", "0"),
    "mpps.start": ("110111", "C", "0"), "mpps.complete": ("110111", "U", "0"),
    "mpps.discontinue": ("110111", "U", "0"), "association.refused": ("110113", "E", "4"),
    "operation.refused": ("110113", "E", "4"), "security.alert": ("110113", "E", "4"),
    "policies.import": ("110107", "C", "0"), "order.completed_from_images": ("110111", "U", "0"),
    "study.report_overdue": ("110100", "E", "0"), "order.filing_deadline_near": ("110109", "R", "0"),
    "order.feed": ("110109", "U", "0"), "order.report_status": ("110109", "U", "0"),
    "order.patient_update": ("110110", "U", "0"), "order.patient_merge": ("110110", "U", "0"),
    "study.rechecked": ("110103", "U", "0"),
    "user.added": ("110113", "C", "0"), "user.disabled": ("110113", "U", "0"),
    "user.password_changed": ("110113", "U", "0"),
}


def message(action: str, user: str = "tech1", subject: str = STUDY, reason: str = "why", detail=None) -> ET.Element:
    text = am.audit_message(am.EventRecord(7, AT, user, action, subject, reason, detail or {}), SOURCE)
    return ET.fromstring(text)  # raises on XML that is not well-formed


def codes(element: ET.Element | None) -> tuple[str, str, str]:
    assert element is not None
    return element.get("csd-code"), element.get("codeSystemName"), element.get("originalText")


def check_shape(root: ET.Element) -> None:
    """The elements and attributes PS3.15 A.5.1 requires, in the schema's order."""
    assert root.tag == "AuditMessage"
    tags = [child.tag for child in root]
    assert tags[0] == "EventIdentification"
    participants = [i for i, t in enumerate(tags) if t == "ActiveParticipant"]
    source = tags.index("AuditSourceIdentification")
    objects = [i for i, t in enumerate(tags) if t == "ParticipantObjectIdentification"]
    assert participants and participants == list(range(1, source)), tags
    assert objects == list(range(source + 1, len(tags))), tags
    ident = root[0]
    assert ident.get("EventActionCode") in {"C", "R", "U", "D", "E"}
    assert dt.datetime.fromisoformat(ident.get("EventDateTime")).utcoffset() is not None
    assert ident.get("EventOutcomeIndicator") in {"0", "4", "8", "12"}
    assert ident[0].tag == "EventID" and all(codes(ident[0]))
    for code in ident.findall("EventTypeCode"):
        assert all(codes(code))
    requestors = [p for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    assert len(requestors) == 1
    for p in root.findall("ActiveParticipant"):
        assert p.get("UserID") and p.get("UserIsRequestor") in {"true", "false"}
        if p.get("NetworkAccessPointID"):
            assert p.get("NetworkAccessPointTypeCode") in {"1", "2"}
        for role in p.findall("RoleIDCode"):
            assert codes(role)[1] == "DCM" and all(codes(role))
    audit_source = root.find("AuditSourceIdentification")
    assert audit_source.get("AuditSourceID") == "GATEKEEPER"
    assert all(codes(audit_source.find("AuditSourceTypeCode")))
    for obj in root.findall("ParticipantObjectIdentification"):
        assert obj.get("ParticipantObjectID")
        assert obj.get("ParticipantObjectTypeCode") in {"1", "2", "3", "4"}
        assert obj.get("ParticipantObjectTypeCodeRole")
        assert obj[0].tag == "ParticipantObjectIDTypeCode" and all(codes(obj[0]))


def objects(root: ET.Element) -> dict[str, str]:
    """ParticipantObjectID by the meaning of its ID type code."""
    return {codes(o[0])[2]: o.get("ParticipantObjectID") for o in root.findall("ParticipantObjectIdentification")}


def test_every_mapped_action_has_an_example_and_an_expectation():
    assert set(EXAMPLES) == set(EXPECTED) == set(am.MAPPING)


@pytest.mark.parametrize("action", sorted(am.MAPPING))
def test_each_mapped_action_makes_a_well_formed_message_of_its_event(action):
    user, subject, detail = EXAMPLES[action]
    root = message(action, user, subject, "a reason", detail)
    check_shape(root)
    ident = root[0]
    event_id, action_code, outcome = EXPECTED[action]
    assert codes(ident.find("EventID"))[:2] == (event_id, "DCM")
    assert (ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) == (action_code, outcome)
    assert ident.get("EventDateTime") == "2026-12-01T10:15:30.000-05:00"
    # our own action is named too, so that a collector can tell a release from a correction
    assert ("99GATEKEEPER", action) in {codes(c)[1:] for c in ident.findall("EventTypeCode")}
    assert ident.findtext("EventOutcomeDescription") == "a reason"
    requestor = next(p for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true")
    assert requestor.get("UserID") == user
    gatekeeper = next(p for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor") == "false")
    assert (gatekeeper.get("UserID"), gatekeeper.get("NetworkAccessPointID")) == ("GATEKEEPER", "gk1.example.org")
    assert root.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") == "General Hospital"
    assert subject in objects(root).values()


@pytest.mark.parametrize("action, meaning", [
    ("study.released", "Study Instance UID"), ("study.purged", "Study Instance UID"),
    ("order.override", "Accession Number"), ("mpps.complete", "Accession Number"),
    ("auth.unit_used", "Prior Authorization Number"), ("orders.import", "Import Source"),
    ("association.refused", "Node ID"), ("security.alert", "Audit Log Subject"),
])
def test_the_subject_is_identified_by_what_it_is(action, meaning):
    user, subject, detail = EXAMPLES[action]
    assert objects(message(action, user, subject, "", detail))[meaning] == subject


def test_a_study_event_names_the_accession_and_the_patient_id_but_no_name_or_birth_date():
    detail = {"accession_number": "ACC1002", "previous_patient_id": "P7", "patient_name": "DOE^JANE",
              "birth_date": "1970-01-02", "PatientBirthDate": "19700102", "PatientName": "DOE^JANE"}
    root = message("study.corrected", detail=detail)
    text = ET.tostring(root, encoding="unicode")
    found = objects(root)
    assert found["Study Instance UID"] == STUDY and found["Accession Number"] == "ACC1002"
    assert found["Patient Number"] == "P7"
    patient = next(o for o in root.findall("ParticipantObjectIdentification") if o.get("ParticipantObjectID") == "P7")
    assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == ("1", "1")
    assert patient.find("ParticipantObjectName") is None
    for never in ("DOE", "JANE", "1970", "19700102"):
        assert never not in text
    # nor hidden in base64 details
    for d in root.iter("ParticipantObjectDetail"):
        assert "DOE" not in base64.b64decode(d.get("value")).decode()


def test_free_detail_values_are_not_copied_into_the_message():
    root = message("study.released", detail={"accession_number": "ACC1", "note": "SECRET-VALUE", "codes": ["X"]})
    assert "SECRET-VALUE" not in ET.tostring(root, encoding="unicode")


def test_a_refused_association_names_the_caller_its_address_and_what_it_asked():
    user, subject, detail = EXAMPLES["association.refused"]
    root = message("association.refused", user, subject, "unknown calling AE title", detail)
    requestor = root.find("ActiveParticipant")
    assert (requestor.get("UserID"), requestor.get("NetworkAccessPointID"),
            requestor.get("NetworkAccessPointTypeCode")) == ("XR9", "10.9.9.9", "2")
    assert codes(requestor.find("RoleIDCode"))[0] == "110153"
    assert codes(root[0].find("EventTypeCode"))[:2] == ("110126", "DCM")  # Node Authentication
    node = root.find("ParticipantObjectIdentification")
    details = {d.get("type"): base64.b64decode(d.get("value")).decode() for d in node.findall("ParticipantObjectDetail")}
    assert details == {"called_ae": "GATEKEEPER", "service": "worklist"}
    assert node.get("ParticipantObjectTypeCodeRole") == "13"  # security resource


@pytest.mark.parametrize("address, host", [("10.1.2.3", "10.1.2.3"), ("10.1.2.3:4100", "10.1.2.3"),
                                           ("fe80::1", "fe80::1"), ("", None)])
def test_the_callers_address_without_its_port(address, host):
    root = message("operation.refused", "MR1", "MR1", "", {"address": address} if address else {})
    assert root.find("ActiveParticipant").get("NetworkAccessPointID") == host


def test_a_job_is_an_application_and_a_person_has_no_role_code():
    job = message("study.held_too_long", user="job:held_age")
    person = message("study.released", user="tech1")
    assert codes(job.find("ActiveParticipant/RoleIDCode"))[0] == "110150"
    assert person.find("ActiveParticipant").find("RoleIDCode") is None


def test_an_unknown_action_is_application_activity_with_its_subject():
    root = message("something.new", user="admin", subject="thing-1", reason="", detail={"accession_number": "ACC5"})
    check_shape(root)
    assert codes(root[0].find("EventID"))[0] == "110100" and root[0].get("EventActionCode") == "E"
    assert am.kind_of("something.new") is am.DEFAULT
    assert objects(root) == {"Audit Log Subject": "thing-1", "Accession Number": "ACC5"}
    assert root[0].find("EventOutcomeDescription") is None  # no reason, no description


def test_mpps_for_no_known_order_is_identified_by_its_instance_uid():
    root = message("mpps.start", "MR1", SOP, "", {"sop_instance_uid": SOP, "order": None})
    assert objects(root) == {"Audit Log Subject": SOP}


def test_text_that_needs_escaping_stays_well_formed():
    root = message("order.override", user='a<b>&"c', subject="ACC&1", reason="<script>&</script>")
    assert root.find("ActiveParticipant").get("UserID") == 'a<b>&"c'
    assert root[0].findtext("EventOutcomeDescription") == "<script>&</script>"


def test_a_time_without_an_offset_is_written_as_it_is():
    text = am.audit_message(am.EventRecord(1, dt.datetime(2026, 12, 1, 10, 0), "u", "study.released", STUDY),
                            am.Source("GK"))
    root = ET.fromstring(text)
    assert root[0].get("EventDateTime") == "2026-12-01T10:00:00"
    assert root.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") is None


def test_every_action_the_product_records_is_mapped():
    """Actions recorded as literals or constants anywhere in the core are in the table."""
    recorded = {review.AUDIT_RELEASED, review.AUDIT_CORRECTED, review.AUDIT_REJECTED, receiving.AUDIT_REOPENED,
                aging.AUDIT_HELD_TOO_LONG, aging.AUDIT_PURGED, watch.AUDIT_SERVED, watch.AUDIT_WITHHELD,
                *watch.RISK_ACTIONS.values(), *mpps.AUDIT_ACTIONS.values(),
                users.AUDIT_ADDED, review.AUDIT_RECHECKED, users.AUDIT_DISABLED, users.AUDIT_PASSWORD, report.AUDIT_COMPLETED_FROM_IMAGES,
                store_watch.AUDIT_REPORT_OVERDUE, store_watch.AUDIT_FILING_NEAR}
    literal = re.compile(r"audit\.record\(\s*[^,]+,\s*[^,]+,\s*\"([a-z_.]+)\"")
    for package in ("infra", "worklist", "store", "gateway"):
        for path in (ROOT / package).rglob("*.py"):
            recorded |= set(literal.findall(path.read_text()))
    assert recorded - set(am.MAPPING) == set()
    assert {"orders.import", "auths.import", "order.override", "auth.unit_used"} <= recorded
