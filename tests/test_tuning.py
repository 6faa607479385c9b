"""The pynetdicom behaviour gateway/dicom/tuning.py relies on: these fail if an upgrade changes it."""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
from types import SimpleNamespace

from pydicom.uid import UID
from pynetdicom import AE, _config, acse, association, dimse_messages, dul, fsm, service_class, transport
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


def test_the_pdu_reader_replaced_by_change_5_is_unchanged():
    # tuning._read_pdu_data is pynetdicom 3.0.4's reader with bounds added: port any change.
    source = inspect.getsource(tuning._original_read_pdu_data)
    assert hashlib.sha256(source.encode()).hexdigest() == (
        "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b"
    ), "pynetdicom changed DULServiceProvider._read_pdu_data; port it to tuning._read_pdu_data"
    assert "self._read_pdu_data()" in inspect.getsource(dul.DULServiceProvider._is_transport_event)
    tuning.apply()
    assert dul.DULServiceProvider._read_pdu_data is tuning._read_pdu_data


def test_artim_bounds_the_wait_for_an_a_associate_rq():
    # The guard sets acse_timeout when the connection opens; pynetdicom makes it the ARTIM
    # timer, started by AE-5 (connection), stopped by AE-6 (A-ASSOCIATE-RQ); on expiry in
    # Sta2 the reactor closes the connection (Evt18, AA-2). Change 5 reads within ARTIM.
    assert "self.dul.artim_timer.timeout = value" in inspect.getsource(association.Association)
    assert "dul.artim_timer.start()" in inspect.getsource(fsm.AE_5)
    assert "dul.artim_timer.stop()" in inspect.getsource(fsm.AE_6)
    assert fsm.TRANSITION_TABLE[("Evt18", "Sta2")] == "AA-2"
    assert 'self.event_queue.put("Evt18")' in inspect.getsource(dul.DULServiceProvider.run_reactor)
    handle = inspect.getsource(transport.RequestHandler.handle)
    assert handle.index("EVT_CONN_OPEN") < handle.index("assoc.start()"), "EVT_CONN_OPEN no longer comes first"


def test_a_rejection_from_evt_requested_is_honoured():
    # guard.Guard rejects from its EVT_REQUESTED handler, as pynetdicom's own code does.
    reactor = inspect.getsource(association.Association.run_reactor)
    assert "receive_pdu(wait=True, timeout=self.acse_timeout)" in reactor
    assert reactor.index("evt.EVT_REQUESTED") < reactor.index("if not self.is_aborted and not self.is_rejected:")
    negotiate = inspect.getsource(acse.ACSE._negotiate_as_acceptor)
    assert "self.send_reject(" in negotiate and "self.assoc.kill()" in negotiate


def test_pynetdicom_counts_connections_against_maximum_associations():
    # Why server.build_ae switches that count off (UNCOUNTED) and the guard counts instead.
    negotiate = inspect.getsource(acse.ACSE._negotiate_as_acceptor)
    assert "len(active_acceptors) > self.assoc.ae.maximum_associations" in negotiate
    # ... which counts every acceptor thread, whether it became an association or not.
    assert "threading.enumerate()" in inspect.getsource(AE.active_associations.fget)


def test_the_c_find_send_path_replaced_by_change_7_is_unchanged():
    # tuning._send_msg frames pending C-FIND responses as pynetdicom 3.0.4 does and hands the
    # rest to it; its batches pass DT-1/AR-7. Port any change of these to change 7.
    from pynetdicom import dimse, dimse_messages, service_class

    send = inspect.getsource(tuning._original_send_msg)
    assert "dimse_msg.primitive_to_message(primitive)" in send
    assert "for pdata in dimse_msg.encode_msg(context_id, self.maximum_pdu_size):" in send
    assert "self.dul.send_pdu(pdata)" in send
    encode = inspect.getsource(dimse_messages.DIMSEMessage.encode_msg)
    assert "encode(self.command_set, True, True)" in encode
    assert 'b"\\x01" + next(cmd_fragments)' in encode and 'b"\\x03" + next(cmd_fragments)' in encode
    assert 'b"\\x00" + next(ds_fragments)' in encode and 'b"\\x02" + next(ds_fragments)' in encode
    assert "fragment_length -= 6" in inspect.getsource(dimse_messages.DIMSEMessage._generate_pdv_fragments)
    find = inspect.getsource(tuning._original_c_find_scp)
    assert find.count("self.dimse.send_msg(rsp, cx_id)") == 8, "the C-FIND SCP sends differently now"
    for name, state in tuning._P_DATA_ACTIONS.items():
        source = inspect.getsource(tuning._original_actions[name])
        assert "dul.to_provider_queue.get(False)" in source and "dul._send(P_DATA_TF(primitive))" in source
        assert f'return "{state}"' in source
    assert fsm.TRANSITION_TABLE[("Evt9", "Sta6")] == "DT-1" and fsm.TRANSITION_TABLE[("Evt9", "Sta8")] == "AR-7"
    assert [e for e, s in fsm.TRANSITION_TABLE if e == "Evt9"] == ["Evt9", "Evt9"], "P-DATA is sent in another state now"
    assert "isinstance(primitive, P_DATA)" in inspect.getsource(dul.DULServiceProvider._process_recv_primitive)
    tuning.apply()
    assert dimse.DIMSEServiceProvider.send_msg is tuning._send_msg
    assert service_class.ServiceClass._c_find_scp is tuning._c_find_scp
    assert all(fsm.ACTIONS[name][1] is tuning._send_p_data for name in tuning._P_DATA_ACTIONS)


def test_the_reactor_loops_replaced_by_change_8_are_unchanged():
    # tuning._dul_reactor and tuning._association_reactor are pynetdicom 3.0.4's loops with
    # their sleeps replaced by waits: port any change of these to change 8.
    loops = {
        tuning._original_dul_reactor: "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
        tuning._original_association_reactor: "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
    }
    for loop, digest in loops.items():
        source = inspect.getsource(loop)
        assert hashlib.sha256(source.encode()).hexdigest() == digest, f"pynetdicom changed {loop.__qualname__}"
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(tuning._original_dul_reactor)
    assert "time.sleep(0.001)" in inspect.getsource(tuning._original_association_reactor)
    # what wakes them: the queues they read, created in the constructors and only put to
    for name in ("event_queue", "to_provider_queue", "to_user_queue"):
        assert f"self.{name}: " in inspect.getsource(tuning._original_dul_init)
    assert "self.msg_queue: " in inspect.getsource(tuning._original_dimse_init)
    assert "self._kill_thread = True" in inspect.getsource(tuning._original_stop_dul)
    assert "self._kill = True" in inspect.getsource(tuning._original_kill)
    assert "self.dul.start()" in inspect.getsource(association.Association.run_reactor)
    # a request served off the reactor's thread leaves _is_paused false (tuning._serve_request)
    from pynetdicom import dimse
    assert "self._is_paused = False" in inspect.getsource(tuning._original_serve_request)
    assert "target=make_target(self.assoc._serve_request)" in inspect.getsource(dimse.DIMSEServiceProvider.receive_primitive)
    tuning.apply()
    assert dul.DULServiceProvider.run_reactor is tuning._dul_reactor
    assert association.Association._run_reactor is tuning._association_reactor
    assert association.Association._serve_request is tuning._serve_request
    ae = AE("TUNED")
    assoc = association.Association(ae, "requestor")
    queues = (assoc.dul.event_queue, assoc.dul.to_provider_queue, assoc.dul.to_user_queue, assoc.dimse.msg_queue)
    assert all(isinstance(q, tuning._WakingQueue) for q in queues)


def test_the_file_meta_and_response_encoders_replaced_by_change_9_are_unchanged():
    # the File Meta of a received dataset is written by decode_msg alone, from these two names,
    # with pynetdicom's implementation UID and version; the response goes through send_msg
    import pynetdicom
    from pynetdicom import dimse_messages, dsutils

    module = inspect.getsource(dimse_messages)
    assert module.count("write_file_meta_info(") == 1 and module.count("create_file_meta(") == 1
    decode = inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)
    assert "write_file_meta_info(" in decode and "create_file_meta(" in decode
    assert 'self._data_set_file.write(b"\\x00" * 128)' in decode and 'self._data_set_file.write(b"DICM")' in decode
    defaults = inspect.signature(dsutils.create_file_meta).parameters
    assert defaults["implementation_uid"].default == tuning._IMPLEMENTATION_UID == pynetdicom.PYNETDICOM_IMPLEMENTATION_UID
    assert defaults["implementation_version"].default.encode() == tuning._IMPLEMENTATION_VERSION
    store_scp = inspect.getsource(pynetdicom.service_class.StorageServiceClass.SCP)
    assert "self.dimse.send_msg(rsp, cx_id)" in store_scp
    tuning.apply()
    assert dimse_messages.create_file_meta is tuning._create_file_meta
    assert dimse_messages.write_file_meta_info is tuning._write_file_meta_info


def test_the_logging_handlers_unbound_by_change_10_log_only_what_the_server_drops():
    import re

    from pynetdicom import _handlers

    levels = set(re.findall(r"\bLOGGER\.(\w+)\(", inspect.getsource(_handlers)))
    assert levels == {"info", "debug"}, "pynetdicom's logging handlers log more now; see tuning.quiet_logging"
    assert _config.LOG_HANDLER_LEVEL == "standard"
    pynetdicom_log = logging.getLogger("pynetdicom")
    before = pynetdicom_log.level
    try:
        for level, kept in ((logging.WARNING, False), (logging.INFO, True), (logging.DEBUG, True)):
            assoc = association.Association(AE("TUNED"), "requestor")
            for event, handler in tuning._STANDARD_LOGGING:
                assert handler in [h for h, _ in assoc.get_handlers(event)]
            pynetdicom_log.setLevel(level)
            tuning.quiet_logging(SimpleNamespace(assoc=assoc))
            for event, handler in tuning._STANDARD_LOGGING:
                assert (handler in [h for h, _ in assoc.get_handlers(event)]) is kept, (level, event)
    finally:
        pynetdicom_log.setLevel(before)


def test_the_p_data_path_shortened_by_change_11_is_unchanged():
    # tuning._write_through does for a PDU of middle data fragments what these do together
    from pynetdicom import dimse, pdu

    assert fsm.TRANSITION_TABLE[("Evt10", "Sta6")] == "DT-2"
    dt_2 = inspect.getsource(fsm.DT_2)  # takes the PDU off _recv_pdu, hands it to the DIMSE provider
    assert hashlib.sha256(dt_2.encode()).hexdigest() == (
        "9ec543394e0b49eb8be2448fc3f9950361b0047db7cf3742844f377bd225ba73"
    ), "pynetdicom changed DT-2; see tuning._write_through"
    assert dul._PDU_TYPES[b"\x04"] == (pdu.P_DATA_TF, "Evt10")
    decode_pdu = inspect.getsource(dul.DULServiceProvider._decode_pdu)
    assert decode_pdu.count("evt.trigger(") == 2 and "EVT_DATA_RECV" in decode_pdu and "EVT_PDU_RECV" in decode_pdu
    receive = inspect.getsource(dimse.DIMSEServiceProvider.receive_primitive)
    assert "if self.message.decode_msg(primitive, self.assoc):" in receive
    decode = inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)
    assert "self._data_set_file.write(data[1:])\n                    self._data_set_file.file.flush()" in decode
    assert "if control_header_byte & 1:" in decode and "if control_header_byte & 2 != 0:" in decode
    tuning.apply()
    assert dul.DULServiceProvider._read_pdu_data is tuning._read_pdu_data


def test_the_command_set_decoding_replaced_by_change_12_is_unchanged():
    # tuning._decode and tuning._store_rq_to_primitive give a C-STORE-RQ's command set and
    # primitive as pynetdicom 3.0.4 makes them: port any change of these to change 12
    from pydicom.uid import UID
    from pynetdicom import dimse_primitives, dsutils

    assert tuning._original_decode is dsutils.decode
    module = inspect.getsource(dimse_messages)
    assert "from pynetdicom.dsutils import encode, decode, create_file_meta" in module
    assert module.count(" decode(") == 2  # the comment and the call in decode_msg, nowhere else
    decode = inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)
    assert "self.command_set = decode(self.encoded_command_set, True, True)" in decode
    assert tuning._original_store_rq_to_primitive is dimse_messages.DIMSEMessage.message_to_primitive
    source = inspect.getsource(dimse_messages.DIMSEMessage.message_to_primitive)
    assert hashlib.sha256(source.encode()).hexdigest() == (
        "f8f43d34e43450efa31bd308677b85b370f8ca7600c0e067e854f8095ce665ac"
    ), "pynetdicom changed DIMSEMessage.message_to_primitive; see tuning._store_rq_to_primitive"
    ours = tuple(keyword for keyword, _ in tuning._STORE_RQ_ELEMENTS.values())
    assert dimse_messages._COMMAND_SET_KEYWORDS["C-STORE-RQ"] == ours + (
        "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID")
    primitive = dimse_primitives.C_STORE()
    primitive._affected_sop_class_uid, primitive._affected_sop_instance_uid = UID("1.2"), UID("1.2.3")
    assert primitive.AffectedSOPClassUID == "1.2" and primitive.AffectedSOPInstanceUID == "1.2.3"
    tuning.apply()
    assert dimse_messages.decode is tuning._decode
    assert dimse_messages.C_STORE_RQ.message_to_primitive is tuning._store_rq_to_primitive


def test_the_uid_setters_wrapped_by_change_13_are_unchanged():
    # tuning._set_once keeps a _PlainUID in the attribute pynetdicom 3.0.4's setter writes,
    # and StorageServiceClass.SCP still hands the request's UIDs to the response
    from pynetdicom.dimse_primitives import C_STORE

    for name, attribute in tuning._ONCE_CHECKED:
        original = tuning._original_uid_properties[name]
        source = inspect.getsource(original.fset)
        assert f"self.{attribute} = " in source and "set_uid(value" in source, name
        primitive = C_STORE()
        setattr(primitive, attribute, "1.2.3")
        assert original.fget(primitive) == "1.2.3", name
    scp = inspect.getsource(service_class.StorageServiceClass.SCP)
    assert "rsp.AffectedSOPInstanceUID = req.AffectedSOPInstanceUID" in scp
    assert "rsp.AffectedSOPClassUID = req.AffectedSOPClassUID" in scp
    tuning.apply()
    for name, _ in tuning._ONCE_CHECKED:
        assert getattr(C_STORE, name) is not tuning._original_uid_properties[name]
