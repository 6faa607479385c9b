"""worklist.query keeps, per identifier and version of an order, its response or that it does
not match: a console polling again is answered without matching again, and never wrongly."""

from __future__ import annotations

import json

from tests.conftest import EXAMPLES
from tests.test_mwl_scp import load_examples, query
from worklist.intake import parse_orders

STEP = {"ScheduledStationAETitle": "MR1", "ScheduledProcedureStepStartDate": "20261201", "Modality": ""}


def rename(app, accession: str, name: str) -> None:
    orders = json.loads((EXAMPLES / "orders.json").read_text())
    changed = [dict(o, patient=dict(o["patient"], name=name)) for o in orders if o["accession_number"] == accession]
    app.gate.import_orders(parse_orders(json.dumps(changed)))


def test_an_item_that_does_not_match_stays_out_when_asked_again(app):
    load_examples(app)
    ask = query(STEP, AccessionNumber="", PatientName="SMITH*")
    assert list(app.query.find(ask, "MR1")) == []
    assert list(app.query.find(ask, "MR1")) == []  # from the cache: still no match
    everyone = query(STEP, AccessionNumber="", PatientName="")
    assert [d.AccessionNumber for d in app.query.find(everyone, "MR1")] == ["ACC1001"]


def test_a_new_version_of_the_order_is_matched_afresh(app):
    load_examples(app)
    ask = query(STEP, AccessionNumber="", PatientName="SMITH*")
    assert list(app.query.find(ask, "MR1")) == []
    rename(app, "ACC1001", "Smith^Pat")
    found = list(app.query.find(ask, "MR1"))
    assert [(d.AccessionNumber, str(d.PatientName)) for d in found] == [("ACC1001", "Smith^Pat")]
    rename(app, "ACC1001", "Doe^Jane")
    assert list(app.query.find(ask, "MR1")) == []


def test_the_same_identifier_gets_the_same_response_object(app):
    load_examples(app)
    ask = query(STEP, AccessionNumber="", PatientName="")
    first = list(app.query.find(ask, "MR1"))
    again = list(app.query.find(ask, "MR1"))
    assert first and all(a is b for a, b in zip(first, again, strict=True))
    other = list(app.query.find(query(STEP, AccessionNumber="", PatientName="", PatientID=""), "MR1"))
    assert [d.AccessionNumber for d in other] == ["ACC1001"] and "PatientID" in other[0]
