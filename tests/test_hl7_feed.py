"""The RIS feed's use case through the HL7 front end, in process (no socket): each message
applied whole or not at all, answered with the right code, kept for a message sent again."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest

from gateway.app import MODELS, open_app
from gateway.hl7.listener import Receiver
from gateway.hl7.message import field
from gateway.settings import load
from infra import schema
from infra.audit import AuditEvent
from infra.db import open_database
from tests.conftest import EXAMPLE_NOW, Clock, import_auths, write_settings
from tests.hl7_messages import edited, example, hl7_settings
from worklist.models import FeedAnswerRow, OrderRow
from worklist.orders import Auth


@pytest.fixture(params=["sqlite", "postgres"])
def feed_app(request, tmp_path):
    """An app with the tests' [hl7] settings on a fresh SQLite file, and on PostgreSQL."""
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        empty(url)
    app = open_app(load(hl7_settings(write_settings(tmp_path, database_url=url)), environ={}),
                   clock=Clock(EXAMPLE_NOW))
    yield app
    app.close()


def empty(url: str) -> None:
    """Drop every table of the product from the PostgreSQL database of the tests."""
    db = open_database(url)
    db.connect()
    for table in [m._meta.table_name for m in MODELS] + [schema.VERSION_TABLE]:
        db.execute_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    db.close()


@pytest.fixture
def receiver(feed_app) -> Receiver:
    return Receiver(feed_app)


def answer(receiver: Receiver, data: bytes) -> hl7.Message:
    text = receiver.answer(data).decode("latin-1")
    assert text.endswith("\r") and "\n" not in text
    return hl7.parse(text)


def code(ack: hl7.Message) -> str:
    return str(ack.segment("MSA")(1))


def errors(ack: hl7.Message) -> list[tuple[str, str]]:
    """(location, code) of each ERR, in the 2.5 layout or the 2.3.1 one."""
    found = []
    for err in ack.segments("ERR") if "\rERR|" in str(ack) else []:
        if field(err, 2):
            found.append(("^".join(field(err, 2, 1, c) for c in (1, 2, 3)), field(err, 3, 1, 1)))
        else:
            found.append(("^".join(field(err, 1, 1, c) for c in (1, 2, 3)), field(err, 1, 1, 4, 1)))
    return found


def snapshot() -> list:
    return [tuple(r) for r in OrderRow.select().order_by(OrderRow.id).tuples()]


def send_all(receiver, *names):
    return [code(answer(receiver, example(n))) for n in names]


# ---------------------------------------------------------------- orders


def test_nw_creates_the_order_and_the_ack_says_so(receiver, feed_app):
    ack = answer(receiver, example("orm_nw_v231"))
    assert code(ack) == "AA" and str(ack.segment("MSA")(2)) == "RIS000101"
    msh = ack.segment("MSH")
    assert (str(msh(3)), str(msh(5)), str(msh(6)), str(msh(9)), str(msh(11)), str(msh(12))) == (
        "GATEKEEPER", "RIS", "NORTHSIDE", "ACK^O01^ACK", "P", "2.3.1")
    assert str(msh(10)) and str(msh(10)) != "RIS000101"
    order = feed_app.gate.find_order("ACC6001")
    assert (order.status, order.patient_name, order.station_ae) == ("scheduled", "MÜLLER^JOSÉ^A^DR^JR", "MR1")
    events = {(e.action, e.subject) for e in AuditEvent.select()}
    assert ("order.feed", "ACC6001") in events
    detail = [e for e in AuditEvent.select() if e.action == "order.feed"][0]
    assert '"RIS000101"' in detail.detail and detail.user == "hl7:RIS^NORTHSIDE"


def test_a_message_sent_again_gets_the_first_answer_and_changes_nothing(receiver, feed_app):
    first = receiver.answer(example("orm_nw_v231"))
    # the same control ID from another sender is another message
    other = edited("orm_nw_v231", ("|RIS|NORTHSIDE|", "|RIS2|NORTHSIDE|"))
    assert code(answer(receiver, other)) == "AA"  # the same order again: accepted, nothing to change
    receiver.answer(example("orm_xo_v231"))
    before, audited = snapshot(), AuditEvent.select().count()
    again = receiver.answer(example("orm_nw_v231"))
    assert again == first  # the same ACK, its MSH-10 too
    assert snapshot() == before and AuditEvent.select().count() == audited
    assert FeedAnswerRow.select().count() == 3


def test_an_error_answer_is_kept_too(receiver):
    bad = edited("orm_nw_v231", ("1234567893^SMITH", "1234567890^SMITH"))
    first = receiver.answer(bad)
    assert b"MSA|AE|" in first
    fixed = edited("orm_nw_v231", ("|1234567893^SMITH", "|1234567893^SMITH"))  # the same message ID, now right
    assert receiver.answer(fixed) == first and OrderRow.select().count() == 0


def test_nw_again_with_other_content_is_a_duplicate_key(receiver, feed_app):
    assert send_all(receiver, "orm_nw_v231") == ["AA"]
    before = snapshot()
    other = edited("orm_nw_v231", ("70553^MRI BRAIN", "70551^MRI BRAIN"), control_id="RIS000199")
    ack = answer(receiver, other)
    assert code(ack) == "AE" and errors(ack) == [("OBR^1^18", "205")]
    assert snapshot() == before


def test_xo_changes_only_the_fields_it_gives(receiver, feed_app):
    send_all(receiver, "orm_nw_v231")
    before = feed_app.gate.find_order("ACC6001")
    assert send_all(receiver, "orm_xo_v231") == ["AA"]
    after = feed_app.gate.find_order("ACC6001")
    assert after.scheduled_start == dt.datetime(2026, 12, 1, 10, 30)
    assert (after.patient_name, after.cpt, after.station_ae, after.study_instance_uid) == (
        before.patient_name, before.cpt, before.station_ae, before.study_instance_uid)


@pytest.mark.parametrize("orc, status", [("ORC|CA|PLC6002|FIL6002||CA", "cancelled"),
                                         ("ORC|OC|PLC6002|FIL6002||CA", "cancelled"),
                                         ("ORC|DC|PLC6002|FIL6002||", "discontinued"),
                                         ("ORC|SC|PLC6002|FIL6002||IP", "in-progress"),
                                         ("ORC|SC|PLC6002|FIL6002||CM", "completed")])
def test_status_controls(receiver, feed_app, orc, status):
    send_all(receiver, "omi_nw_v251")
    assert code(answer(receiver, edited("orm_ca_v231", ("ORC|CA|PLC6002|FIL6002||CA", orc)))) == "AA"
    assert feed_app.gate.find_order("ACC6002").status == status


@pytest.mark.parametrize("name", ["orm_xo_v231", "orm_ca_v231"])
def test_a_change_for_an_unknown_accession_is_an_unknown_key(receiver, name):
    ack = answer(receiver, example(name))
    assert code(ack) == "AE" and errors(ack) == [("OBR^1^18", "204")]
    assert snapshot() == []


@pytest.mark.parametrize("change, location, err", [
    (("|ACC6001|RP6001", "||RP6001"), "OBR^1^3", None),  # falls back to OBR-3: applied as FIL6001
    (("1234567893^SMITH", "1234567890^SMITH"), "ORC^1^12", "102"),
    (("|19750412|", "|19751342|"), "PID^1^7", "102"),
    (("|19750412|", "||"), "PID^1^7", "101"),
    (("^^^20261201093000||", "^^^2026120109||"), "OBR^1^27", "102"),
    (("G43.909^Migraine", "G43909X^Migraine"), "DG1^1^3", "102"),
    (("|M|", "|X|"), "PID^1^8", "103"),
    (("ACME_HEALTH^ACME", "^ACME"), "IN1^1^3", "101"),
])
def test_bad_content_is_an_error_naming_segment_and_field(receiver, change, location, err):
    ack = answer(receiver, edited("orm_nw_v231", change, *([change] if location == "OBR^1^27" else [])))
    if err is None:
        assert code(ack) == "AA"
        return
    assert code(ack) == "AE" and errors(ack) == [(location, err)]
    assert location in str(ack.segment("ERR")) and snapshot() == []


def test_a_message_without_any_accession_names_where_it_was_looked_for(receiver):
    data = edited("orm_nw_v231", ("|ACC6001|RP6001", "||RP6001"), ("|PLC6001|FIL6001|70553", "|PLC6001||70553"))
    ack = answer(receiver, data)
    assert code(ack) == "AE" and errors(ack) == [("OBR^1^3", "101")]


def test_a_message_is_applied_whole_or_not_at_all(receiver):
    """Two orders, the second bad: neither is created."""
    text = example("omi_nw_v251").decode("utf-8")
    orc = [s for s in text.split("\r") if s.startswith(("ORC", "TQ1", "OBR", "IPC"))]
    second = [s.replace("ACC6002", "ACC6003").replace("1456789019", "1456789010") for s in orc]
    data = (text + "\r".join(second) + "\r").encode("utf-8")
    ack = answer(receiver, data)
    assert code(ack) == "AE" and errors(ack) == [("ORC^2^12", "102")]
    assert snapshot() == []


@pytest.mark.parametrize("change, err", [
    (("ORM^O01", "SIU^S12"), "200"), (("ORM^O01", "ORM^O02"), "201"), (("|RIS000101|P|", "|RIS000101|T|"), "202"),
    (("|P|2.3.1|", "|P|2.2|"), "203"), (("|RIS000101|", "||"), "101"),
])
def test_refused_messages_get_ar(receiver, change, err):
    ack = answer(receiver, edited("orm_nw_v231", change))
    assert code(ack) == "AR" and [e[1] for e in errors(ack)] == [err]
    assert snapshot() == [] and FeedAnswerRow.select().count() == 0


def test_no_msh_gets_ar_100(receiver):
    ack = answer(receiver, b"PID|1||MRN1\rOBR|1\r")
    assert code(ack) == "AR" and str(ack.segment("MSA")(2)) == "" and errors(ack) == [("MSH^1^1", "100")]


def test_allowed_senders(tmp_path):
    settings = hl7_settings(write_settings(tmp_path))
    settings.write_text(settings.read_text().replace("allowed_senders = []", 'allowed_senders = ["RIS^SOUTHSIDE", "PACSRIS"]'))
    app = open_app(load(settings, environ={}), clock=Clock(EXAMPLE_NOW))
    try:
        receiver = Receiver(app)
        assert code(answer(receiver, example("orm_nw_v231"))) == "AR"
        assert code(answer(receiver, edited("orm_nw_v231", ("|RIS|NORTHSIDE|", "|RIS|SOUTHSIDE|")))) == "AA"
        assert code(answer(receiver, edited("omi_nw_v251", ("|RIS|NORTHSIDE|", "|PACSRIS|ANY|")))) == "AA"
    finally:
        app.close()


def test_the_ack_of_a_231_message_uses_err1(receiver):
    text = receiver.answer(edited("orm_nw_v231", ("|19750412|", "|19751342|"))).decode("latin-1")
    assert "\rERR|PID^1^7^102&Data type error&HL70357\r" in text
    text = receiver.answer(edited("omi_nw_v251", ("|19620705|", "|1962|"))).decode("utf-8")
    assert "\rERR||PID^1^7|102^Data type error^HL70357|E||||" in text


def test_an_ack_escapes_what_it_quotes(receiver):
    text = receiver.answer(edited("omi_nw_v251", ("|19620705|", "|19\\T\\62\\R\\05|"))).decode("utf-8")
    err = [s for s in text.split("\r") if s.startswith("ERR")][0]
    assert "\\T\\" in err and "\\R\\" in err and "\\S\\" in err  # PID^1^7 quoted, the value too
    assert field(hl7.parse(text).segment("ERR"), 8).startswith("PID^1^7 (patient.birth_date) '19&62~05'")


# ---------------------------------------------------------------- reports and patients


def test_oru_sets_the_report_status_audited(receiver, feed_app):
    send_all(receiver, "orm_nw_v231")
    assert send_all(receiver, "oru_final_v251") == ["AA"]
    order = feed_app.gate.find_order("ACC6001")
    assert (order.report_status, order.report_status_at) == ("final", dt.datetime(2026, 12, 1, 14, 55))
    event = AuditEvent.get(AuditEvent.action == "order.report_status")
    assert event.subject == "ACC6001" and "RIS000105" in event.reason and '"final"' in event.detail


def test_oru_for_an_unknown_order_is_an_unknown_key(receiver):
    ack = answer(receiver, example("oru_final_v251"))
    assert code(ack) == "AE" and errors(ack) == [("OBR^1^18", "204")]


def test_a08_updates_every_open_order_of_the_patient(receiver, feed_app):
    send_all(receiver, "orm_nw_v231")
    second = edited("omi_nw_v251", ("MRN6002^^^NORTHSIDE^MR", "MRN6001^^^NORTHSIDE^MR"))
    assert code(answer(receiver, second)) == "AA"
    cancelled = edited("orm_ca_v231", ("ORC|CA", "ORC|CA"))
    assert code(answer(receiver, cancelled)) == "AA"  # ACC6002 is cancelled: no longer open
    assert send_all(receiver, "adt_a08_v231") == ["AA"]
    assert feed_app.gate.find_order("ACC6001").birth_date == dt.date(1975, 4, 21)
    assert feed_app.gate.find_order("ACC6001").patient_name == "MÜLLER^JOSÉ^ANTON^DR^JR"
    assert feed_app.gate.find_order("ACC6002").birth_date == dt.date(1962, 7, 5)  # closed: left as it was
    assert AuditEvent.select().where(AuditEvent.action == "order.patient_update").count() == 1


def test_a08_with_a_bad_birth_date_changes_nothing(receiver):
    send_all(receiver, "orm_nw_v231")
    before = snapshot()
    ack = answer(receiver, edited("adt_a08_v231", ("|19750421|", "|19750431|")))
    assert code(ack) == "AE" and errors(ack) == [("PID^1^7", "102")]
    assert snapshot() == before


def test_a40_moves_every_order_and_regates_them(receiver, feed_app):
    send_all(receiver, "orm_nw_v231")
    # an auth on file for the surviving ID only: the merge makes the order servable
    import_auths(feed_app, [Auth("PA-6001", "ACME_HEALTH", "MRN6100", ("70553",), "1987654328", "1234567893",
                                 dt.date(2026, 11, 1), dt.date(2026, 12, 31))])
    feed_app.gate.reevaluate()
    assert OrderRow.get().last_decision == "withheld"
    assert send_all(receiver, "adt_a40_v251") == ["AA"]
    order = feed_app.gate.find_order("ACC6001")
    assert (order.patient_id, order.patient_issuer) == ("MRN6100", "NORTHSIDE")
    assert OrderRow.get().last_decision == "served"
    actions = [(e.action, e.user) for e in AuditEvent.select().order_by(AuditEvent.id)]
    assert ("order.patient_merge", "hl7:RIS^NORTHSIDE") in actions and ("worklist.served", "hl7:RIS^NORTHSIDE") in actions


def test_a40_onto_itself_is_refused(receiver):
    ack = answer(receiver, edited("adt_a40_v251", ("MRG|MRN6001", "MRG|MRN6100")))
    assert code(ack) == "AE" and errors(ack) == [("MRG^1^1", "102")]


def test_an_application_error_is_an_ae_and_changes_nothing(receiver, monkeypatch):
    from worklist import records

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(records, "upsert_orders", broken)
    ack = answer(receiver, example("orm_nw_v231"))
    assert code(ack) == "AE" and errors(ack) == [("MSH^1^10", "207")]
    assert "disk on fire" not in str(ack) and snapshot() == [] and FeedAnswerRow.select().count() == 0


def test_the_same_message_on_two_connections_at_once_is_applied_once(receiver, feed_app, monkeypatch):
    """The second arrives while the first is uncommitted: it sees no answer yet, applies, and
    fails on the answer's key; it is rolled back and gets the first answer."""
    from worklist import records

    first = receiver.answer(example("orm_nw_v231"))
    real = records.feed_answer
    calls = []

    def not_yet(*key):
        calls.append(key)
        return None if len(calls) == 1 else real(*key)  # the first look sees nothing, as a race would

    monkeypatch.setattr(records, "feed_answer", not_yet)
    before = snapshot()
    assert receiver.answer(example("orm_nw_v231")) == first
    assert snapshot() == before and FeedAnswerRow.select().count() == 1 and len(calls) == 2
