"""DICOM Audit Messages (PS3.15 A.5, the RFC 3881-derived XML) from audit log events.

Pure: :func:`audit_message` turns one plain :class:`EventRecord` into the XML text, with
no database, clock or network. :data:`MAPPING` says, for each action of the audit log,
which DICOM audit event it is (EventID from DCM, CID 400), its EventActionCode, its
EventTypeCode (when one fits), its outcome, and what its subject is (a study, an order's
accession number, an auth, an import source, a network node); an action not in the table
is sent as :data:`DEFAULT` (Application Activity, action "E").

What a message carries about a patient: the Patient ID, when the event's detail has one
(PS3.15 A.5.3: the patient is identified by ID). Never a patient name nor a birth date:
:data:`NEVER_SENT` detail keys are dropped even when present, and free detail values are
not copied into the message (only the identifiers named in :data:`IDENTIFIER_KEYS`). The
event's reason is sent as EventOutcomeDescription, as typed.
"""

from __future__ import annotations

import base64
import datetime as dt
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Mapping

# ---------------------------------------------------------------- codes (PS3.16 DCM, RFC 3881)


@dataclass(frozen=True)
class Code:
    """A coded value: code, coding scheme, meaning (``csd-code``, ``codeSystemName``, ``originalText``)."""

    code: str
    scheme: str
    meaning: str


def dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


APPLICATION_ACTIVITY = dcm("110100", "Application Activity")
AUDIT_LOG_USED = dcm("110101", "Audit Log Used")
INSTANCES_ACCESSED = dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = dcm("110105", "DICOM Study Deleted")
EXPORT = dcm("110106", "Export")
IMPORT = dcm("110107", "Import")
ORDER_RECORD = dcm("110109", "Order Record")
PATIENT_RECORD = dcm("110110", "Patient Record")
PROCEDURE_RECORD = dcm("110111", "Procedure Record")
QUERY = dcm("110112", "Query")
SECURITY_ALERT = dcm("110113", "Security Alert")
USER_AUTHENTICATION = dcm("110114", "User Authentication")

# EventTypeCode (CID 401 Audit Event Type Code)
NODE_AUTHENTICATION = dcm("110126", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = dcm("110127", "Emergency Override Started")
USE_OF_RESTRICTED_FUNCTION = dcm("110132", "Use of Restricted Function")
SECURITY_ROLES_CHANGED = dcm("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = dcm("110137", "User Security Attributes Changed")

# RoleIDCode (CID 402 Audit Active Participant Role ID Code)
ROLE_APPLICATION = dcm("110150", "Application")
ROLE_SOURCE = dcm("110153", "Source Role ID")
ROLE_DESTINATION = dcm("110152", "Destination Role ID")

# ParticipantObjectIDTypeCode
STUDY_UID = dcm("110180", "Study Instance UID")
SOP_CLASS_UID = dcm("110181", "SOP Class UID")
NODE_ID = dcm("110182", "Node ID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
ACCESSION = Code("ACSN", "HL7", "Accession Number")  # HL7 v2 table 0203 identifier type
#: Identifiers that have no code in DCM, RFC 3881 or HL7: a local scheme, named as HL7 names them (99...).
AUTH_NUMBER = Code("AUTH", "99GATEKEEPER", "Prior Authorization Number")
IMPORT_SOURCE = Code("SOURCE", "99GATEKEEPER", "Import Source")
LOG_SUBJECT = Code("SUBJECT", "99GATEKEEPER", "Audit Log Subject")

#: AuditSourceTypeCode 4: application server process tier in a multi-tier system (RFC 3881 5.4.1).
SOURCE_TYPE = Code("4", "DCM", "Application Server")

# EventOutcomeIndicator (RFC 3881 5.1.4)
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"

# ParticipantObjectTypeCode and ParticipantObjectTypeCodeRole (RFC 3881 5.5.1, 5.5.2)
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_MASTER_FILE, ROLE_SECURITY_RESOURCE = "1", "3", "5", "13"

# What an event's subject is.
STUDY, ORDER, AUTH, SOURCE, NODE, OTHER = "study", "order", "auth", "source", "node", "other"


@dataclass(frozen=True)
class EventKind:
    """How one action of the audit log is told in DICOM terms."""

    event_id: Code
    action_code: str  # C create, R read, U update, D delete, E execute
    subject: str  # STUDY, ORDER, AUTH, SOURCE, NODE or OTHER
    outcome: str = SUCCESS
    event_type: Code | None = None


#: Every action of the audit log, as a DICOM audit event.
MAPPING: dict[str, EventKind] = {
    # the store: human review, housekeeping jobs, an instance that reopens a study
    "study.released": EventKind(INSTANCES_ACCESSED, "U", STUDY),
    "study.corrected": EventKind(INSTANCES_ACCESSED, "U", STUDY),
    "study.rejected": EventKind(INSTANCES_ACCESSED, "D", STUDY),
    "study.reopened": EventKind(INSTANCES_TRANSFERRED, "C", STUDY),
    "study.held_too_long": EventKind(APPLICATION_ACTIVITY, "E", STUDY),
    "study.purged": EventKind(STUDY_DELETED, "D", STUDY),
    # orders: imports, the audited override, the worklist's re-evaluation and warnings
    "orders.import": EventKind(IMPORT, "C", SOURCE),
    "auths.import": EventKind(IMPORT, "C", SOURCE),
    "order.override": EventKind(ORDER_RECORD, "U", ORDER, event_type=EMERGENCY_OVERRIDE_STARTED),
    "worklist.served": EventKind(ORDER_RECORD, "U", ORDER),
    "worklist.withheld": EventKind(ORDER_RECORD, "U", ORDER),
    "order.auth_will_expire": EventKind(ORDER_RECORD, "R", ORDER),
    "order.auth_units_short": EventKind(ORDER_RECORD, "R", ORDER),
    "auth.unit_used": EventKind(ORDER_RECORD, "U", AUTH),
    # rule 7: necessity policies, orders completed from their images, reports and filing deadlines
    "policies.import": EventKind(IMPORT, "C", SOURCE),
    "order.completed_from_images": EventKind(PROCEDURE_RECORD, "U", ORDER),
    "study.report_overdue": EventKind(APPLICATION_ACTIVITY, "E", STUDY),
    "order.filing_deadline_near": EventKind(ORDER_RECORD, "R", ORDER),
    # the RIS feed (HL7 v2): orders, report status, patient updates and merges; a recheck after one
    "order.feed": EventKind(ORDER_RECORD, "U", ORDER),
    "order.report_status": EventKind(ORDER_RECORD, "U", ORDER),
    "order.patient_update": EventKind(PATIENT_RECORD, "U", ORDER),
    "order.patient_merge": EventKind(PATIENT_RECORD, "U", ORDER),
    "study.rechecked": EventKind(INSTANCES_ACCESSED, "U", STUDY),
    # the users of the review desk and the API
    "user.added": EventKind(SECURITY_ALERT, "C", OTHER, event_type=SECURITY_ROLES_CHANGED),
    "user.disabled": EventKind(SECURITY_ALERT, "U", OTHER, event_type=SECURITY_ROLES_CHANGED),
    "user.password_changed": EventKind(SECURITY_ALERT, "U", OTHER, event_type=USER_SECURITY_ATTRIBUTES_CHANGED),
    # MPPS from the modalities
    "mpps.start": EventKind(PROCEDURE_RECORD, "C", ORDER),
    "mpps.complete": EventKind(PROCEDURE_RECORD, "U", ORDER),
    "mpps.discontinue": EventKind(PROCEDURE_RECORD, "U", ORDER),
    # who may talk to the gate: refusals and security alerts
    "association.refused": EventKind(SECURITY_ALERT, "E", NODE, MINOR_FAILURE, NODE_AUTHENTICATION),
    "operation.refused": EventKind(SECURITY_ALERT, "E", NODE, MINOR_FAILURE, USE_OF_RESTRICTED_FUNCTION),
    "security.alert": EventKind(SECURITY_ALERT, "E", OTHER, MINOR_FAILURE),
}

#: An action not in :data:`MAPPING`.
DEFAULT = EventKind(APPLICATION_ACTIVITY, "E", OTHER)

#: The only detail keys a message uses: identifiers of participants and objects. Every other
#: detail value (codes, counts, free text) stays in the local log.
IDENTIFIER_KEYS = ("accession_number", "patient_id", "previous_patient_id", "sop_instance_uid", "address",
                   "called_ae", "service")
#: Detail keys never sent, whatever an event carries.
NEVER_SENT = frozenset({"patient_name", "birth_date", "patient_birth_date", "PatientName", "PatientBirthDate"})
#: Users that are the gatekeeper's own jobs (``job:NAME``), an application rather than a person.
JOB_PREFIX = "job:"


@dataclass(frozen=True)
class EventRecord:
    """One audit log event, as plain data (``at`` with its UTC offset)."""

    id: int
    at: dt.datetime
    user: str
    action: str
    subject: str
    reason: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """Who reports: the gatekeeper (AuditSourceID, its host, the enterprise site)."""

    source_id: str  # server.ae_title
    host: str = ""  # this machine's name (NetworkAccessPointID of the gatekeeper)
    site: str = ""  # AuditEnterpriseSiteID; empty leaves it out


def kind_of(action: str) -> EventKind:
    """The DICOM audit event of an action (:data:`DEFAULT` when the action is not mapped)."""
    return MAPPING.get(action, DEFAULT)


def audit_message(event: EventRecord, source: Source) -> str:
    """The PS3.15 A.5 AuditMessage of ``event``, as XML text (no declaration; UTF-8 when encoded)."""
    kind = kind_of(event.action)
    detail = {k: event.detail[k] for k in IDENTIFIER_KEYS if k in event.detail and k not in NEVER_SENT}
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": kind.action_code,
        "EventDateTime": _datetime(event.at),
        "EventOutcomeIndicator": kind.outcome,
    })
    _code(ident, "EventID", kind.event_id)
    if kind.event_type is not None:
        _code(ident, "EventTypeCode", kind.event_type)
    _code(ident, "EventTypeCode", Code(event.action, "99GATEKEEPER", event.action))
    if event.reason:
        ET.SubElement(ident, "EventOutcomeDescription").text = event.reason
    _requestor(root, event, kind, detail)
    _gatekeeper(root, source, kind)
    audit_source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source.source_id})
    if source.site:
        audit_source.set("AuditEnterpriseSiteID", source.site)
    _code(audit_source, "AuditSourceTypeCode", SOURCE_TYPE)
    for object_attrs, id_type, details in _objects(event, kind, detail):
        obj = ET.SubElement(root, "ParticipantObjectIdentification", object_attrs)
        _code(obj, "ParticipantObjectIDTypeCode", id_type)
        for name, value in details:
            ET.SubElement(obj, "ParticipantObjectDetail", {"type": name, "value": _base64(value)})
    return ET.tostring(root, encoding="unicode")


def _requestor(root: ET.Element, event: EventRecord, kind: EventKind, detail: Mapping[str, Any]) -> None:
    attrs = {"UserID": event.user or "unknown", "UserIsRequestor": "true"}
    address = _host_of(_text(detail.get("address")))
    if address:
        attrs.update(NetworkAccessPointID=address, NetworkAccessPointTypeCode="2")  # 2: IP address
    participant = ET.SubElement(root, "ActiveParticipant", attrs)
    if event.user.startswith(JOB_PREFIX):
        _code(participant, "RoleIDCode", ROLE_APPLICATION)
    elif kind.subject == NODE or event.action.startswith(("mpps.", "study.reopened")):
        _code(participant, "RoleIDCode", ROLE_SOURCE)  # a modality sending to the gatekeeper


def _gatekeeper(root: ET.Element, source: Source, kind: EventKind) -> None:
    attrs = {"UserID": source.source_id, "UserIsRequestor": "false"}
    if source.host:
        attrs.update(NetworkAccessPointID=source.host, NetworkAccessPointTypeCode="1")  # 1: machine name
    participant = ET.SubElement(root, "ActiveParticipant", attrs)
    _code(participant, "RoleIDCode", ROLE_DESTINATION if kind.subject == NODE else ROLE_APPLICATION)


def _objects(event: EventRecord, kind: EventKind, detail: Mapping[str, Any]):
    """(attributes, ParticipantObjectIDTypeCode, details) of each participant object."""
    subject = event.subject
    accession = _text(detail.get("accession_number"))
    sop = _text(detail.get("sop_instance_uid"))
    if kind.subject == STUDY:
        yield _object(subject, SYSTEM_OBJECT, ROLE_REPORT), STUDY_UID, []
        if accession:
            yield _object(accession, SYSTEM_OBJECT, ROLE_REPORT), ACCESSION, []
    elif kind.subject == ORDER:
        details = [("SOPInstanceUID", sop)] if sop and sop != subject else []
        if subject == sop:  # MPPS for no known order: its subject is the MPPS SOP Instance UID
            yield _object(subject, SYSTEM_OBJECT, ROLE_REPORT), LOG_SUBJECT, [("SOPInstanceUID", sop)]
        else:
            yield _object(subject, SYSTEM_OBJECT, ROLE_REPORT), ACCESSION, details
    elif kind.subject == AUTH:
        yield _object(subject, SYSTEM_OBJECT, ROLE_MASTER_FILE), AUTH_NUMBER, []
        if accession:
            yield _object(accession, SYSTEM_OBJECT, ROLE_REPORT), ACCESSION, []
    elif kind.subject == SOURCE:
        yield _object(subject, SYSTEM_OBJECT, ROLE_MASTER_FILE), IMPORT_SOURCE, []
    elif kind.subject == NODE:
        details = [(name, _text(detail.get(name))) for name in ("called_ae", "service") if detail.get(name)]
        yield _object(subject, SYSTEM_OBJECT, ROLE_SECURITY_RESOURCE), NODE_ID, details
    elif subject:
        yield _object(subject, SYSTEM_OBJECT, ROLE_REPORT), LOG_SUBJECT, []
    if kind.subject not in (STUDY, ORDER, AUTH) and accession:
        yield _object(accession, SYSTEM_OBJECT, ROLE_REPORT), ACCESSION, []
    for key in ("patient_id", "previous_patient_id"):
        patient = _text(detail.get(key))
        if patient:
            yield _object(patient, PERSON, ROLE_PATIENT), PATIENT_NUMBER, []


def _object(identifier: str, type_code: str, role: str) -> dict[str, str]:
    return {"ParticipantObjectID": identifier, "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role}


def _code(parent: ET.Element, name: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, name, {"csd-code": code.code, "codeSystemName": code.scheme,
                                        "originalText": code.meaning})


def _datetime(at: dt.datetime) -> str:
    """xs:dateTime with the UTC offset when ``at`` has one (RFC 3881 5.1.3)."""
    return at.isoformat(timespec="seconds") if at.tzinfo is None else at.isoformat(timespec="milliseconds")


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _host_of(address: str) -> str:
    """``10.1.2.3`` of ``10.1.2.3`` or ``10.1.2.3:4100`` (an IPv6 address is kept whole)."""
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def _base64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")
