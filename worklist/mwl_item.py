"""The Modality Worklist item of a served order.

One order is one Requested Procedure with one Scheduled Procedure Step. The item
carries the return keys of PS3.4 Table K.6-1 that IHE Scheduled Workflow
(RAD TF-2 4.5, Query Modality Worklist [RAD-5]) requires a worklist provider to
fill. Keys a console asks for that the item lacks come back empty
(mwl_match.build_response), so the type 2 keys the RIS does not know (Medical
Alerts, Pregnancy Status, ...) are left out here.
"""

from __future__ import annotations

import re

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword

from infra.errors import InvalidInput
from worklist.orders import Order

#: Coding Scheme Designator of CPT-4 (PS3.16 Table 8-1).
CPT_SCHEME = "C4"
#: Coding Scheme Designator of ICD-10-CM (PS3.16 Table 8-1).
ICD10_SCHEME = "I10"
#: Scheduled Procedure Step Status (PS3.3 C.4.10) by order status.
STEP_STATUS = {"scheduled": "SCHEDULED", "in-progress": "STARTED"}
#: How an order's laterality is spelt in descriptions.
LATERALITY_WORDS = {"L": "LEFT", "R": "RIGHT", "B": "BILATERAL"}
#: Attributes of the Scheduled Procedure Step item (Table K.6-1) that may carry the auth.
STEP_LEVEL = frozenset({"ScheduledProcedureStepDescription", "CommentsOnTheScheduledProcedureStep",
                        "ScheduledProcedureStepLocation"})
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})


def _code(value: str, meaning: str, scheme: str) -> Dataset:
    """One item of a code sequence (PS3.3 Table 8.8-1)."""
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code


def describe(order: Order) -> str:
    """The procedure description, with the laterality spelt out when it is not already there.

    The MWL has no laterality attribute (Laterality (0020,0060) is a Series
    attribute, Table K.6-1 has none), yet a wrong side is the error a
    technologist must not make, so the side is put where the console shows it.
    """
    description = order.description or order.cpt
    word = LATERALITY_WORDS.get(order.laterality or "")
    if word and not re.search(rf"\b{word}\b", description, re.IGNORECASE):
        description = f"{description} {word}"
    return description


def check_auth_attribute(keyword: str) -> None:
    """Refuse a ``worklist.auth_attribute`` that cannot show ``AUTH <number>`` (checked at start)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise InvalidInput(f"auth attribute '{keyword}' is not a DICOM keyword; use one such as "
                           "RequestedProcedureComments or CommentsOnTheScheduledProcedureStep")
    if dictionary_VR(tag) not in _TEXT_VRS:
        raise InvalidInput(f"auth attribute '{keyword}' has VR {dictionary_VR(tag)}, which cannot hold "
                           "'AUTH <number>'; choose a text attribute (LO, LT, SH, ST, UC or UT)")


def _put_auth(item: Dataset, step: Dataset, keyword: str, auth_number: str | None) -> None:
    check_auth_attribute(keyword)
    target = step if keyword in STEP_LEVEL else item
    text = f"AUTH {auth_number}" if auth_number else ""
    existing = str(target.get(keyword) or "")
    setattr(target, keyword, f"{existing} {text}".strip() if existing else text)


def build_item(order: Order, auth_number: str | None, *,
               auth_attribute: str = "RequestedProcedureComments") -> Dataset:
    """The worklist item of a served order (PS3.4 Table K.6-1, IHE RAD-5).

    The auth is shown as ``AUTH <number>`` in ``auth_attribute`` (docs/rules.md, rule 1),
    a pydicom keyword, top level or in the step item for step attributes; the
    attribute is present and empty when ``auth_number`` is None. If it already
    holds text (a description), the auth is appended to it.

    Requested Procedure ID and Scheduled Procedure Step ID default to the
    accession number. The Study Instance UID is the order's: service.import_orders
    gives every stored order one, so the modality uses it and the archive can
    reconcile on it.
    """
    description = describe(order)
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 192"
    item.AccessionNumber = order.accession_number
    item.ReferringPhysicianName = order.ordering_name
    item.PatientName = order.patient_name
    item.PatientID = order.patient_id
    item.IssuerOfPatientID = order.patient_issuer
    item.PatientBirthDate = order.birth_date.strftime("%Y%m%d")
    item.PatientSex = order.sex
    if order.body_part:
        item.BodyPartExamined = order.body_part
    item.StudyInstanceUID = order.study_instance_uid
    item.RequestingPhysician = order.ordering_name
    item.AdmissionID = ""

    step = Dataset()
    step.Modality = order.modality
    step.ScheduledStationAETitle = order.station_ae
    step.ScheduledProcedureStepStartDate = order.scheduled_start.strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = order.scheduled_start.strftime("%H%M%S")
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepDescription = description
    step.ScheduledProtocolCodeSequence = [_code(order.cpt, order.description or order.cpt, CPT_SCHEME)]
    step.ScheduledProcedureStepID = order.scheduled_procedure_step_id or order.accession_number
    step.ScheduledStationName = order.station_name
    step.ScheduledProcedureStepLocation = order.location
    step.ScheduledProcedureStepStatus = STEP_STATUS.get(order.status, "SCHEDULED")

    item.RequestedProcedureID = order.requested_procedure_id or order.accession_number
    item.RequestedProcedureDescription = description
    item.RequestedProcedureCodeSequence = [_code(order.cpt, order.description or order.cpt, CPT_SCHEME)]
    if order.diagnoses:
        item.ReasonForTheRequestedProcedure = ", ".join(order.diagnoses)
        item.ReasonForRequestedProcedureCodeSequence = [
            _code(code, code, ICD10_SCHEME) for code in order.diagnoses
        ]
    _put_auth(item, step, auth_attribute, auth_number)
    item.ScheduledProcedureStepSequence = [step]
    return item
