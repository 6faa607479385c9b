"""Peewee models for the index of received studies, instances and hold findings.

The files themselves live under the storage root (see :mod:`store.archive`); these rows
say where each one is, what state its study is in, and why a held study is held.
"""

from __future__ import annotations

import peewee as pw

from infra.db import BaseModel



class StudyRow(BaseModel):
    study_instance_uid = pw.CharField(max_length=64, unique=True)
    state = pw.CharField(max_length=8, index=True)  # one of store.states.STUDY_STATES
    accession_number = pw.CharField(max_length=16, default="", index=True)
    # The order the study is linked to (empty while the accession matches none).
    order_accession = pw.CharField(max_length=16, default="", index=True)
    patient_id = pw.CharField(max_length=64, default="", index=True)  # indexed for Q/R lookups
    study_date = pw.CharField(max_length=8, default="", index=True)
    first_received_at = pw.DateTimeField(index=True)
    last_received_at = pw.DateTimeField()
    # When the study was first held (kept after release, for the held-time figures).
    held_at = pw.DateTimeField(null=True)
    state_changed_at = pw.DateTimeField()
    # When an instance that does not match moved the archived study back to held (it is
    # then equal to held_at while that hold lasts).
    reopened_at = pw.DateTimeField(null=True)
    # Set by the held-age job once the study crossed storage.held_alert_hours.
    age_flagged_at = pw.DateTimeField(null=True)
    instance_count = pw.IntegerField(default=0)
    # Set while the study's files are not all in the tree of its state (``store.placement``):
    # "move" = move them there, "prune" = delete copies in other trees. An action sets it
    # in the same transaction as the state change and clears it once the files are in
    # place; the server finishes what a crash interrupted at start.
    pending_files = pw.CharField(max_length=8, null=True)
    # Query/Retrieve attributes (store/qr_match.py), from the first instance received (a
    # correction sets the patient's from the order). Empty for studies received before 0.3.0.
    patient_name = pw.CharField(max_length=200, default="")
    birth_date = pw.CharField(max_length=8, default="")
    patient_sex = pw.CharField(max_length=16, default="")
    study_time = pw.CharField(max_length=16, default="")
    study_id = pw.CharField(max_length=16, default="")
    study_description = pw.CharField(max_length=64, default="")
    referring_physician = pw.CharField(max_length=200, default="")

    class Meta:
        table_name = "studies"


class InstanceRow(BaseModel):
    sop_instance_uid = pw.CharField(max_length=64, unique=True)
    study_instance_uid = pw.CharField(max_length=64, index=True)
    series_instance_uid = pw.CharField(max_length=64, index=True)
    sop_class_uid = pw.CharField(max_length=64)
    transfer_syntax_uid = pw.CharField(max_length=64, default="")
    path = pw.CharField(max_length=400)  # relative to the storage root
    size = pw.BigIntegerField()
    sha256 = pw.CharField(max_length=64)
    received_from = pw.CharField(max_length=16, default="")
    received_at = pw.DateTimeField()
    # Query/Retrieve attributes of the instance and its series (store/qr_match.py); empty
    # for instances received before 0.3.0.
    modality = pw.CharField(max_length=16, default="")
    series_number = pw.CharField(max_length=12, default="")
    series_description = pw.CharField(max_length=64, default="")
    instance_number = pw.CharField(max_length=12, default="")

    class Meta:
        table_name = "instances"


class FindingRow(BaseModel):
    """One failed reconciliation check of one instance (docs/rules.md, rule 3)."""

    study_instance_uid = pw.CharField(max_length=64, index=True)
    sop_instance_uid = pw.CharField(max_length=64, index=True)
    code = pw.CharField(max_length=32, index=True)
    instance_value = pw.CharField(default="")
    order_value = pw.CharField(default="")
    message = pw.TextField(default="")
    holds = pw.BooleanField(default=True)
    found_at = pw.DateTimeField()

    class Meta:
        table_name = "findings"


class ForwardRow(BaseModel):
    """One instance queued for one ``[forward.NAME]`` destination (docs/rules.md, rule 10).

    ``state`` is one of :data:`store.forwarding.FORWARD_STATES`. ``generation`` grows each
    time the row is queued again (a correction, a re-sent instance, a retry): a sender
    records only the outcome of the generation it claimed. ``claim`` and
    ``claimed_until`` are the lease of the sender working on the row; an expired lease
    (a gateway killed mid-send) lets another sender take it.
    """

    sop_instance_uid = pw.CharField(max_length=64)
    study_instance_uid = pw.CharField(max_length=64, index=True)
    destination = pw.CharField(max_length=64)
    state = pw.CharField(max_length=10)
    attempts = pw.IntegerField(default=0)
    generation = pw.IntegerField(default=1)
    next_attempt_at = pw.DateTimeField()
    enqueued_at = pw.DateTimeField()
    sent_at = pw.DateTimeField(null=True)
    committed_at = pw.DateTimeField(null=True)
    last_error = pw.TextField(default="")
    last_status = pw.IntegerField(null=True)
    transaction_uid = pw.CharField(max_length=64, null=True, index=True)
    claim = pw.CharField(max_length=40, null=True, index=True)
    claimed_until = pw.DateTimeField(null=True)

    class Meta:
        table_name = "forward_queue"
        indexes = (
            (("sop_instance_uid", "destination"), True),
            (("state", "next_attempt_at"), False),
        )


MODELS = [StudyRow, InstanceRow, FindingRow, ForwardRow]
