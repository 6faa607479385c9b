"""Change 6 of gateway/dicom/tuning.py: a worklist response is encoded once per transfer syntax."""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pynetdicom import dsutils, service_class

from gateway.dicom import tuning


def _response(accession: str = "ACC1") -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = accession
    ds.PatientName = "Doe^Jane"
    step = Dataset()
    step.Modality = "MR"
    step.ScheduledStationAETitle = "MR1"
    ds.ScheduledProcedureStepSequence = [step]
    return ds


@pytest.fixture
def counted(monkeypatch):
    calls = []
    original = tuning._original_encode

    def counting(ds, *args):
        calls.append(id(ds))
        return original(ds, *args)

    monkeypatch.setattr(tuning, "_original_encode", counting)
    monkeypatch.setattr(tuning, "_ENCODINGS", tuning._Encodings())
    return calls


def test_pynetdicom_encodes_through_the_module_global_we_replace():
    tuning.apply()
    assert service_class.encode is tuning._encode  # the C-FIND provider calls encode(...) from this module


@pytest.mark.parametrize("implicit", [True, False])
def test_registered_response_is_encoded_once_per_syntax_with_the_same_bytes(counted, implicit):
    ds = tuning.encoded_once(_response())
    expected = dsutils.encode(ds, implicit, True)
    first = tuning._encode(ds, implicit, True)
    again = tuning._encode(ds, implicit, True)
    assert first == again == expected
    assert counted == [id(ds)]
    other = tuning._encode(ds, not implicit, True)  # the other syntax: encoded once more
    assert other == dsutils.encode(ds, not implicit, True) and len(counted) == 2


def test_unregistered_dataset_is_encoded_every_time(counted):
    ds = _response()
    assert tuning._encode(ds, True, True) == tuning._encode(ds, True, True) == dsutils.encode(ds, True, True)
    assert len(counted) == 2


def test_a_new_response_object_is_encoded_afresh(counted):
    old = tuning.encoded_once(_response("ACC1"))
    new = tuning.encoded_once(_response("ACC2"))  # a changed order is a new response object
    assert tuning._encode(old, True, True) != tuning._encode(new, True, True)
    assert b"ACC2" in tuning._encode(new, True, True) and len(counted) == 2


def test_the_map_is_bounded(counted, monkeypatch):
    monkeypatch.setattr(tuning, "ENCODED_ENTRIES", 3)
    kept = [tuning.encoded_once(_response(f"ACC{n}")) for n in range(5)]
    for ds in kept:
        tuning._encode(ds, True, True)
    assert len(tuning._ENCODINGS.entries) == 3
    tuning._encode(kept[0], True, True)  # evicted: encoded again, correctly
    assert len(counted) == 6
    monkeypatch.setattr(tuning, "ENCODED_BYTES", 1)
    tuning._encode(tuning.encoded_once(_response("ACC9")), True, True)
    assert tuning._ENCODINGS.bytes <= 1 or len(tuning._ENCODINGS.entries) == 0


def test_a_console_asking_again_gets_the_same_bytes_without_encoding(app, server, monkeypatch):
    """Through the running server: the second identical query encodes no response; a changed
    order is encoded afresh."""
    from tests.test_mwl_scp import find, load_examples, query

    load_examples(app)
    calls = []
    original = tuning._original_encode
    monkeypatch.setattr(tuning, "_original_encode", lambda ds, *a: calls.append(ds) or original(ds, *a))
    ask = query({"ScheduledStationAETitle": "MR1", "ScheduledProcedureStepStartDate": "20261201", "Modality": ""},
                AccessionNumber="", PatientName="", RequestedProcedureComments="")
    first, status = find(server.port, ask)
    assert status == 0x0000 and [d.AccessionNumber for d in first] == ["ACC1001"]
    assert len(calls) == 1
    again, status = find(server.port, ask)
    assert status == 0x0000 and again == first
    assert len(calls) == 1  # the pending response went out as the bytes of the first time
    import json
    from tests.conftest import EXAMPLES
    from worklist.intake import parse_orders

    orders = json.loads((EXAMPLES / "orders.json").read_text())
    changed = [dict(o, patient=dict(o["patient"], name="Renamed^Pat")) for o in orders
               if o["accession_number"] == "ACC1001"]
    app.gate.import_orders(parse_orders(json.dumps(changed)))
    renamed, _ = find(server.port, ask)
    assert str(renamed[0].PatientName) == "Renamed^Pat" and len(calls) == 2
