"""The JSON shapes of the front ends: what ``--json`` prints and what ``/api/`` answers.

One module, so that the command line and the HTTP API never drift apart; the keys are a
stable interface (README.md, "Worklist JSON", "Report JSON", "Review desk and API").
"""

from __future__ import annotations

import datetime as dt

from store.report import as_json as report_json  # the report's shape is the core's own
from store.review import ArchivedStudy, HeldStudy, HeldStudyDetail, ReviewResult
from worklist.gate import Entry, Explanation
from worklist.necessity import NecessityPolicy
from worklist.orders import Auth, Order

__all__ = ["auth_json", "day_json", "decision_json", "held_detail_json", "held_json", "order_json", "report_json",
           "review_json", "studies_json", "why_json"]


def decision_json(order, decision) -> dict:
    """One order's entry in ``worklist --json`` (keys are a stable interface)."""
    return {
        "accession_number": order.accession_number,
        "scheduled_start": order.scheduled_start.isoformat(),
        "station_ae": order.station_ae,
        "modality": order.modality,
        "cpt": order.cpt,
        "payer_id": order.payer_id,
        "status": order.status,
        "served": decision.served,
        "basis": decision.basis,
        "auth_number": decision.auth_number,
        "reasons": [{"code": r.code, "text": r.text} for r in decision.reasons],
        "override": None if decision.override is None else {
            "user": decision.override.user,
            "reason": decision.override.reason,
            "at": decision.override.at.isoformat(),
        },
    }


def day_json(day: dt.date, evaluated_at: dt.datetime, station_ae: str | None, entries: list[Entry]) -> dict:
    """``worklist --json``: one day's orders, served or withheld."""
    return {
        "date": day.isoformat(),
        "evaluated_at": evaluated_at.isoformat(),
        "station_ae": station_ae,
        "orders": [decision_json(e.order, e.decision) for e in entries],
    }


def why_json(found: Explanation) -> dict:
    """``worklist why ACC --json``: the order's decision and every auth on file with what it fails."""
    entry = decision_json(found.order, found.decision)
    entry["auths_on_file"] = [
        {"auth_number": a.auth.auth_number, "problems": [r.code for r in a.problems]}
        for a in found.auths_on_file
    ]
    entry["necessity_policies"] = [policy_json(p) for p in found.necessity]
    return entry


def held_json(study: HeldStudy) -> dict:
    """One held study in ``held list --json`` and ``held show --json``."""
    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "held_since": study.held_since.isoformat(),
        "instance_count": study.instance_count,
        "codes": list(study.codes),
        "reopened": study.reopened,
    }


def held_detail_json(detail: HeldStudyDetail) -> dict:
    """``held show --json``: the study, each finding side by side, and its order."""
    entry = held_json(detail.study)
    entry["received_from"] = list(detail.received_from)
    entry["findings"] = [
        {"code": f.code, "instance_value": f.instance_value, "order_value": f.order_value,
         "holds": f.holds, "instances": f.instances, "message": f.message}
        for f in detail.findings
    ]
    entry["order"] = order_json(detail.order)
    return entry


def order_json(order: Order | None) -> dict | None:
    if order is None:
        return None
    return {
        "accession_number": order.accession_number,
        "status": order.status,
        "patient_id": order.patient_id,
        "patient_name": order.patient_name,
        "birth_date": order.birth_date.isoformat(),
        "sex": order.sex,
        "cpt": order.cpt,
        "description": order.description,
        "modality": order.modality,
        "laterality": order.laterality,
        "scheduled_start": order.scheduled_start.isoformat(),
        "station_ae": order.station_ae,
        "study_instance_uid": order.study_instance_uid,
    }


def studies_json(study: ArchivedStudy) -> dict:
    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "instance_count": study.instance_count,
        "first_received_at": study.first_received_at.isoformat(),
        "last_received_at": study.last_received_at.isoformat(),
        "order": order_json(study.order),
    }


def review_json(result: ReviewResult) -> dict:
    """What a release, correction or rejection did (the API's answer)."""
    return {
        "study_instance_uid": result.study_instance_uid,
        "action": result.action,
        "state": result.state,
        "instances": result.instances,
        "accession_number": result.accession_number,
        "changed": list(result.changed),
        "remaining_codes": list(result.remaining_codes),
    }


def auth_json(auth: Auth) -> dict:
    """One auth, with the keys of an auth import record and ``units_left``."""
    return {
        "auth_number": auth.auth_number,
        "payer_id": auth.payer_id,
        "patient_id": auth.patient_id,
        "cpt_codes": list(auth.cpt_codes),
        "facility_npi": auth.facility_npi,
        "ordering_npi": auth.ordering_npi,
        "valid_from": auth.valid_from.isoformat(),
        "valid_to": auth.valid_to.isoformat(),
        "units": auth.units,
        "units_used": auth.units_used,
        "units_left": auth.units_left,
        "laterality": auth.laterality,
        "body_part": auth.body_part,
        "status": auth.status,
    }



def policy_json(policy: NecessityPolicy) -> dict:
    """One necessity policy in ``policies list --json``, ``GET /api/policies`` and ``worklist why --json``:
    the import shape."""
    return {"payer_id": policy.payer_id, "cpt": list(policy.cpt), "covered_icd10": list(policy.covered_icd10)}
