"""Reloading the settings on SIGHUP: the payer policy and the reconciliation warn codes are
applied to the running server, everything else is named as needing a restart, and a broken
file leaves the running settings alone.

In process: :meth:`gateway.app.App.reload` and :meth:`~gateway.app.App.needs_restart`. End to
end: `gatekeeper serve` as a process with the examples, an association kept open across
the SIGHUP.
"""

from __future__ import annotations

import dataclasses
import signal
import time

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from gateway.app import App
from gateway.dicom.server import reload_settings
from gateway.settings import DECLARED, Settings, load
from store.states import ARCHIVED, HELD
from tests.conftest import EXAMPLES
from tests.dicom_factory import make_instance, make_order, write_instance
from tests.e2e import Gateway
from worklist.intake import parse_auths, parse_orders

#: The line of the shipped default payer list that makes ACC1002 (CPT 73721) need an auth.
KNEE_LINE = '    "73718-73725",  # lower extremity\n'


def edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not once in {path}"
    path.write_text(text.replace(old, new))


def load_examples(app: App) -> None:
    app.gate.import_orders(parse_orders((EXAMPLES / "orders.json").read_text()))
    app.gate.import_auths(parse_auths((EXAMPLES / "auths.json").read_text()))


def served(app: App) -> list[str]:
    """Accession numbers the worklist query answers for the examples' day."""
    ds = Dataset()
    ds.AccessionNumber = ""
    return sorted(r.AccessionNumber for r in app.query.find(ds))


# ------------------------------------------------------------------------- in process


def test_the_payer_policy_is_applied_to_every_use_case_and_the_query_cache_stays_valid(app, settings_path):
    load_examples(app)
    assert served(app) == ["ACC1001", "ACC1003"]  # items of ACC1001 and ACC1003 are cached now
    edit(settings_path, KNEE_LINE, "")
    new = load(settings_path, environ={})
    assert app.reload(new) == ["payers"]
    assert app.gate.policy is app.query.policy is app.steps.policy is new.policy
    assert app.settings.policy == new.policy
    assert served(app) == ["ACC1001", "ACC1002", "ACC1003"]
    assert app.gate.explain("ACC1002").decision.basis == "no-auth-needed"
    # ... and back: the cached item of ACC1002 is not served once its order needs an auth again.
    edit(settings_path, 'requires_auth = [\n', 'requires_auth = [\n' + KNEE_LINE)
    assert app.reload(load(settings_path, environ={})) == ["payers"]
    assert served(app) == ["ACC1001", "ACC1003"]


def test_the_warn_codes_decide_what_the_next_instance_holds(app, settings_path, tmp_path):
    study = "1.2.826.0.1.3680043.8.498.1001"
    app.gate.import_orders([make_order(study_instance_uid=study, cpt="71046")])  # no auth needed

    def send():  # an instance of the order under another Study Instance UID: STUDY_UID_MISMATCH
        ds = make_instance(StudyInstanceUID=generate_uid())
        return app.store.receive(write_instance(tmp_path / "sent" / f"{ds.SOPInstanceUID}.dcm", ds), "MR1")

    assert send().state == ARCHIVED
    edit(settings_path, 'warn_codes = ["STUDY_UID_MISMATCH", "POSSIBLE_DUPLICATE_ORDER"]', "warn_codes = []")
    assert app.reload(load(settings_path, environ={})) == ["reconcile.warn_codes"]
    assert "STUDY_UID_MISMATCH" in app.store.receiving.hold_codes == app.store.config.hold_codes
    received = send()  # a second study of the order: DUPLICATE_STUDY (rule 7) holds it too
    assert received.state == HELD and received.hold_codes == ("STUDY_UID_MISMATCH", "DUPLICATE_STUDY")


def test_settings_that_need_a_restart_are_named_and_not_applied(app, settings_path):
    port = app.settings.port
    edit(settings_path, f"port = {port}", f"port = {port + 1}")
    edit(settings_path, 'ae_title = "GATEKEEPER"', 'ae_title = "GATEKEEPER2"')
    edit(settings_path, "held_alert_hours = 48", "held_alert_hours = 12")
    new = load(settings_path, environ={})
    assert app.needs_restart(new) == ["server.ae_title", "server.port", "storage.held_alert_hours"]
    assert app.reload(new) == []
    assert (app.settings.port, app.settings.ae_title, app.settings.held_alert_hours) == (port, "GATEKEEPER", 48)
    assert app.needs_restart(new)  # still named by the next reload, until a restart


def test_an_unchanged_file_applies_nothing(app, settings_path):
    same = load(settings_path, environ={})
    assert app.reload(same) == [] and app.needs_restart(same) == []


def test_every_setting_has_its_settings_toml_key():
    keys = {App.setting_key(f.name) for f in dataclasses.fields(Settings)} - {"source"}
    assert keys == {d.key for d in DECLARED} | {"payers", "peers", "modalities", "audit.syslog", "hl7.stations",
                                                "forward"}
    assert {key for key, _, _ in App.RELOADABLE} <= keys


def test_a_broken_file_is_logged_and_the_running_settings_stay(app, settings_path, caplog):
    before = app.settings
    edit(settings_path, "reevaluate_minutes = 5", 'reevaluate_minutes = "five"')
    edit(settings_path, KNEE_LINE, "")
    assert reload_settings(app) == []
    assert app.settings is before
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert str(settings_path) in record.getMessage() and "jobs.reevaluate_minutes" in record.getMessage()


# ------------------------------------------------------------------------- end to end


def mwl_association(port: int):
    ae = AE(ae_title="MR1")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
    assert assoc.is_established
    return assoc


def find_accessions(assoc) -> list[str]:
    ds = Dataset()
    ds.AccessionNumber = ""
    step = Dataset()
    step.ScheduledProcedureStepStartDate = "20261201"
    ds.ScheduledProcedureStepSequence = [step]
    found, final = [], None
    for status, ident in assoc.send_c_find(ds, ModalityWorklistInformationFind):
        if status.Status in (0xFF00, 0xFF01):
            found.append(ident.AccessionNumber)
        else:
            final = status.Status
    assert final == 0x0000
    return sorted(found)


def hup(gw: Gateway, timeout: float = 20) -> list[str]:
    """Send SIGHUP; return the log lines it adds, up to the reload's last one (INFO
    "settings reloaded from ..." or ERROR "settings reload failed ...")."""
    seen = len(gw.log())
    gw.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert gw.process.poll() is None, f"serve exited {gw.process.returncode} on SIGHUP:\n{gw.log()}"
        lines = gw.log()[seen:].splitlines()
        for n, line in enumerate(lines):
            if "settings reloaded from" in line or "settings reload failed" in line:
                return lines[:n + 1]
        time.sleep(0.05)
    raise AssertionError(f"no reload in the log within {timeout}s of SIGHUP:\n{gw.log()}")




@pytest.mark.e2e
def test_sighup_applies_the_payer_policy_on_an_open_association(examples_gateway):
    gw = examples_gateway
    assoc = mwl_association(gw.port)
    try:
        assert find_accessions(assoc) == ["ACC1001", "ACC1003"]  # ACC1002 needs an auth it lacks
        edit(gw.settings, KNEE_LINE, "")
        *_, done = hup(gw)
        assert "INFO" in done and f"settings reloaded from {gw.settings}: applied payers" in done
        assert find_accessions(assoc) == ["ACC1001", "ACC1002", "ACC1003"]  # on the same association
    finally:
        assoc.release()
    assert not assoc.is_established and not assoc.is_aborted
    assert "association released: calling MR1" in gw.log()
    assert "association aborted" not in gw.log()


@pytest.mark.e2e
def test_sighup_with_a_broken_file_keeps_the_running_settings(examples_gateway):
    gw = examples_gateway
    good = gw.settings.read_text()
    edit(gw.settings, KNEE_LINE, "")
    edit(gw.settings, "requires_auth = []", 'requires_auth = ["7372"]')  # [payers.SELF_PAY]: not a CPT code
    *_, failed = hup(gw)
    assert "ERROR" in failed and "settings reload failed" in failed
    assert str(gw.settings) in failed and "payers.SELF_PAY" in failed
    assoc = mwl_association(gw.port)
    try:
        assert find_accessions(assoc) == ["ACC1001", "ACC1003"]  # the knee range still applies
    finally:
        assoc.release()
    gw.settings.write_text(good.replace(KNEE_LINE, ""))  # fixed: the next SIGHUP applies it
    assert "applied payers" in hup(gw)[-1]
    assoc = mwl_association(gw.port)
    try:
        assert find_accessions(assoc) == ["ACC1001", "ACC1002", "ACC1003"]
    finally:
        assoc.release()


@pytest.mark.e2e
def test_sighup_with_a_changed_port_says_it_needs_a_restart(examples_gateway):
    gw = examples_gateway
    edit(gw.settings, f"port = {gw.port}\n", f"port = {gw.port + 1}\n")
    for _ in range(2):  # said again on every reload until the restart
        lines = hup(gw)
        [warning] = [line for line in lines if "WARNING" in line]
        assert "server.port" in warning and "restart" in warning and "not applied" in warning
        assert "nothing to apply" in lines[-1]
    assoc = mwl_association(gw.port)  # still listening on the old port
    try:
        assert find_accessions(assoc) == ["ACC1001", "ACC1003"]
    finally:
        assoc.release()


@pytest.mark.e2e
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_sighup_as_soon_as_the_port_accepts_reloads_and_does_not_end_the_server(tmp_path, workers):
    """A service manager may reload the moment the port answers: the handlers are in place first."""
    import socket
    import subprocess

    from tests.e2e import echo_ok, gatekeeper_command

    gw = Gateway(tmp_path, server={"workers": workers})
    with open(gw.log_path, "ab") as log:
        gw.process = subprocess.Popen(gatekeeper_command() + ["serve"], env=gw.env, stdout=log,
                                      stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:  # no sleep: the SIGHUP goes within a millisecond of the port accepting
            assert gw.process.poll() is None and time.monotonic() < deadline, gw.log()
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", gw.port)) == 0:
                    break
        gw.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "settings reloaded from" not in gw.log():
            assert gw.process.poll() is None, f"serve exited {gw.process.returncode} on SIGHUP:\n{gw.log()}"
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.05)
        assert echo_ok(gw.port)
    finally:
        assert gw.stop() == 0, gw.log()
