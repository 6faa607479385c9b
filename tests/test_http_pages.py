"""The review desk's pages in process: login and CSRF, roles, the held queue and a held study
with its previews, correct/release/reject with the patient-change confirmation, worklist and
order pages with the override form, studies, auths, the dashboard's SVG charts, the audit log."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from gateway.http.security import SESSION_COOKIE
from infra.audit import AuditEvent
from tests.desk_fixtures import MISSPELLED, PASSWORD, USERS, hold


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def log_in(client, role: str) -> str:
    """Log in as the user of ``role``; the CSRF token of the session."""
    client.cookies.clear()
    form = client.get("/login")
    assert form.status_code == 200
    response = client.post("/login", data={"csrf": csrf_of(form.text), "name": USERS[role], "password": PASSWORD,
                                           "next": "/worklist"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/worklist"
    return csrf_of(client.get("/worklist").text)


# ---------------------------------------------------------------- login, sessions, CSRF


def test_pages_need_a_login(desk):
    response = desk.get("/held", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login?next=/held"


def test_login_sets_a_signed_httponly_samesite_cookie(desk):
    log_in(desk, "technologist")
    response = desk.get("/login")  # already logged in: sent on to the start page, a technologist's is the queue
    assert response.url.path == "/held"
    form = desk.get("/logout")  # GET is not a logout
    assert form.status_code == 405
    desk.cookies.clear()
    form = desk.get("/login")
    response = desk.post("/login", data={"csrf": csrf_of(form.text), "name": USERS["admin"], "password": PASSWORD},
                         follow_redirects=False)
    cookie = response.headers["set-cookie"]
    assert SESSION_COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")


def test_a_wrong_password_says_so_and_is_slowed_after_three(desk, sleeps):
    for attempt in range(4):
        form = desk.get("/login")
        response = desk.post("/login", data={"csrf": csrf_of(form.text), "name": USERS["admin"],
                                             "password": "not the password"})
        assert response.status_code == 401 and "The name or the password is wrong" in response.text
    assert sleeps.delays == [1.0]


def test_a_tampered_cookie_is_no_session(desk):
    log_in(desk, "admin")
    value = desk.cookies.get(SESSION_COOKIE)
    desk.cookies.clear()
    desk.cookies.set(SESSION_COOKIE, value[:3] + ("A" if value[3] != "A" else "B") + value[4:])  # another payload
    assert desk.get("/held", follow_redirects=False).status_code == 303


def test_a_disabled_user_is_logged_out_at_once(desk, app):
    log_in(desk, "billing")
    app.users.disable(USERS["billing"], by="test")
    assert desk.get("/worklist", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_a_form_without_its_csrf_token_is_refused(desk, app, tmp_path, token):
    study = hold(app, tmp_path)
    log_in(desk, "technologist")
    data = {"reason": "typo"} | ({} if token is None else {"csrf": token})
    response = desk.post(f"/held/{study}/release", data=data)
    assert response.status_code == 403 and "security token" in response.text
    assert [s.study_instance_uid for s in app.store.held_studies()] == [study]


def test_the_login_form_needs_its_csrf_token_too(desk):
    desk.get("/login")
    response = desk.post("/login", data={"name": USERS["admin"], "password": PASSWORD}, follow_redirects=False)
    assert response.status_code == 403


def test_logout(desk):
    csrf = log_in(desk, "admin")
    assert desk.post("/logout", data={"csrf": csrf}, follow_redirects=False).headers["location"] == "/login"
    assert desk.get("/held", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("next_url", ["//evil.example/", "https://evil.example/", "/\\evil"])
def test_the_login_never_sends_to_another_site(desk, next_url):
    form = desk.get("/login")
    response = desk.post("/login", data={"csrf": csrf_of(form.text), "name": USERS["admin"], "password": PASSWORD,
                                         "next": next_url}, follow_redirects=False)
    assert response.headers["location"] == "/"


# ---------------------------------------------------------------- held queue and a held study


def test_the_held_queue_lists_patient_accession_reasons_count_and_hours(desk, app, clock, tmp_path):
    import datetime as dt

    hold(app, tmp_path, count=3)
    clock.now += dt.timedelta(hours=5, minutes=30)
    log_in(desk, "technologist")
    html = desk.get("/held").text
    assert "DOE JANE Q (MRN5001)" in html and "ACC1001" in html and "patient name differs from the order" in html
    assert re.search(r'<td class="num">3</td>\s*<td class="num">5\.5</td>', html)
    assert '<script src="/static/held.js">' in html
    assert desk.get("/static/held.js").status_code == 200 and desk.get("/static/desk.css").status_code == 200
    assert "DOE JANE Q" in desk.get("/held/rows").text  # what the script polls


def test_the_held_queue_is_oldest_first(desk, app, clock, tmp_path):
    import datetime as dt

    first = hold(app, tmp_path / "a")
    clock.now += dt.timedelta(hours=1)
    second = hold(app, tmp_path / "b", AccessionNumber="ACC1002", PatientID="MRN5002")
    log_in(desk, "billing")
    html = desk.get("/held").text
    assert html.index(first) < html.index(second)


def test_a_held_study_shows_findings_side_by_side_and_a_preview_per_series(desk, app, tmp_path):
    study = hold(app, tmp_path, count=3, series=2)
    log_in(desk, "technologist")
    html = desk.get(f"/held/{study}").text
    assert MISSPELLED in html and "DOE^JANE^Q" in html
    previews = re.findall(r'src="(/held/[^"]+\.png)"', html)
    assert len(previews) == 2
    for url in previews:
        response = desk.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (256, 256)
    assert 'id="correct-form"' in html and 'name="csrf"' in html


def test_a_preview_of_an_undecodable_syntax_is_a_placeholder(desk, app, tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000

    def compressed(ds):  # one fragment that is no JPEG 2000 codestream a decoder accepts
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    study = hold(app, tmp_path, count=1, transfer_syntax_uid=JPEG2000, edit=compressed)
    log_in(desk, "technologist")
    [url] = re.findall(r'src="(/held/[^"]+\.png)"', desk.get(f"/held/{study}").text)
    response = desk.get(url)
    assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).getpixel((2, 2)) == 64


def test_a_technologist_corrects_and_the_study_leaves_the_queue_for_studies(desk, app, tmp_path):
    study = hold(app, tmp_path)
    csrf = log_in(desk, "technologist")
    response = desk.post(f"/held/{study}/correct", data={"csrf": csrf, "reason": "typo at the console"})
    assert response.url.path == "/studies" and "corrected from order ACC1001" in response.text
    assert study in response.text
    assert "No held studies." in desk.get("/held").text
    event = AuditEvent.select().where(AuditEvent.action == "study.corrected").get()
    assert (event.user, event.reason) == (USERS["technologist"], "typo at the console")


@pytest.mark.parametrize("action, words", [("release", "released and archived"), ("reject", "rejected")])
def test_release_and_reject(desk, app, tmp_path, action, words):
    study = hold(app, tmp_path)
    csrf = log_in(desk, "admin")
    response = desk.post(f"/held/{study}/{action}", data={"csrf": csrf, "reason": "checked"})
    assert response.url.path == "/held" and words in response.text
    assert app.store.held_studies() == []


def test_an_action_needs_a_reason(desk, app, tmp_path):
    study = hold(app, tmp_path)
    csrf = log_in(desk, "technologist")
    response = desk.post(f"/held/{study}/release", data={"csrf": csrf, "reason": " "})
    assert response.status_code == 422 and "the reason is required" in response.text


@pytest.mark.parametrize("role", ["scheduler", "billing"])
def test_other_roles_see_no_review_forms_and_are_refused(desk, app, tmp_path, role):
    study = hold(app, tmp_path)
    csrf = log_in(desk, role)
    assert 'id="correct-form"' not in desk.get(f"/held/{study}").text
    response = desk.post(f"/held/{study}/release", data={"csrf": csrf, "reason": "x"})
    assert response.status_code == 403 and "ask a technologist or admin" in response.text


def test_reassigning_to_another_patient_asks_for_a_confirmation(desk, app, tmp_path):
    study = hold(app, tmp_path, PatientName="ROE^RICHARD", PatientID="MRN5002", AccessionNumber="ACC9999",
                 PatientBirthDate="19750505", PatientSex="M")
    csrf = log_in(desk, "technologist")
    html = desk.get(f"/held/{study}?q=doe jane").text  # search by name: the candidates beside the study
    assert "ACC1001" in html and 'id="candidates"' in html
    assert "ACC1001" in desk.get(f"/held/{study}?q=MRN5001").text and "ACC1001" in desk.get(f"/held/{study}?q=ACC1001").text
    response = desk.post(f"/held/{study}/correct", data={"csrf": csrf, "reason": "wrong patient", "accession": "ACC1001"})
    assert response.status_code == 200 and "would move to another patient" in response.text
    assert app.store.held_studies()[0].study_instance_uid == study  # nothing done yet
    confirm = re.search(r'<form method="post" action="(/held/[^"]+/correct)">(.*?)</form>', response.text, re.S)
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', confirm.group(2)))
    assert fields["confirm"] == "yes" and fields["accession"] == "ACC1001" and fields["reason"] == "wrong patient"
    done = desk.post(confirm.group(1), data=fields)
    assert done.url.path == "/studies" and "corrected from order ACC1001" in done.text
    assert app.store.held_studies() == []


def test_correcting_a_misspelled_name_needs_no_confirmation(desk, app, tmp_path):
    from gateway.http.pages import _patient_changes

    study = hold(app, tmp_path)
    detail = app.store.held_study(study)
    assert not _patient_changes(detail, detail.order)


# ---------------------------------------------------------------- worklist and override


def test_the_worklist_by_station_with_reasons_in_words(desk):
    log_in(desk, "billing")
    html = desk.get("/worklist?date=2026-12-01").text
    assert "2 served, 1 withheld" in html
    assert "<h2>MR1</h2>" in html
    assert "Worklist for 2026-12-01" in html
    withheld = html.split('<tr class="withheld">')[1].split("</tr>")[0]
    assert "ACC1002" in withheld and "AUTH_DATE_OUT_OF_RANGE" not in withheld  # reasons in words, not codes
    assert desk.get("/worklist?date=tomorrow").status_code == 422


def test_an_order_page_explains_and_a_scheduler_overrides(desk):
    csrf = log_in(desk, "scheduler")
    html = desk.get("/orders/ACC1002").text
    assert "PA-112233" in html and "AUTH_LATERALITY_MISMATCH" in html and 'id="override-form"' in html
    response = desk.post("/orders/ACC1002/override", data={"csrf": csrf, "reason": "suspected fracture"})
    assert response.url.path == "/orders/ACC1002" and "Override recorded" in response.text
    assert 'id="decision" class="served"' in response.text
    assert AuditEvent.select().where(AuditEvent.action == "order.override").get().user == USERS["scheduler"]


def test_a_technologists_override_is_refused(desk):
    csrf = log_in(desk, "technologist")
    html = desk.get("/orders/ACC1002").text
    assert 'id="override-form"' not in html and "Only a scheduler or an admin" in html
    response = desk.post("/orders/ACC1002/override", data={"csrf": csrf, "reason": "x"})
    assert response.status_code == 403 and "may not override withheld orders" in response.text
    assert 'class="withheld"' in desk.get("/orders/ACC1002").text


def test_an_unknown_order_is_404(desk):
    log_in(desk, "billing")
    response = desk.get("/orders/NOPE")
    assert response.status_code == 404 and "no order with accession number" in response.text


# ---------------------------------------------------------------- studies, auths, dashboard, audit


def test_auths_mark_those_ending_soon(desk):
    log_in(desk, "billing")
    html = desk.get("/auths").text
    assert html.index("PA-112233") < html.index("PA-778899")
    assert "ends soon" in html.split("PA-112233")[1].split("</tr>")[0]
    assert "ends soon" not in html.split("PA-778899")[1].split("</tr>")[0]


def test_the_dashboard_draws_its_charts_as_svg(desk, app, tmp_path):
    hold(app, tmp_path)
    log_in(desk, "billing")
    html = desk.get("/report?since=2026-11-25").text
    for chart in ("withheld-chart", "clean-chart", "held-chart"):
        assert re.search(rf'id="{chart}"><svg xmlns="http://www.w3.org/2000/svg"', html), chart
    assert "AUTH_DATE_OUT_OF_RANGE" in html and "PATIENT_NAME_MISMATCH" in html
    assert "<script" not in html


def test_the_audit_log_is_for_admins(desk, app, tmp_path):
    log_in(desk, "technologist")
    response = desk.get("/audit")
    assert response.status_code == 403 and "may not read the audit log" in response.text
    assert 'href="/audit"' not in response.text
    log_in(desk, "admin")
    html = desk.get("/audit").text
    assert "orders.import" in html and "user.added" in html
    assert 'href="/audit"' in html


def test_studies_page(desk, app, tmp_path):
    study = hold(app, tmp_path, PatientName="DOE^JANE^Q")  # matches: archived at once
    log_in(desk, "billing")
    html = desk.get("/studies").text
    assert study in html and "1 studies, newest first" in html and "DOE JANE Q (MRN5001)" in html


def test_unknown_page_is_404(desk):
    log_in(desk, "billing")
    response = desk.get("/nothing")
    assert response.status_code == 404 and "there is no page /nothing" in response.text
