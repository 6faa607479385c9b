"""Rule 7, duplicates: DUPLICATE_STUDY (holds) and POSSIBLE_DUPLICATE_ORDER (warns); pure, then in the store."""

from __future__ import annotations

import datetime as dt

import pytest

from store import reconcile as r
from store.states import ARCHIVED, HELD
from tests.dicom_factory import make_instance, make_order, write_instance
from tests.test_reconcile import STUDY_UID, header

FIRST = "1.2.826.0.1.3680043.8.498.900"
T0 = dt.datetime(2025, 3, 10, 10, 30)


def prior(uid=FIRST, accession="ACC1001", patient="MRN5001", cpt="70551", date="20250310", at=T0) -> r.PriorStudy:
    return r.PriorStudy(uid, accession, patient, cpt, date, at)


def found(priors, h=None, order=None):
    return r.reconcile(h or header(), order or make_order(), order_authorized=True, priors=tuple(priors))


# ------------------------------------------------------------------------ DUPLICATE_STUDY, pure


def test_no_archived_study_no_finding():
    assert found([]).codes == ()


def test_a_second_study_of_the_order_is_a_duplicate_naming_the_first():
    later = prior("1.2.826.0.1.3680043.8.498.901", at=T0 + dt.timedelta(hours=1))
    result = found([later, prior()])
    assert result.codes == (r.DUPLICATE_STUDY,) and result.holds
    (f,) = result.findings
    assert (f.instance_value, f.order_value) == (STUDY_UID, FIRST)  # the earliest, whatever the order given
    assert FIRST in f.message and "ACC1001" in f.message and "MRN5001" not in f.message


def test_more_of_the_same_study_is_no_duplicate():
    assert found([prior(STUDY_UID)]).codes == ()


def test_another_orders_study_is_not_this_orders_duplicate():
    assert r.DUPLICATE_STUDY not in found([prior(accession="ACC2002", cpt="73721")]).codes


# ------------------------------------------------------------------------ POSSIBLE_DUPLICATE_ORDER, pure


@pytest.mark.parametrize("changes, flagged", [
    ({}, True),                             # same patient, CPT and day, another order
    ({"date": "2025.03.10"}, True),         # the ACR-NEMA date form of the same day
    ({"date": "20250311"}, False),          # the next day
    ({"cpt": "70552"}, False),              # another CPT code
    ({"patient": "MRN5002"}, False),        # another patient
    ({"accession": "ACC1001"}, False),      # the same order: that is DUPLICATE_STUDY's question
    ({"accession": ""}, False),             # a study linked to no order
])
def test_possible_duplicate_order(changes, flagged):
    p = prior(**{"accession": "ACC2002", **changes})
    codes = found([p]).codes
    assert (r.POSSIBLE_DUPLICATE_ORDER in codes) is flagged


def test_possible_duplicate_order_warns_by_default_and_names_the_other_order():
    result = found([prior(accession="ACC2002")])
    assert result.codes == (r.POSSIBLE_DUPLICATE_ORDER,) and not result.holds
    (f,) = result.findings
    assert f.order_value == "ACC2002" and "ACC2002" in f.message and "ACC1001" in f.message


def test_an_instance_without_a_study_date_is_not_compared_by_day():
    assert found([prior(accession="ACC2002")], h=header(study_date="")).codes == ()


def test_both_at_once_and_the_setting_decides_what_holds():
    both = [prior(), prior("1.2.826.0.1.3680043.8.498.902", accession="ACC2002")]
    assert found(both).codes == (r.DUPLICATE_STUDY, r.POSSIBLE_DUPLICATE_ORDER)
    warned = r.reconcile(header(), make_order(), order_authorized=True, priors=tuple(both),
                         hold_codes=r.hold_codes_from_warn_codes({r.DUPLICATE_STUDY, r.POSSIBLE_DUPLICATE_ORDER}))
    assert not warned.holds


# ------------------------------------------------------------------------ in the store


def send(app, folder, **changes):
    ds = make_instance(**changes)
    return app.store.receive(write_instance(folder / f"{ds.SOPInstanceUID}.dcm", ds), "MR1")


def test_a_second_study_for_an_archived_accession_is_held_naming_the_first(app, tmp_path):
    app.gate.import_orders([make_order(cpt="71046")])  # no auth needed, no Study UID assigned by the RIS
    first = "1.2.826.0.1.3680043.8.498.7001"
    second = "1.2.826.0.1.3680043.8.498.7002"
    assert send(app, tmp_path, StudyInstanceUID=first).state == ARCHIVED
    assert send(app, tmp_path, StudyInstanceUID=first).state == ARCHIVED  # more of the first study: no duplicate
    received = send(app, tmp_path, StudyInstanceUID=second)
    assert received.state == HELD and r.DUPLICATE_STUDY in received.hold_codes
    shown = app.store.held_study(second)
    duplicate = [f for f in shown.findings if f.code == r.DUPLICATE_STUDY]
    assert duplicate and duplicate[0].order_value == first and first in duplicate[0].message
    assert app.store.index.study_row(first).state == ARCHIVED  # the first is left alone


def test_the_same_patient_cpt_and_day_under_another_order_warns(app, tmp_path):
    app.gate.import_orders([make_order(cpt="71046"),
                            make_order(accession_number="ACC1009", cpt="71046")])
    assert send(app, tmp_path).state == ARCHIVED
    received = send(app, tmp_path, AccessionNumber="ACC1009")
    assert received.state == ARCHIVED and r.POSSIBLE_DUPLICATE_ORDER in received.warn_codes
    # another day is another exam
    app.gate.import_orders([make_order(accession_number="ACC1010", cpt="71046")])
    assert r.POSSIBLE_DUPLICATE_ORDER not in send(app, tmp_path, AccessionNumber="ACC1010", StudyDate="20250311").warn_codes


def test_the_lookup_is_made_once_per_study_in_an_association(app, tmp_path, monkeypatch):
    from store.receiving import Session

    app.gate.import_orders([make_order(cpt="71046")])
    calls = []
    lookup = app.store.receiving.priors
    monkeypatch.setattr(app.store.receiving, "priors", lambda order: calls.append(order.accession_number) or lookup(order))
    session = Session()
    study = "1.2.826.0.1.3680043.8.498.7003"
    for _ in range(3):
        ds = make_instance(StudyInstanceUID=study)
        app.store.receive(write_instance(tmp_path / f"{ds.SOPInstanceUID}.dcm", ds), "MR1", session=session)
    assert calls == ["ACC1001"]
