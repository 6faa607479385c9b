"""Plain domain types for RIS orders and payer authorizations.

These are the shapes every rule in the project works on. They carry no database
or DICOM machinery: the peewee models in ``worklist.models`` convert to and from
them, and :mod:`worklist.intake` builds them from the JSON shapes described in
``examples/README.md``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

#: Order statuses (docs/rules.md, "Words").
ORDER_STATUSES = ("scheduled", "in-progress", "completed", "cancelled", "discontinued")
#: Report statuses the RIS sends (HL7 ORU, OBR-25): none yet, preliminary, final, corrected.
REPORT_STATUSES = ("", "preliminary", "final", "corrected")
#: Statuses under which an order may appear on the worklist (docs/rules.md, rule 1).
WORKABLE_STATUSES = ("scheduled", "in-progress")
#: Authorization statuses (auth.schema.json).
AUTH_STATUSES = ("approved", "pended", "denied", "cancelled")
#: Laterality values used by orders and auths: left, right, bilateral.
LATERALITIES = ("L", "R", "B")


@dataclass(frozen=True)
class Order:
    """One RIS requested procedure with one scheduled procedure step.

    Person names are kept in DICOM PN form (``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX``).
    ``scheduled_start`` is local time without an offset, as the RIS sends it.
    """

    accession_number: str
    patient_id: str
    patient_name: str
    birth_date: dt.date
    cpt: str
    modality: str
    scheduled_start: dt.datetime
    station_ae: str
    ordering_npi: str
    facility_npi: str
    payer_id: str
    status: str = "scheduled"
    patient_issuer: str = ""
    sex: str = ""
    description: str = ""
    body_part: str = ""
    laterality: str | None = None
    station_name: str = ""
    location: str = ""
    ordering_name: str = ""
    member_id: str = ""
    plan_type: str = ""
    diagnoses: tuple[str, ...] = ()
    study_instance_uid: str = ""
    requested_procedure_id: str = ""
    scheduled_procedure_step_id: str = ""
    #: The auth whose unit this order used when its exam completed (MPPS), once per order.
    auth_unit_used: str | None = None
    #: The RIS's report status (HL7 ORU, OBR-25): "" none, "preliminary", "final" or "corrected".
    report_status: str = ""
    #: When the RIS says the report reached that status (OBR-22), or None.
    report_status_at: dt.datetime | None = None

    @property
    def scheduled_date(self) -> dt.date:
        return self.scheduled_start.date()


@dataclass(frozen=True)
class Auth:
    """A payer's prior authorization. ``valid_from`` and ``valid_to`` are inclusive."""

    auth_number: str
    payer_id: str
    patient_id: str
    cpt_codes: tuple[str, ...]
    facility_npi: str
    ordering_npi: str
    valid_from: dt.date
    valid_to: dt.date
    units: int = 1
    units_used: int = 0
    laterality: str | None = None
    body_part: str = ""
    status: str = "approved"

    @property
    def units_left(self) -> int:
        return max(self.units - self.units_used, 0)


@dataclass(frozen=True)
class Override:
    """An operator's audited decision to serve a withheld order (docs/rules.md, rule 1)."""

    accession_number: str
    user: str
    reason: str
    at: dt.datetime = field(compare=False)
