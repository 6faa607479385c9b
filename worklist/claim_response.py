"""A Da Vinci PAS (Prior Authorization Support, HL7 FHIR R4) ``ClaimResponse`` as an auth.

Pure: JSON in, an auth record out (the shape of an ``auths import`` record,
examples/README.md), which then goes through the same checks as any imported auth
(:func:`worklist.intake.auth_from_record`: CPT codes, NPI check digits, dates, units).

What is read (PAS IG 2.x, profile ``profile-claimresponse``):

| auth field | from |
|---|---|
| ``auth_number`` | ``preAuthRef`` |
| ``payer_id`` | ``insurer.identifier.value`` |
| ``patient_id`` | ``patient.identifier.value``, else the id of ``patient.reference`` (``Patient/ID``) |
| ``cpt_codes`` | ``item[].productOrService`` and ``addItem[].productOrService`` codings of CPT (``http://www.ama-assn.org/go/cpt``, or no system) |
| ``valid_from``, ``valid_to`` | ``preAuthPeriod.start``/``end``, else the first item's ``extension-itemPreAuthPeriod`` |
| ``ordering_npi`` | ``requestor.identifier`` of system ``http://hl7.org/fhir/sid/us-npi`` |
| ``facility_npi`` | ``addItem[].locationReference.identifier`` (NPI), else ``facility`` extension |
| ``units`` | the items' ``quantity.value`` (largest), else 1 |
| ``status`` | ``status = cancelled``: cancelled; else the items' review action (X12 306, ``extension-reviewAction``) or adjudication category: A1, A2, A6 or ``approved`` approve; A3 or ``denied`` deny; A4 or ``pended``, or ``outcome = queued``, is pended |

Missing NPIs may be given by the caller (``defaults``), since many payers' responses
carry only the requesting provider.
"""

from __future__ import annotations

from typing import Any

from worklist.intake import IntakeError, Problem, auths_from_records
from worklist.orders import Auth

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
CPT_SYSTEMS = ("http://www.ama-assn.org/go/cpt", "urn:oid:2.16.840.1.113883.6.12", None, "")
REVIEW_ACTION = "extension-reviewAction"
ITEM_PERIOD = "extension-itemPreAuthPeriod"
APPROVE = {"A1": "approved", "A2": "approved", "A6": "approved", "approved": "approved",
           "A3": "denied", "denied": "denied", "A4": "pended", "pended": "pended", "pending": "pended",
           "C": "cancelled"}


class NotClaimResponse(ValueError):
    """The resource is not a ClaimResponse the gatekeeper can read; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def is_claim_response(value: Any) -> bool:
    """A ClaimResponse, or a Bundle whose first entry is one (PAS answers with a Bundle)."""
    return isinstance(value, dict) and (value.get("resourceType") == "ClaimResponse" or (
        value.get("resourceType") == "Bundle" and any(
            isinstance(e, dict) and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == "ClaimResponse" for e in value.get("entry") or ())))


def claim_responses(value: dict) -> list[dict]:
    """The ClaimResponse resources of a resource or a Bundle."""
    if value.get("resourceType") == "ClaimResponse":
        return [value]
    return [e["resource"] for e in value.get("entry") or () if isinstance(e, dict) and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == "ClaimResponse"]


def _identifier(ref: Any, system: str | None = None) -> str:
    if not isinstance(ref, dict):
        return ""
    ident = ref.get("identifier")
    idents = ident if isinstance(ident, list) else [ident]
    for i in idents:
        if isinstance(i, dict) and isinstance(i.get("value"), str) and (system is None or i.get("system") == system):
            return i["value"].strip()
    return ""


def _extensions(node: Any, suffix: str) -> list[dict]:
    return [e for e in (node.get("extension") or ()) if isinstance(e, dict) and str(e.get("url", "")).endswith(suffix)] \
        if isinstance(node, dict) else []


def _codes(items: list, field: str) -> list[str]:
    codes = []
    for i, item in enumerate(items):
        concept = item.get("productOrService") if isinstance(item, dict) else None
        for coding in (concept or {}).get("coding") or () if isinstance(concept, dict) else ():
            if isinstance(coding, dict) and coding.get("system") in CPT_SYSTEMS and coding.get("code"):
                codes.append(coding["code"])
    return codes


def _review(item: dict) -> str | None:
    for ext in _extensions(item, REVIEW_ACTION):
        for sub in ext.get("extension") or ():
            concept = sub.get("valueCodeableConcept") if isinstance(sub, dict) else None
            for coding in (concept or {}).get("coding") or ():
                if coding.get("code") in APPROVE:
                    return APPROVE[coding["code"]]
    for adj in item.get("adjudication") or ():
        for coding in ((adj or {}).get("category") or {}).get("coding") or ():
            if coding.get("code") in APPROVE:
                return APPROVE[coding["code"]]
    return None


def _status(resource: dict, items: list[dict]) -> str:
    if resource.get("status") == "cancelled":
        return "cancelled"
    found = [s for s in (_review(i) for i in items) if s]
    for worst in ("denied", "cancelled", "pended"):
        if worst in found:
            return worst
    if found:
        return "approved"
    if resource.get("outcome") == "queued":
        return "pended"
    raise NotClaimResponse("item.adjudication", "no item carries a review action or an adjudication category, so "
                           "the decision is unknown; send the payer's final ClaimResponse")


def _period(resource: dict, items: list[dict]) -> tuple[Any, Any]:
    period = resource.get("preAuthPeriod")
    if not isinstance(period, dict):
        for item in items:
            for ext in _extensions(item, ITEM_PERIOD):
                period = ext.get("valuePeriod")
                break
            if period:
                break
    if not isinstance(period, dict) or not period.get("start") or not period.get("end"):
        raise NotClaimResponse("preAuthPeriod", "needs start and end (the days the auth is valid)")
    return str(period["start"])[:10], str(period["end"])[:10]


def auth_record(resource: dict, defaults: dict | None = None) -> dict:
    """The auth record (as ``auths import`` reads it) of one ClaimResponse; raises :class:`NotClaimResponse`."""
    defaults = defaults or {}
    if not isinstance(resource, dict) or resource.get("resourceType") != "ClaimResponse":
        raise NotClaimResponse("resourceType", "must be ClaimResponse")
    if resource.get("use") not in (None, "preauthorization"):
        raise NotClaimResponse("use", f"is {resource.get('use')!r}; a prior authorization has use = preauthorization")
    ref = resource.get("preAuthRef")
    if not isinstance(ref, str) or not ref.strip():
        raise NotClaimResponse("preAuthRef", "is missing: without it there is no auth number to match orders by")
    items = [i for i in (resource.get("item") or []) if isinstance(i, dict)]
    added = [i for i in (resource.get("addItem") or []) if isinstance(i, dict)]
    patient = _identifier(resource.get("patient"))
    if not patient:
        reference = str((resource.get("patient") or {}).get("reference") or "")
        patient = reference.split("/", 1)[1] if reference.startswith("Patient/") else ""
    start, end = _period(resource, items)
    facility = next((_identifier(a.get("locationReference"), NPI_SYSTEM) for a in added
                     if _identifier(a.get("locationReference"), NPI_SYSTEM)), "")
    if not facility:
        facility = next((str(e.get("valueIdentifier", {}).get("value", "")) for e in _extensions(resource, "facility")), "")
    quantities = [q for q in ((i.get("quantity") or {}).get("value") for i in items + added) if isinstance(q, int)]
    return {
        "auth_number": ref.strip(),
        "payer_id": _identifier(resource.get("insurer")) or defaults.get("payer_id", ""),
        "patient_id": patient,
        "cpt_codes": _codes(items, "item") + _codes(added, "addItem"),
        "facility_npi": facility or defaults.get("facility_npi", ""),
        "ordering_npi": _identifier(resource.get("requestor"), NPI_SYSTEM) or defaults.get("ordering_npi", ""),
        "valid_from": start,
        "valid_to": end,
        "units": max(quantities) if quantities else 1,
        "status": _status(resource, items + added),
    }


def parse_claim_responses(value: Any, source: str = "ClaimResponse", defaults: dict | None = None) -> list[Auth]:
    """Every ClaimResponse of a resource or Bundle as a checked auth, or :class:`IntakeError` naming each problem."""
    found = claim_responses(value) if is_claim_response(value) else []
    if not found:
        raise IntakeError(source, [Problem(None, 1, "resourceType", "is not a ClaimResponse, nor a Bundle holding one")])
    records, problems = [], []
    for number, resource in enumerate(found, start=1):
        try:
            records.append(auth_record(resource, defaults))
        except NotClaimResponse as bad:
            problems.append(Problem(number, 1, bad.field, bad.message))
    if problems:
        raise IntakeError(source, problems)
    return auths_from_records(records, source)
