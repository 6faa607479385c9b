"""The worklist and the store never disagree about an order's authorization (rule 1, docs/rules.md).

A day of orders and auths is generated with every way an auth can fail (and the
edges: the first and last day of a window, the last unit, a pended auth, the wrong
side, no auth, an invalid NPI, an override, a closed order). For every order, the
decision the worklist serves by and the authorization the store files by agree; and a
real instance received for each order is held with ORDER_NOT_AUTHORIZED exactly when
the worklist withholds the order for a payer reason.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import replace

import pytest
from pydicom.uid import generate_uid

from tests.dicom_factory import make_instance, make_order, write_instance
from worklist.gating import ORDER_NOT_SCHEDULED
from worklist.orders import Auth

DAY = dt.date(2026, 12, 1)
FACILITY, ORDERING, OTHER_NPI, BAD_NPI = "1245319599", "1234567893", "1987654328", "1234567890"
POLICY_CPT, FREE_CPT = "70551", "71046"  # needs an auth under the default policy / does not


def good_auth(number: str, patient: str, **overrides) -> Auth:
    values = dict(auth_number=number, payer_id="ACME", patient_id=patient, cpt_codes=(POLICY_CPT,),
                  facility_npi=FACILITY, ordering_npi=ORDERING, valid_from=DAY - dt.timedelta(days=10),
                  valid_to=DAY + dt.timedelta(days=10), units=2, units_used=0)
    values.update(overrides)
    return Auth(**values)


#: Ways an auth can be, each applied to some generated orders.
AUTH_VARIANTS = [
    {},
    {"status": "pended"},
    {"status": "denied"},
    {"cpt_codes": ("70553",)},
    {"cpt_codes": ("70553", POLICY_CPT)},
    {"facility_npi": OTHER_NPI},
    {"ordering_npi": OTHER_NPI},
    {"valid_from": DAY, "valid_to": DAY},  # a one-day window: the exam day itself
    {"valid_from": DAY + dt.timedelta(days=1)},  # starts the day after
    {"valid_to": DAY - dt.timedelta(days=1)},  # ended the day before
    {"units": 1, "units_used": 0},  # the last unit
    {"units": 1, "units_used": 1},  # none left
    {"laterality": "L"},
    {"laterality": "R"},
    {"payer_id": "OTHER"},
]


def generate(seed: int, count: int):
    """(orders, auths, overrides) for one day; every order of patient P<i> has its own auths."""
    rng = random.Random(seed)
    orders, auths, overrides = [], [], []
    for i, variant in enumerate(AUTH_VARIANTS):  # each variant alone at least once
        patient = f"V{seed}-{i:03d}"
        orders.append(make_order(accession_number=f"V{seed}-{i:03d}", patient_id=patient, study_instance_uid="",
                                 scheduled_start=dt.datetime.combine(DAY, dt.time(7, i)), laterality="R"))
        auths.append(good_auth(f"PV-{seed}-{i:03d}", patient, **variant))
    orders.append(make_order(accession_number=f"N{seed}", patient_id=f"N{seed}", study_instance_uid="",
                             scheduled_start=dt.datetime.combine(DAY, dt.time(8, 0)), ordering_npi=BAD_NPI))
    auths.append(good_auth(f"PN-{seed}", f"N{seed}", ordering_npi=BAD_NPI))  # matches, but the NPI is invalid
    for i in range(count):
        patient = f"P{seed}-{i:03d}"
        order = make_order(
            accession_number=f"A{seed}-{i:03d}", patient_id=patient, study_instance_uid="",
            scheduled_start=dt.datetime.combine(DAY, dt.time(7 + i % 10, 15)),
            cpt=rng.choice([POLICY_CPT, POLICY_CPT, POLICY_CPT, FREE_CPT]),
            laterality=rng.choice([None, "L", "R"]),
            payer_id=rng.choice(["ACME", "ACME", "ACME", "SELF_PAY"]),
            status=rng.choice(["scheduled"] * 6 + ["in-progress", "completed", "cancelled"]),
            ordering_npi=BAD_NPI if rng.random() < 0.05 else ORDERING,
        )
        orders.append(order)
        for n in range(rng.choice([0, 1, 1, 1, 2, 3])):
            auths.append(good_auth(f"PA-{seed}-{i:03d}-{n}", patient, **rng.choice(AUTH_VARIANTS)))
        if rng.random() < 0.1:
            overrides.append(order.accession_number)
    return orders, auths, overrides


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_worklist_and_store_agree_on_every_order_of_a_day(app, clock, seed):
    clock.now = dt.datetime.combine(DAY, dt.time(6, 0))
    orders, auths, overrides = generate(seed, 120)
    app.gate.import_orders(orders)
    app.gate.import_auths(auths)
    for accession in overrides:
        app.gate.override(accession, user="dr.on.call", reason="emergency")

    entries = app.gate.day(DAY)
    assert len(entries) == len(orders)
    kinds = set()
    for entry in entries:
        order, decision = entry.order, entry.decision
        _, authorization = app.store.receiving.authorizer(order.accession_number, DAY)
        payer_reasons = tuple(c for c in decision.codes if c != ORDER_NOT_SCHEDULED)
        if ORDER_NOT_SCHEDULED in decision.codes:
            # closed: not served whatever; the store still asks only the payer side
            assert authorization.authorized == (not payer_reasons or order.accession_number in overrides), order
        else:
            assert authorization.authorized == decision.served, (order, decision, authorization)
            assert authorization.basis == decision.basis
            assert authorization.auth_number == decision.auth_number
        assert tuple(r.code for r in authorization.reasons) == payer_reasons
        kinds.update(decision.codes)
        kinds.add(decision.basis)
    # the generated day covers served orders of every basis and withheld ones of most kinds
    assert {"auth", "no-auth-needed", "override", "INVALID_NPI", "AUTH_MISSING", "AUTH_NOT_APPROVED", "AUTH_DATE_OUT_OF_RANGE",
            "AUTH_EXHAUSTED", "AUTH_LATERALITY_MISMATCH", "ORDER_NOT_SCHEDULED"} <= kinds


def test_a_received_instance_is_held_for_its_auth_exactly_when_the_worklist_withholds_it(app, clock, tmp_path):
    clock.now = dt.datetime.combine(DAY, dt.time(6, 0))
    orders, auths, overrides = generate(7, 60)
    orders = [replace(o, status="scheduled") for o in orders]  # images of closed orders hold for other reasons
    app.gate.import_orders(orders)
    app.gate.import_auths(auths)
    for accession in overrides:
        app.gate.override(accession, user="dr.on.call", reason="emergency")
    served = {e.order.accession_number: e.decision.served for e in app.gate.day(DAY)}
    assert 0 < sum(served.values()) < len(served)
    for order in orders:
        ds = make_instance(AccessionNumber=order.accession_number, PatientID=order.patient_id,
                           StudyInstanceUID=generate_uid(), StudyDate=DAY.strftime("%Y%m%d"),
                           Laterality=order.laterality or "")
        received = app.store.receive(write_instance(tmp_path / f"{ds.SOPInstanceUID}.dcm", ds), "MR1")
        not_authorized = "ORDER_NOT_AUTHORIZED" in received.hold_codes
        assert not_authorized == (not served[order.accession_number]), (order, received)
