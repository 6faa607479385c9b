"""Peewee models for orders, auths, overrides and MPPS steps.

Rows convert to and from the plain types of :mod:`worklist.orders`; rules never see a
row. Only :mod:`worklist.records` queries them.
"""

from __future__ import annotations

from typing import Any, Mapping

import peewee as pw

from infra.db import BaseModel
from worklist.necessity import NecessityPolicy
from worklist.orders import Auth, Order, Override


class OrderRow(BaseModel):
    accession_number = pw.CharField(max_length=16, unique=True)
    status = pw.CharField(max_length=16, default="scheduled", index=True)
    patient_id = pw.CharField(max_length=64, index=True)
    patient_issuer = pw.CharField(default="")
    patient_name = pw.CharField(default="")
    birth_date = pw.DateField()
    sex = pw.CharField(max_length=1, default="")
    cpt = pw.CharField(max_length=5)
    description = pw.CharField(default="")
    modality = pw.CharField(max_length=16)
    body_part = pw.CharField(default="")
    laterality = pw.CharField(max_length=1, null=True)
    scheduled_start = pw.DateTimeField(index=True)
    station_ae = pw.CharField(max_length=16)
    station_name = pw.CharField(default="")
    location = pw.CharField(default="")
    ordering_npi = pw.CharField(max_length=10)
    ordering_name = pw.CharField(default="")
    facility_npi = pw.CharField(max_length=10)
    payer_id = pw.CharField(index=True)
    member_id = pw.CharField(default="")
    plan_type = pw.CharField(default="")
    diagnoses = pw.TextField(default="")  # ICD-10 codes joined by ';'
    study_instance_uid = pw.CharField(max_length=64, index=True)
    requested_procedure_id = pw.CharField(max_length=16, default="", index=True)
    scheduled_procedure_step_id = pw.CharField(max_length=16, default="")
    # The auth whose unit this order used when its MPPS completed (used once per order).
    auth_unit_used = pw.CharField(null=True)
    report_status = pw.CharField(max_length=16, default="")
    report_status_at = pw.DateTimeField(null=True)
    # Last decision recorded by the re-evaluation job: "served" or "withheld", with codes.
    last_decision = pw.CharField(max_length=8, null=True)
    last_reasons = pw.CharField(default="")
    imported_at = pw.DateTimeField()
    updated_at = pw.DateTimeField()

    class Meta:
        table_name = "orders"
        indexes = (
            (("station_ae", "scheduled_start"), False),
            (("modality", "scheduled_start"), False),
        )

    def to_order(self) -> Order:
        return self.order_of({name: getattr(self, name) for name in self._meta.fields})

    @staticmethod
    def order_of(row: Mapping[str, Any]) -> Order:
        """The order of a row's column values (a model's, or a ``.dicts()`` query's: no model is built)."""
        return Order(
            accession_number=row["accession_number"],
            status=row["status"],
            patient_id=row["patient_id"],
            patient_issuer=row["patient_issuer"],
            patient_name=row["patient_name"],
            birth_date=row["birth_date"],
            sex=row["sex"],
            cpt=row["cpt"],
            description=row["description"],
            modality=row["modality"],
            body_part=row["body_part"],
            laterality=row["laterality"],
            scheduled_start=row["scheduled_start"],
            station_ae=row["station_ae"],
            station_name=row["station_name"],
            location=row["location"],
            ordering_npi=row["ordering_npi"],
            ordering_name=row["ordering_name"],
            facility_npi=row["facility_npi"],
            payer_id=row["payer_id"],
            member_id=row["member_id"],
            plan_type=row["plan_type"],
            diagnoses=tuple(d for d in (row["diagnoses"] or "").split(";") if d),
            study_instance_uid=row["study_instance_uid"],
            requested_procedure_id=row["requested_procedure_id"],
            scheduled_procedure_step_id=row["scheduled_procedure_step_id"],
            auth_unit_used=row["auth_unit_used"] or None,
            report_status=row["report_status"] or "",
            report_status_at=row["report_status_at"],
        )


def order_columns(order: Order) -> dict:
    """Column values of an order row as imported (without timestamps and bookkeeping:
    ``auth_unit_used`` is MPPS's to set, never an import's)."""
    return {
        "accession_number": order.accession_number,
        "status": order.status,
        "patient_id": order.patient_id,
        "patient_issuer": order.patient_issuer,
        "patient_name": order.patient_name,
        "birth_date": order.birth_date,
        "sex": order.sex,
        "cpt": order.cpt,
        "description": order.description,
        "modality": order.modality,
        "body_part": order.body_part,
        "laterality": order.laterality,
        "scheduled_start": order.scheduled_start,
        "station_ae": order.station_ae,
        "station_name": order.station_name,
        "location": order.location,
        "ordering_npi": order.ordering_npi,
        "ordering_name": order.ordering_name,
        "facility_npi": order.facility_npi,
        "payer_id": order.payer_id,
        "member_id": order.member_id,
        "plan_type": order.plan_type,
        "diagnoses": ";".join(order.diagnoses),
        "study_instance_uid": order.study_instance_uid,
        "requested_procedure_id": order.requested_procedure_id,
        "scheduled_procedure_step_id": order.scheduled_procedure_step_id,
    }


class AuthRow(BaseModel):
    auth_number = pw.CharField(unique=True)
    payer_id = pw.CharField()
    patient_id = pw.CharField(max_length=64, index=True)
    cpt_codes = pw.CharField()  # joined by ';'
    facility_npi = pw.CharField(max_length=10)
    ordering_npi = pw.CharField(max_length=10)
    valid_from = pw.DateField()
    valid_to = pw.DateField(index=True)
    units = pw.IntegerField(default=1)
    units_used = pw.IntegerField(default=0)
    laterality = pw.CharField(max_length=1, null=True)
    body_part = pw.CharField(default="")
    status = pw.CharField(max_length=16, default="approved")
    imported_at = pw.DateTimeField()
    updated_at = pw.DateTimeField()

    class Meta:
        table_name = "auths"

    def to_auth(self) -> Auth:
        return self.auth_of({name: getattr(self, name) for name in self._meta.fields})

    @staticmethod
    def auth_of(row: Mapping[str, Any]) -> Auth:
        """The auth of a row's column values (a model's, or a ``.dicts()`` query's)."""
        return Auth(
            auth_number=row["auth_number"],
            payer_id=row["payer_id"],
            patient_id=row["patient_id"],
            cpt_codes=tuple(c for c in row["cpt_codes"].split(";") if c),
            facility_npi=row["facility_npi"],
            ordering_npi=row["ordering_npi"],
            valid_from=row["valid_from"],
            valid_to=row["valid_to"],
            units=row["units"],
            units_used=row["units_used"],
            laterality=row["laterality"],
            body_part=row["body_part"],
            status=row["status"],
        )


def auth_columns(auth: Auth) -> dict:
    return {
        "auth_number": auth.auth_number,
        "payer_id": auth.payer_id,
        "patient_id": auth.patient_id,
        "cpt_codes": ";".join(auth.cpt_codes),
        "facility_npi": auth.facility_npi,
        "ordering_npi": auth.ordering_npi,
        "valid_from": auth.valid_from,
        "valid_to": auth.valid_to,
        "units": auth.units,
        "units_used": auth.units_used,
        "laterality": auth.laterality,
        "body_part": auth.body_part,
        "status": auth.status,
    }


class OverrideRow(BaseModel):
    accession_number = pw.CharField(max_length=16, index=True)
    user = pw.CharField()
    reason = pw.TextField()
    at = pw.DateTimeField()

    class Meta:
        table_name = "overrides"

    def to_override(self) -> Override:
        return Override(self.accession_number, self.user, self.reason, self.at)


class MppsRow(BaseModel):
    """One Modality Performed Procedure Step (PS3.4 F.7) as last reported."""

    sop_instance_uid = pw.CharField(max_length=64, unique=True)
    accession_number = pw.CharField(max_length=16, null=True, index=True)
    status = pw.CharField(max_length=16)  # IN PROGRESS, COMPLETED, DISCONTINUED
    calling_ae = pw.CharField(default="")
    performed_series = pw.TextField(default="[]")  # JSON list of series/instance references
    discontinuation_reason = pw.CharField(default="")
    created_at = pw.DateTimeField()
    updated_at = pw.DateTimeField()

    class Meta:
        table_name = "mpps"


class NecessityRow(BaseModel):
    """One medical necessity policy (rule 7): a payer, CPT codes and ranges, covering ICD-10 prefixes."""

    payer_id = pw.CharField(index=True)
    cpt = pw.TextField()  # entries joined by ';' ("70551-70553;70540")
    covered_icd10 = pw.TextField()  # prefixes joined by ';'
    imported_at = pw.DateTimeField()

    class Meta:
        table_name = "necessity_policies"

    def to_policy(self) -> NecessityPolicy:
        return NecessityPolicy(self.payer_id, tuple(c for c in self.cpt.split(";") if c),
                               tuple(c for c in self.covered_icd10.split(";") if c))



class FeedAnswerRow(BaseModel):
    """The answer given to one message of the RIS feed, by sender and control ID (HL7 MSH-3,
    MSH-4, MSH-10): a message sent again gets this answer again and changes nothing."""

    sending_application = pw.CharField(max_length=227)
    sending_facility = pw.CharField(max_length=227)
    control_id = pw.CharField(max_length=199)
    message_type = pw.CharField(max_length=16)
    code = pw.CharField(max_length=2)  # AA, AE or AR
    answer = pw.TextField()
    received_at = pw.DateTimeField(index=True)

    class Meta:
        table_name = "feed_answers"
        indexes = ((("sending_application", "sending_facility", "control_id"), True),)



MODELS = [OrderRow, AuthRow, OverrideRow, MppsRow, NecessityRow, FeedAnswerRow]
