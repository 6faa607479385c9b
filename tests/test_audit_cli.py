"""``gatekeeper audit list``: the local audit log, filtered, newest first (or oldest first), limited."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from infra import audit

STUDY = "1.2.826.0.1.3680043.8.498.7"


@pytest.fixture
def events(app):
    """Five events on three days, by three actors, about a study and two orders."""
    rows = [
        (dt.datetime(2026, 11, 28, 9, 0), "import", "orders.import", "orders.json", "", {"created": 2}),
        (dt.datetime(2026, 11, 29, 10, 0), "dr.smith", "order.override", "ACC1002", "stroke protocol", {}),
        (dt.datetime(2026, 11, 30, 8, 0), "tech1", "study.released", STUDY, "checked by phone",
         {"accession_number": "ACC1001", "instances": 2}),
        (dt.datetime(2026, 11, 30, 8, 30), "MR1", "mpps.complete", "ACC1001", "", {"sop_instance_uid": "1.2.3.4"}),
        (dt.datetime(2026, 11, 30, 9, 0), "tech1", "study.corrected", "1.2.9.9", "wrong accession",
         {"accession_number": "ACC1002", "previous_accession": "ACC1001"}),
    ]
    with app.db.atomic():
        return [audit.record(at, user, action, subject, reason, **detail)
                for at, user, action, subject, reason, detail in rows]


def ids(run, *args) -> list[int]:
    code, out, err = run("audit", "list", "--json", *args)
    assert code == 0, err
    return [e["id"] for e in json.loads(out)["events"]]


def test_newest_first_by_default_and_oldest_first_on_request(run, events):
    assert ids(run) == events[::-1]
    assert ids(run, "--oldest-first") == events


@pytest.mark.parametrize("args, picked", [
    (("--since", "2026-11-30"), [2, 3, 4]),
    (("--since", "2026-11-30T08:30"), [3, 4]),
    (("--since", "2026-11-30T09:00:01"), []),
    (("--since", "2026-11-28"), [0, 1, 2, 3, 4]),
    (("--actor", "tech1"), [2, 4]),
    (("--actor", "TECH1"), []),  # user names are exact
    (("--study", STUDY), [2]),
    (("--accession", "ACC1001"), [2, 3]),  # the subject, or the accession number the event names
    (("--accession", "ACC1002"), [1, 4]),
    (("--accession", "ACC100"), []),  # no partial match
    (("--actor", "tech1", "--accession", "ACC1002"), [4]),
    (("--since", "2026-11-30", "--actor", "dr.smith"), []),
])
def test_filters_combine(run, events, args, picked):
    assert ids(run, *args, "--oldest-first") == [events[i] for i in picked]


def test_the_limit_keeps_the_first_in_the_order_asked(run, events):
    assert ids(run, "--limit", "2") == events[:-3:-1]
    assert ids(run, "--limit", "2", "--oldest-first") == events[:2]
    assert ids(run, "--limit", "1", "--actor", "tech1") == [events[4]]


def test_json_keys_are_the_events_columns_with_the_detail_parsed(run, events):
    code, out, _ = run("audit", "list", "--json", "--study", STUDY)
    listed = json.loads(out)
    assert (listed["order"], listed["limit"]) == ("newest first", 100)
    assert listed["events"] == [{"id": events[2], "at": "2026-11-30T08:00:00", "user": "tech1",
                                 "action": "study.released", "subject": STUDY, "reason": "checked by phone",
                                 "detail": {"accession_number": "ACC1001", "instances": 2}}]


def test_text_says_the_order_and_one_line_an_event(run, events):
    code, out, _ = run("audit", "list", "--actor", "tech1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "2 audit events, newest first:"
    assert "study.corrected" in lines[1] and "by tech1: wrong accession" in lines[1] and "2026-11-30 09:00:00" in lines[1]
    assert "study.released" in lines[2]
    code, out, _ = run("audit", "list", "--limit", "2")
    assert out.splitlines()[0] == "2 audit events, newest first (the limit: --limit N shows more):"


def test_nothing_matches(run, events):
    assert run("audit", "list", "--actor", "nobody") == (0, "No audit events match.\n", "")


def test_the_help_says_which_order(run, capsys):
    from gateway.cli.main import main

    with pytest.raises(SystemExit):
        main(["audit", "list", "--help"])
    assert "newest first" in capsys.readouterr().out


@pytest.mark.parametrize("args", [("--since", "30/11/2026"), ("--limit", "0"), ("--limit", "x")])
def test_bad_arguments_exit_2_naming_the_problem(run, args):
    with pytest.raises(SystemExit) as exited:
        run("audit", "list", *args)
    assert exited.value.code == 2


def test_commands_write_events_that_list_shows(loaded):
    code, out, _ = loaded("audit", "list", "--json", "--oldest-first")
    assert [e["action"] for e in json.loads(out)["events"]] == ["orders.import", "auths.import"]
