"""The pynetdicom behaviour gateway/dicom/tuning.py relies on: these fail if an upgrade changes it."""

from __future__ import annotations

import copy
import inspect
import logging

from pydicom.uid import UID
from pynetdicom import AE, _config, dimse_messages, transport
from pynetdicom.sop_class import ModalityWorklistInformationFind

from gateway.dicom import tuning
from tests.conftest import EXAMPLES, import_auths, import_orders
from tests.test_mwl_scp import query
from worklist.intake import parse_auths, parse_orders


def test_the_configuration_switches_exist_in_pynetdicom():
    source = inspect.getsource(_config)
    for name in ("LOG_REQUEST_IDENTIFIERS", "LOG_RESPONSE_IDENTIFIERS", "STORE_RECV_CHUNKED_DATASET"):
        assert f"\n{name}: bool" in source, f"pynetdicom no longer declares _config.{name}; see tuning.py"


def test_received_datasets_are_still_created_with_named_temporary_file():
    source = inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)
    assert "NamedTemporaryFile(" in source and "from tempfile import NamedTemporaryFile" in inspect.getsource(
        dimse_messages), "pynetdicom creates received files differently now; see tuning.receive_into"


def test_contexts_are_still_deep_copied_per_association():
    source = inspect.getsource(transport.RequestHandler._create_association)
    assert "deepcopy(self.server.contexts)" in source, "pynetdicom no longer deep-copies contexts; see tuning.apply"


def test_a_copied_uid_is_the_same_object_once_applied():
    tuning.apply()
    uid = UID("1.2.840.10008.1.2.1")
    assert copy.deepcopy(uid) is uid
    assert copy.deepcopy([uid])[0] is uid


def test_partial_receive_path_reads_what_pynetdicom_keeps(tmp_path):
    class Message:
        _data_set_path = tmp_path / "rx-1.dcm"

    class Dimse:
        message = Message()

    class Assoc:
        dimse = Dimse()

    assert tuning.partial_receive_path(Assoc()) == tmp_path / "rx-1.dcm"
    assert tuning.partial_receive_path(object()) is None


def test_no_patient_data_in_pynetdicom_debug_log(app, server, caplog):
    import_orders(app, parse_orders((EXAMPLES / "orders.json").read_text()))
    import_auths(app, parse_auths((EXAMPLES / "auths.json").read_text()))
    ae = AE(ae_title="MR1")
    ae.add_requested_context(ModalityWorklistInformationFind)
    with caplog.at_level(logging.DEBUG, logger="pynetdicom"):
        assoc = ae.associate("127.0.0.1", server.port, ae_title="GATEKEEPER")
        found = [identifier for status, identifier in assoc.send_c_find(query(AccessionNumber="ACC1001", PatientName="", PatientID=""),
                                                                       ModalityWorklistInformationFind)
                 if status and status.Status == 0xFF00]
        assoc.release()
    assert [str(d.PatientName) for d in found] == ["DOE^JANE^Q"]
    assert caplog.records, "pynetdicom logged nothing at DEBUG"
    assert not any("DOE" in r.getMessage() or "MRN5001" in r.getMessage() for r in caplog.records)
