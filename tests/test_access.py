"""The access decision (gateway.dicom.access), table-driven over plain settings; the
settings it reads; the wiring's SOP class -> service map; the bounded audit of refusals."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.dicom import access, permissions
from gateway.settings import SettingsError, from_dict, load
from tests.conftest import write_settings

SOURCE = Path("/srv/gw/settings.toml")
ALL = access.SERVICES


def settings(mode="echo-and-store", modalities=None, **server):
    raw = {"server": {"unknown_aets": mode, **server}, "modalities": modalities or {}}
    return from_dict(raw, SOURCE)


#: name -> address, for host names in [modalities] (the server uses DNS).
NAMES = {"mr1.example": ["10.1.2.3", "fd00::3"], "ct.example": ["10.1.2.9"]}


def resolve(host):
    return NAMES.get(host, [])


# -- unknown AEs: each service under each mode ------------------------------------------

EXPECTED_UNKNOWN = {
    "allow": set(ALL),
    "echo-and-store": {"echo", "store"},
    "refuse": set(),
}


@pytest.mark.parametrize("mode", sorted(EXPECTED_UNKNOWN))
@pytest.mark.parametrize("service", ALL)
def test_unknown_ae_per_service_per_mode(mode, service):
    d = access.decide("STRANGER", "10.9.9.9", service, settings(mode))
    assert d.allowed == (service in EXPECTED_UNKNOWN[mode])
    if not d.allowed:
        assert d.rule == "server.unknown_aets" and mode in d.reason and service in d.reason and "STRANGER" in d.reason


@pytest.mark.parametrize("mode, admitted", [("allow", True), ("echo-and-store", True), ("refuse", False)])
def test_unknown_ae_association_per_mode(mode, admitted):
    d = access.admit("STRANGER", "GATEKEEPER", "10.9.9.9", settings(mode))
    assert d.allowed == admitted
    if not admitted:
        assert d.rule == "server.unknown_aets" and d.rejection == (1, 1, 3)


# -- known AEs ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(EXPECTED_UNKNOWN))
@pytest.mark.parametrize("service", ALL)
def test_known_ae_without_services_may_use_every_service_whatever_the_mode(mode, service):
    s = settings(mode, {"MR1": {}})
    assert access.admit("MR1", "GATEKEEPER", "10.9.9.9", s)
    assert access.decide("MR1", "10.9.9.9", service, s)


@pytest.mark.parametrize("service", ALL)
def test_known_ae_with_services_gets_only_those(service):
    s = settings("allow", {"MR1": {"services": ["worklist", "mpps"]}})
    d = access.decide("MR1", "10.9.9.9", service, s)
    assert d.allowed == (service in ("worklist", "mpps"))
    if not d.allowed:
        # listed: its own services, even where the unknown-AE mode would allow more
        assert d.rule == "modalities.services" and "modalities.MR1.services" in d.reason
        assert "granted: mpps, worklist" in d.reason


def test_services_empty_is_none_absent_is_all():
    s = settings("allow", {"EMPTY": {"services": []}, "ABSENT": {}})
    empty = access.admit("EMPTY", "GATEKEEPER", "10.0.0.1", s)
    assert not empty and empty.rule == "modalities.services" and empty.rejection == (1, 1, 3)
    assert not access.decide("EMPTY", "10.0.0.1", "echo", s)
    assert access.admit("ABSENT", "GATEKEEPER", "10.0.0.1", s)
    assert all(access.decide("ABSENT", "10.0.0.1", x, s) for x in ALL)


@pytest.mark.parametrize("host, address, allowed", [
    ("10.1.2.3", "10.1.2.3", True),
    ("10.1.2.3", "10.1.2.4", False),  # known AE, wrong host
    ("10.1.2.3", "::ffff:10.1.2.3", True),  # the same IPv4 address on a dual-stack socket
    ("mr1.example", "10.1.2.3", True),  # a name resolving to the address
    ("mr1.example", "fd00::3", True),
    ("mr1.example", "10.1.2.9", False),  # resolves, but to other addresses
    ("nowhere.example", "10.1.2.3", False),  # does not resolve
    ("MR1.EXAMPLE", "10.1.2.3", False),  # resolver given the name as written: not in the table
])
def test_host_rule(host, address, allowed):
    s = settings("allow", {"MR1": {"host": host}})
    d = access.admit("MR1", "GATEKEEPER", address, s, resolve)
    assert d.allowed == allowed
    assert access.decide("MR1", address, "worklist", s, resolve).allowed == allowed
    if not allowed:
        assert d.rule == "modalities.host" and d.rejection == (1, 1, 3) and address in d.reason and host in d.reason


def test_wrong_host_is_refused_even_where_an_unknown_ae_would_be_allowed():
    s = settings("allow", {"MR1": {"host": "10.1.2.3"}})
    assert not access.decide("MR1", "10.7.7.7", "echo", s)
    assert access.decide("OTHER", "10.7.7.7", "echo", s)


def test_titles_are_compared_without_padding():
    s = settings("refuse", {"MR1": {}})
    assert access.admit("MR1 ", "GATEKEEPER  ", "10.0.0.1", s)
    assert access.decide(" MR1", "10.0.0.1", "store", s)
    assert not access.admit("mr1", "GATEKEEPER", "10.0.0.1", s)  # AE titles are case-sensitive


# -- called AE ---------------------------------------------------------------------------


@pytest.mark.parametrize("called, extra, check, admitted", [
    ("GATEKEEPER", [], True, True),
    ("PACS", [], True, False),
    ("OLDNAME", ["OLDNAME"], True, True),
    ("PACS", ["OLDNAME"], True, False),
    ("PACS", [], False, True),  # the check turned off
    ("", [], True, False),
])
def test_called_ae(called, extra, check, admitted):
    s = settings("allow", extra_ae_titles=extra, check_called_ae=check)
    d = access.admit("MR1", called, "10.0.0.1", s)
    assert d.allowed == admitted
    if not admitted:
        assert d.rule == "server.ae_title" and d.rejection == (1, 1, 7)


def test_called_ae_is_checked_before_the_caller():
    d = access.admit("STRANGER", "PACS", "10.0.0.1", settings("refuse"))
    assert d.rule == "server.ae_title"


def test_a_service_nobody_claims_is_refused():
    d = access.decide("MR1", "10.0.0.1", None, settings("allow"))
    assert not d and d.rule == "service"


# -- the SOP class -> service map of the wiring --------------------------------------------


@pytest.mark.parametrize("uid, service", [
    ("1.2.840.10008.1.1", "echo"),
    ("1.2.840.10008.5.1.4.31", "worklist"),
    ("1.2.840.10008.3.1.2.3.3", "mpps"),
    ("1.2.840.10008.1.20.1", "commitment"),
    ("1.2.840.10008.5.1.4.1.1.2", "store"),  # CT Image Storage
    ("1.2.840.10008.5.1.4.1.1.4", "store"),  # MR Image Storage
    ("1.2.840.10008.5.1.4.1.2.2.1", "qr"),  # Study Root FIND
    ("1.2.840.10008.5.1.4.1.2.2.2", "qr"),  # Study Root MOVE
    ("1.2.840.10008.5.1.4.1.2.1.3", "qr"),  # Patient Root GET
    ("1.2.3.4.5", None),
    ("", None),
])
def test_service_of(uid, service):
    assert permissions.service_of(uid) == service


# -- the audit of refusals is bounded under a flood ---------------------------------------------


class _Assoc:
    def __init__(self, address):
        self.requestor = SimpleNamespace(ae_title="STRANGER", address=address, port=1234, gk_called_ae="GATEKEEPER")
        self.acceptor = SimpleNamespace(ae_title="GATEKEEPER")


class _Metrics:
    def __init__(self):
        self.refused, self.unaudited = [], []

    def access_refused(self, rule, service):
        self.refused.append((rule, service))

    def refusal_not_audited(self, rule):
        self.unaudited.append(rule)


def test_refusals_are_audited_once_per_address_and_rule_a_minute(app, monkeypatch):
    from infra.audit import AuditEvent

    now = [1000.0]
    metrics = _Metrics()
    refusals = permissions.Refusals(app.db, app.clock, metrics, window=60, monotonic=lambda: now[0])
    unknown = access.Decision(False, "server.unknown_aets", "not known")
    host = access.Decision(False, "modalities.host", "wrong host")
    for _ in range(500):
        refusals.record(_Assoc("10.0.0.1"), "association.refused", unknown, None, "A-ASSOCIATE-RJ")
    refusals.record(_Assoc("10.0.0.1"), "operation.refused", host, "worklist", "C-FIND")  # another rule
    refusals.record(_Assoc("10.0.0.2"), "association.refused", unknown, None, "A-ASSOCIATE-RJ")  # another address
    now[0] += 59.9
    refusals.record(_Assoc("10.0.0.1"), "association.refused", unknown, None, "A-ASSOCIATE-RJ")
    now[0] += 0.2  # a minute after the first
    refusals.record(_Assoc("10.0.0.1"), "association.refused", unknown, None, "A-ASSOCIATE-RJ")
    events = list(AuditEvent.select().where(AuditEvent.action.in_(["association.refused", "operation.refused"])))
    assert len(events) == 4
    assert len(metrics.refused) == 504 and len(metrics.unaudited) == 500
    import json
    op = next(e for e in events if e.action == "operation.refused")
    assert (op.user, op.subject, op.reason) == ("STRANGER", "STRANGER", "wrong host")
    assert json.loads(op.detail) == {"address": "10.0.0.1", "called_ae": "GATEKEEPER", "rule": "modalities.host",
                                     "service": "worklist"}


# -- settings ----------------------------------------------------------------------------------


def test_modalities_in_the_issues_form(tmp_path):
    path = write_settings(tmp_path, unknown_aets="refuse", extra=(
        '[modalities.MR9]\nhost = "10.1.2.3"\n'
        'services = ["echo", "worklist", "mpps", "store", "commitment", "qr"]\n'
        '[modalities.US9]\nservices = []\n'))
    s = load(path, environ={})
    assert s.modalities["MR9"].host == "10.1.2.3" and s.modalities["MR9"].services == frozenset(ALL)
    assert s.modalities["US9"].services == frozenset() and s.modalities["US9"].host is None
    assert s.modalities["CT1"].services is None  # shipped: every service, any address
    assert s.unknown_aets == "refuse"


@pytest.mark.parametrize("extra, server, words", [
    ('[modalities.MR9]\nservices = ["echo", "print"]\n', {}, "unknown services ['print']"),
    ('[modalities.MR9]\nport = 104\n', {}, "unknown keys ['port']"),
    ('[modalities.MR9]\nhost = ""\n', {}, "modalities.MR9.host"),
    ('[modalities.MR9]\nservices = "echo"\n', {}, "modalities.MR9.services must be a list"),
    ('[modalities.A_VERY_LONG_AE_TITLE]\n', {}, "modalities.A_VERY_LONG_AE_TITLE"),
    ("", {"unknown_aets": '"deny"'}, 'server.unknown_aets is \'deny\'; use "allow"'),
    ("", {"tls_cert": '"server.pem"'}, "server.tls_cert and server.tls_key go together"),
    ("", {"tls_ca": '"ca.pem"'}, "server.tls_ca is set but server.tls_cert is not"),
    ("", {"tls_cert": '"s.pem"', "tls_key": '"s.key"', "tls_port": "11112"}, "TLS needs a port of its own"),
    ("", {"tls_port": "70000"}, "server.tls_port is 70000"),
    ("", {"extra_ae_titles": '["OK", "A_VERY_LONG_AE_TITLE"]'}, "server.extra_ae_titles"),
])
def test_access_settings_errors_name_the_key(tmp_path, extra, server, words):
    path = write_settings(tmp_path, port=11112, extra=extra, server=server)
    with pytest.raises(SettingsError) as err:
        load(path, environ={})
    assert words in str(err.value) and str(path) in str(err.value)


def test_the_old_allow_list_names_the_new_form(tmp_path):
    path = write_settings(tmp_path)
    path.write_text(path.read_text().replace("[server]\n", '[server]\nallowed_calling_aets = ["MR1"]\n', 1))
    with pytest.raises(SettingsError) as err:
        load(path, environ={})
    message = str(err.value)
    assert "server.allowed_calling_aets is no longer a setting" in message
    assert "[modalities.MR1]" in message and 'server.unknown_aets = "refuse"' in message


def test_tls_paths_resolve_from_the_files_folder(tmp_path):
    path = write_settings(tmp_path, server={"tls_cert": '"tls/server.pem"', "tls_key": '"tls/server.key"',
                                            "tls_ca": '"/etc/ca.pem"'})
    s = load(path, environ={})
    assert s.tls_cert == tmp_path / "tls" / "server.pem" and s.tls_key == tmp_path / "tls" / "server.key"
    assert s.tls_ca == Path("/etc/ca.pem")


def test_any_station_aets(tmp_path):
    path = write_settings(tmp_path)
    path.write_text(path.read_text().replace("any_station_aets = []", 'any_station_aets = ["CT2", "MR1"]'))
    assert load(path, environ={}).any_station_aets == frozenset({"CT2", "MR1"})


# -- every service handler is behind the decision (one place in the wiring) -----------------------


def _event(calling, sop_class):
    assoc = _Assoc("10.0.0.1")
    assoc.requestor.ae_title = calling
    return SimpleNamespace(assoc=assoc, context=SimpleNamespace(abstract_syntax=sop_class))


def _guarded(s, event_type):

    calls = []

    def handler(event, *args):
        calls.append(args)
        return "handled"

    metrics = _Metrics()
    refusals = permissions.Refusals(None, None, metrics, monotonic=lambda: 0.0)
    refusals._take_audit_slot = lambda address, rule: False  # no database here
    [(bound_type, wrapped, args)] = permissions.Permissions(s, refusals).guarded([(event_type, handler, ["x"])])
    assert bound_type is event_type
    return wrapped, args, calls, metrics


@pytest.mark.parametrize("event_name, sop_class, shape", [
    ("EVT_C_FIND", "1.2.840.10008.5.1.4.1.2.2.1", "find"),  # Study Root FIND: a qr service added later
    ("EVT_C_GET", "1.2.840.10008.5.1.4.1.2.2.3", "get"),
    ("EVT_C_FIND", "1.2.840.10008.5.1.4.31", "find"),
    ("EVT_N_CREATE", "1.2.840.10008.3.1.2.3.3", "n"),
    ("EVT_N_ACTION", "1.2.840.10008.1.20.1", "n"),
])
def test_a_refused_operation_never_reaches_its_handler(event_name, sop_class, shape):
    from pynetdicom import evt

    wrapped, args, calls, metrics = _guarded(settings("echo-and-store"), getattr(evt, event_name))
    answer = wrapped(_event("STRANGER", sop_class), *args)
    assert calls == []
    if shape == "find":
        [(status, identifier)] = list(answer)
    elif shape == "get":
        count, (status, identifier) = list(answer)
        assert count == 1
    else:
        status, identifier = answer
    assert status.Status == 0x0124 and identifier is None and "server.unknown_aets" in status.ErrorComment
    assert metrics.refused == [("server.unknown_aets", permissions.service_of(sop_class))]


def test_an_allowed_operation_reaches_its_handler_with_its_arguments():
    from pynetdicom import evt

    s = settings("refuse", {"QRONLY": {"services": ["qr"]}})
    wrapped, args, calls, _ = _guarded(s, evt.EVT_C_FIND)
    assert wrapped(_event("QRONLY", "1.2.840.10008.5.1.4.1.2.2.1"), *args) == "handled" and calls == [("x",)]
    refused = list(wrapped(_event("QRONLY", "1.2.840.10008.5.1.4.31"), *args))  # the worklist: not granted
    assert refused[0][0].Status == 0x0124 and len(calls) == 1


def test_a_c_move_refusal_is_a_failure_before_any_sub_operation():
    from pynetdicom import evt

    wrapped, args, calls, _ = _guarded(settings("echo-and-store"), evt.EVT_C_MOVE)
    with pytest.raises(PermissionError):  # pynetdicom answers 0xC511 (unable to process), contacts no destination
        next(wrapped(_event("STRANGER", "1.2.840.10008.5.1.4.1.2.2.2"), *args))
    assert calls == []


def test_every_service_event_is_guarded():
    from pynetdicom import evt

    s = settings("allow")
    bound = [(t, (lambda event: None), []) for t in (evt.EVT_C_ECHO, evt.EVT_C_STORE, evt.EVT_CONN_OPEN)]
    out = permissions.Permissions(s, permissions.Refusals(None, None)).guarded(bound)
    assert [fn is orig[1] for fn, orig in zip((e[1] for e in out), bound)] == [False, False, True]
