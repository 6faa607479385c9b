"""``gatekeeper report``: the figures against a scenario with known counts, pure and end to end."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import pytest

from tests.conftest import import_auths, import_orders

from gateway.cli.main import main
from gateway.cli.workflow import as_text
from store.report import OrderFact, StudyFact, as_json, figures
from store.models import FindingRow, StudyRow
from store.states import ARCHIVED, HELD, PURGED, REJECTED
from worklist.models import MppsRow, OrderRow, OverrideRow
from worklist.orders import Auth, Order

NOW = dt.datetime(2026, 11, 30, 8, 0)
SINCE = dt.date(2026, 11, 1)

ORDER = Order(
    accession_number="A1", patient_id="MRN1", patient_name="DOE^JANE", birth_date=dt.date(1980, 2, 3),
    cpt="70553", modality="MR", scheduled_start=dt.datetime(2026, 12, 1, 9, 30), station_ae="MR1",
    ordering_npi="1234567893", facility_npi="1987654328", payer_id="ACME",
)
AUTH = Auth(
    auth_number="PA-1", payer_id="ACME", patient_id="MRN1", cpt_codes=("70553",),
    facility_npi="1987654328", ordering_npi="1234567893",
    valid_from=dt.date(2026, 11, 20), valid_to=dt.date(2026, 12, 20), units=3,
)


def at(day: int, hour: int = 0, month: int = 11) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, 0)


def study(uid: str, state: str, received: dt.datetime, *, held_at=None, changed=None, holds=(), warns=()) -> None:
    StudyRow.create(study_instance_uid=uid, state=state, first_received_at=received, last_received_at=received,
                    held_at=held_at, state_changed_at=changed or received, instance_count=1)
    for code in holds:
        FindingRow.create(study_instance_uid=uid, sop_instance_uid=uid + ".1", code=code, holds=True, found_at=received)
    for code in warns:
        FindingRow.create(study_instance_uid=uid, sop_instance_uid=uid + ".1", code=code, holds=False, found_at=received)


def mpps(uid: str, status: str, updated: dt.datetime) -> None:
    MppsRow.create(sop_instance_uid=uid, accession_number="A5", status=status, created_at=updated, updated_at=updated)


@pytest.fixture
def scenario(app, clock):
    """Known counts: 8 orders in the period (5 open: 3 served, 2 withheld), 2 overrides on 1 order,
    6 studies received (2 clean), 4 held (1 still held), 2 MPPS completed, 2 auth units used."""
    clock.now = NOW
    import_orders(app, [
        ORDER,                                                                 # served on PA-1
        replace(ORDER, accession_number="A2", cpt="71046"),                    # served, no auth needed
        replace(ORDER, accession_number="A3", patient_id="MRN3"),              # withheld: AUTH_MISSING
        replace(ORDER, accession_number="A4", patient_id="MRN4"),              # served by override
        replace(ORDER, accession_number="A5", status="completed", scheduled_start=at(20, 9)),
        replace(ORDER, accession_number="A6", status="cancelled", scheduled_start=at(25, 9)),
        replace(ORDER, accession_number="A7", patient_id="MRN7", ordering_npi="1234567890"),  # INVALID_NPI + AUTH_MISSING
        replace(ORDER, accession_number="A8", status="completed", scheduled_start=at(21, 9)),
        replace(ORDER, accession_number="A0", scheduled_start=at(15, 9, month=10)),  # before the period
    ], at(1, month=10))
    import_auths(app, [AUTH], at(1, month=10))
    OrderRow.update(auth_unit_used="PA-1").where(OrderRow.accession_number.in_(["A5", "A8"])).execute()
    for when, acc in ((at(29, 7), "A4"), (at(29, 9), "A4"), (at(15, 9, month=10), "A0")):
        OverrideRow.create(accession_number=acc, user="dr.lee", reason="stroke protocol", at=when)

    study("1.2.1", ARCHIVED, at(2))                                                   # clean
    study("1.2.2", ARCHIVED, at(3), warns=["STUDY_UID_MISMATCH"])                     # clean (a warning only)
    study("1.2.3", HELD, at(29, 8), held_at=at(29, 8), holds=["PATIENT_NAME_MISMATCH"],
          warns=["STUDY_UID_MISMATCH"])                                               # still held: 24 h
    study("1.2.4", ARCHIVED, at(20, 10), held_at=at(20, 10), changed=at(20, 16),
          holds=["PATIENT_ID_MISMATCH"])                                              # released after 6 h
    study("1.2.5", REJECTED, at(10), held_at=at(10), changed=at(10, 12),
          holds=["PATIENT_ID_MISMATCH", "BIRTH_DATE_MISMATCH"])                       # rejected after 12 h
    study("1.2.6", PURGED, at(2), held_at=at(2), changed=at(29), holds=["ACCESSION_UNKNOWN"])  # purged: no median
    study("1.2.7", HELD, at(1, month=10), held_at=at(1, month=10), holds=["SEX_MISMATCH"])     # before the period

    mpps("1.3.1", "COMPLETED", at(20, 10))
    mpps("1.3.2", "COMPLETED", at(21, 10))
    mpps("1.3.3", "IN PROGRESS", at(29, 10))
    mpps("1.3.4", "COMPLETED", at(1, month=10))  # before the period
    return app


def test_report_figures_from_the_database(scenario):
    r = scenario.store.report(SINCE)
    assert r.orders_total == 8
    assert r.orders_by_status == {"scheduled": 5, "in-progress": 0, "completed": 2, "cancelled": 1, "discontinued": 0}
    assert (r.open_orders, r.served, r.withheld) == (5, 3, 2)
    assert r.served_by_basis == {"auth": 1, "no-auth-needed": 1, "override": 1}
    assert r.withheld_by_reason["AUTH_MISSING"] == 2 and r.withheld_by_reason["INVALID_NPI"] == 1
    assert sum(r.withheld_by_reason.values()) == 3
    assert (r.overrides, r.overridden_orders) == (2, 1)
    assert r.studies_received == 6
    assert r.studies_by_state == {"archived": 3, "held": 1, "rejected": 1, "purged": 1}
    assert (r.clean, r.clean_match_rate) == (2, 0.3333)
    assert (r.held_studies, r.still_held, r.median_hours_held) == (4, 1, 12.0)
    assert r.held_by_reason["PATIENT_ID_MISMATCH"].studies == 2
    assert r.held_by_reason["PATIENT_ID_MISMATCH"].median_hours_held == 9.0
    assert (r.held_by_reason["PATIENT_NAME_MISMATCH"].studies, r.held_by_reason["PATIENT_NAME_MISMATCH"].median_hours_held) == (1, 24.0)
    assert r.held_by_reason["ACCESSION_UNKNOWN"].studies == 1
    assert r.held_by_reason["ACCESSION_UNKNOWN"].median_hours_held is None  # purged: the hold's end is unknown
    assert r.held_by_reason["STUDY_UID_MISMATCH"].studies == 0  # warns, never holds
    assert r.held_by_reason["SEX_MISMATCH"].studies == 0  # received before the period
    assert r.mpps_completed == 2
    assert (r.auth_units_used, r.auths_drawn_on) == (2, 1)


@pytest.fixture
def cli_env(monkeypatch):
    monkeypatch.delenv("GATEKEEPER_DATABASE_URL", raising=False)
    monkeypatch.setenv("GATEKEEPER_NOW", NOW.isoformat())


def test_report_json_from_the_command_line(scenario, settings_path, cli_env, capsys):
    assert main(["--config", str(settings_path), "report", "--since", "2026-11-01", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"since", "generated_at", "orders", "overrides", "studies", "holds", "mpps", "auth_units",
                         "reports", "forwarding"}
    assert data["forwarding"] == {"backlog": {}, "by_state": {}, "oldest_pending_seconds": None,
                                  "failures_by_status": {}}  # no [forward] destination
    assert data["since"] == "2026-11-01" and data["generated_at"] == "2026-11-30T08:00:00"
    assert data["orders"]["total"] == 8 and data["orders"]["served"] == 3 and data["orders"]["withheld"] == 2
    assert data["orders"]["withheld_by_reason"]["AUTH_MISSING"] == 2
    assert len(data["orders"]["withheld_by_reason"]) == 12  # every reason code, zero or not
    assert data["overrides"] == {"total": 2, "orders": 1}
    assert data["studies"] == {"received": 6, "by_state": {"archived": 3, "held": 1, "rejected": 1, "purged": 1},
                               "clean": 2, "clean_match_rate": 0.3333}
    assert data["holds"]["studies"] == 4 and data["holds"]["still_held"] == 1
    assert data["holds"]["median_hours_held"] == 12.0
    assert data["holds"]["by_reason"]["PATIENT_ID_MISMATCH"] == {"studies": 2, "median_hours_held": 9.0}
    assert len(data["holds"]["by_reason"]) == 13  # every finding code
    assert data["mpps"] == {"completed": 2, "completed_from_images": 0}
    assert data["auth_units"] == {"used": 2, "auths": 1}


def test_report_text_from_the_command_line(scenario, settings_path, cli_env, capsys):
    assert main(["--config", str(settings_path), "report", "--since", "2026-11-01"]) == 0
    out = capsys.readouterr().out
    assert "Report since 2026-11-01 (as of 2026-11-30 08:00)" in out
    assert "Orders scheduled since 2026-11-01: 8 (5 scheduled, 2 completed, 1 cancelled)" in out
    assert "open orders: 5, served 3, withheld 2" in out
    assert "withheld AUTH_MISSING: 2" in out and "withheld INVALID_NPI: 1" in out
    assert "withheld AUTH_EXHAUSTED" not in out  # zero counts are left out of the text
    assert "Overrides: 2 (on 1 order)" in out
    assert "Studies received: 6 (3 archived, 1 held, 1 rejected, 1 purged)" in out
    assert "clean match (archived, never held): 2, rate 33.3%" in out
    assert "Held studies: 4 (still held 1), median time held 12.0 h" in out
    assert "PATIENT_ID_MISMATCH: 2 studies, median held 9.0 h" in out
    assert "MPPS completed: 2" in out
    assert "Auth units used: 2 (on 1 auth)" in out
    assert "DOE" not in out and "MRN" not in out


def test_report_default_period_and_a_future_since(scenario, settings_path, cli_env, capsys):
    assert main(["--config", str(settings_path), "report", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["since"] == "2026-10-31"  # 30 days before 2026-11-30
    assert main(["--config", str(settings_path), "report", "--since", "2027-01-01"]) == 2
    assert "in the future" in capsys.readouterr().err


def test_figures_with_nothing_received_has_no_rate():
    r = figures(SINCE, NOW, [OrderFact("A1", "completed")], [], [], 0)
    assert r.clean_match_rate is None and r.median_hours_held is None
    assert (r.orders_total, r.open_orders, r.served, r.withheld) == (1, 0, 0, 0)
    data = as_json(r)
    assert data["studies"]["clean_match_rate"] is None
    assert "rate n/a (no studies received)" in as_text(r)


def test_held_time_runs_to_now_only_while_held():
    held = StudyFact("1", HELD, at(1), at(1), held_at=at(29, 8))
    released = StudyFact("2", ARCHIVED, at(1), at(29, 14), held_at=at(29, 8))
    purged = StudyFact("3", PURGED, at(1), at(29, 14), held_at=at(29, 8))
    clean = StudyFact("4", ARCHIVED, at(1), at(1))
    assert held.hours_held(NOW) == 24.0 and released.hours_held(NOW) == 6.0
    assert purged.hours_held(NOW) is None and clean.hours_held(NOW) is None
    assert clean.clean and not released.clean
