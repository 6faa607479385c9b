"""The review desk's parts alone: the signing key, sessions, the throttle, the error map,
windowing and placeholders of previews, the SVG charts, and the desk inside `serve`."""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import stat
import threading

import numpy as np
import pytest
from PIL import Image

from gateway.http import charts, preview, problems
from gateway.http.security import (FREE_FAILURES, MAX_DELAY, BasicCache, Sessions, Throttle, basic_credentials, csrf_ok,
                                   load_or_create_key)
from infra import errors
from store.daily import clean_by_day
from store.report import StudyFact
from tests.dicom_factory import make_instance, write_instance


def test_the_key_is_made_once_readable_by_its_owner_only(tmp_path):
    key = load_or_create_key(tmp_path / "store")
    path = tmp_path / "store" / "desk-session.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(key) == 64
    assert load_or_create_key(tmp_path / "store") == key
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="delete it"):
        load_or_create_key(tmp_path / "store")


def test_sessions_are_signed_and_expire(monkeypatch):
    import time

    import itsdangerous.timed

    sessions = Sessions(b"k" * 64, hours=1)
    session, cookie = sessions.new("jane")
    assert sessions.read(cookie) == session
    assert sessions.read(cookie[:3] + ("A" if cookie[3] != "A" else "B") + cookie[4:]) is None  # the payload
    assert Sessions(b"x" * 64, hours=1).read(cookie) is None  # another key
    assert sessions.read("") is None and sessions.read(None) is None
    later = time.time() + 3600 + 5
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: later)
    assert sessions.read(cookie) is None  # older than http.session_hours


def test_csrf_must_be_the_sessions_own():
    session, _ = Sessions(b"k" * 64, hours=1).new(None)
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, "") and not csrf_ok(session, None) and not csrf_ok(None, session.csrf)
    assert not csrf_ok(session, session.csrf[:-1])


@pytest.mark.parametrize("header, expected", [
    ("Basic amFuZTpwdzpwdw==", ("jane", "pw:pw")),  # a colon in the password stays
    ("basic amFuZTo=", ("jane", "")),
    ("Basic amFuZQ==", None),  # no colon
    ("Basic ***", None),
    ("Bearer x", None),
    (None, None),
])
def test_basic_credentials(header, expected):
    assert basic_credentials(header) == expected


def test_the_throttle_doubles_per_user_and_per_address_and_forgets():
    now = [0.0]
    throttle = Throttle(clock=lambda: now[0])
    delays = []
    for _ in range(FREE_FAILURES + 6):
        delays.append(throttle.delay("jane", "10.0.0.1"))
        throttle.failed("jane", "10.0.0.1")
    assert delays == [0, 0, 0, 1, 2, 4, 8, 16, MAX_DELAY]
    assert throttle.delay("bob", "10.0.0.1") == MAX_DELAY  # the address
    assert throttle.delay("jane", "10.0.0.2") == MAX_DELAY  # the user
    assert throttle.delay("bob", "10.0.0.2") == 0
    now[0] += 15 * 60
    assert throttle.delay("jane", "10.0.0.1") == 0


def test_the_basic_cache_holds_macs_for_a_while():
    now = [0.0]
    cache = BasicCache(b"k" * 64, clock=lambda: now[0])
    cache.put("jane", "pw", "stamp1")
    assert cache.get("jane", "pw", "stamp1") and not cache.get("jane", "other", "stamp1")
    assert not cache.get("jane", "pw", "stamp2")  # a new password
    assert all("pw" not in repr(k) for k in cache.seen)
    now[0] += 301
    assert not cache.get("jane", "pw", "stamp1")


@pytest.mark.parametrize("error, status", [
    (errors.NotFound("x"), 404), (errors.WrongState("x"), 409), (errors.Refused("x"), 409),
    (errors.AlreadyExists("x"), 409), (errors.InvalidInput("x"), 422), (errors.MissingValue("x"), 422),
    (errors.NotSupported("x"), 422), (errors.OutOfResources("x"), 503), (errors.StorageFailure("x"), 503),
    (problems.LoginRequired("x"), 401), (problems.Forbidden("x"), 403), (problems.BadForm("x"), 403),
    (errors.GatekeeperError("x"), 409),
])
def test_every_core_error_has_one_status(error, status):
    assert problems.problem(error)[0] == status
    assert problems.problem(error)[1]["detail"] == "x"


def test_every_error_class_of_the_core_is_mapped_before_its_parent():
    seen = []
    for kind, *_ in problems.STATUSES:
        assert not any(issubclass(kind, earlier) for earlier in seen), kind
        seen.append(kind)
    core = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.GatekeeperError)}
    assert core <= {k for k, *_ in problems.STATUSES} | {errors.MissingValue, errors.Undecodable}


# ---------------------------------------------------------------- previews


@pytest.mark.parametrize("center, width, pixels, expected", [
    (None, None, [0, 50, 100], [0, 128, 255]),  # min-max
    (None, None, [7, 7, 7], [0, 0, 0]),  # flat image
    (50, 100, [-100, 0, 1, 50, 99, 100], [0, 0, 3, 129, 255, 255]),  # PS3.3 C.11.2.1.2
    (40, 1, [39, 40, 41], [0, 255, 255]),  # width 1: a threshold
])
def test_windowing(center, width, pixels, expected):
    assert list(preview.windowed(np.array(pixels), center, width)) == expected


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and max(image.size) == preview.SIZE
    return image


def test_a_preview_uses_the_images_window_and_inverts_monochrome1(tmp_path):
    pixels = bytes(np.arange(64, dtype=np.uint16).reshape(8, 8).tobytes())
    plain = png(preview.render(write_instance(tmp_path / "a.dcm", make_instance(PixelData=pixels))))
    assert plain.getpixel((0, 0)) == 0 and plain.getpixel((255, 255)) == 255
    windowed = png(preview.render(write_instance(tmp_path / "b.dcm", make_instance(
        PixelData=pixels, WindowCenter="10", WindowWidth="4"))))
    assert windowed.getpixel((255, 0)) == 0  # pixel 7: below the window (8 to 11)
    assert windowed.getpixel((144, 48)) == 255  # pixel 12: above it
    inverted = png(preview.render(write_instance(tmp_path / "c.dcm", make_instance(
        PixelData=pixels, PhotometricInterpretation="MONOCHROME1"))))
    assert inverted.getpixel((0, 0)) == 255


def test_placeholders_say_why(tmp_path):
    assert png(preview.render(tmp_path / "missing.dcm")).getpixel((1, 1)) == 64
    no_pixels = write_instance(tmp_path / "sr.dcm", make_instance(PixelData=None))
    assert png(preview.render(no_pixels)).getpixel((1, 1)) == 64


# ---------------------------------------------------------------- charts


def test_bars_escape_labels_and_scale_to_the_largest():
    svg = charts.bars([("A<b>", 2), ("B", 4)], title="t & u", note={"B": "(median 1.0 h)"})
    assert "A&lt;b&gt;" in svg and "t &amp; u" in svg and "(median 1.0 h)" in svg
    assert 'width="150"' in svg and 'width="300"' in svg
    assert "nothing in this period" in charts.bars([], title="x")


def test_the_line_leaves_gaps_for_days_without_studies():
    svg = charts.line([("d1", 1.0), ("d2", None), ("d3", 0.5), ("d4", 0.0)], title="rate")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 3
    assert "no studies received" in charts.line([("d1", None)], title="rate")


def test_clean_by_day_counts_by_first_receipt():
    t = dt.datetime(2026, 12, 1, 9)
    facts = [StudyFact("1", "archived", t, t), StudyFact("2", "archived", t, t, held_at=t),
             StudyFact("3", "held", t + dt.timedelta(days=2), t, held_at=t)]
    days = clean_by_day(facts, dt.date(2026, 12, 1), dt.date(2026, 12, 3))
    assert [(d.received, d.clean, d.rate) for d in days] == [(2, 1, 0.5), (0, 0, None), (1, 0, 0.0)]


# ---------------------------------------------------------------- inside serve


def serve_in_thread(app):
    from gateway.dicom.server import serve

    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(app, ready, stop), daemon=True)
    thread.start()
    assert ready.wait(30)
    return thread, stop


def desk_settings(tmp_path, port, edit=("", "")):
    """Settings with the review desk on ``port`` (the test settings turn it off)."""
    from gateway.settings import load
    from tests.conftest import write_settings

    path = write_settings(tmp_path)
    head, tail = path.read_text().split("[http]", 1)
    path.write_text(head + "[http]" + tail.replace("port = 0", f"port = {port}", 1).replace(*edit))
    return load(path, environ={})


def test_serve_runs_the_desk_and_stops_it(tmp_path, clock):
    import httpx

    from gateway.app import open_app
    from tests.conftest import free_port

    port = free_port()
    app = open_app(desk_settings(tmp_path, port), clock=clock)
    thread, stop = serve_in_thread(app)
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/login", timeout=5)
        assert response.status_code == 200 and 'name="csrf"' in response.text
        assert httpx.get(f"http://127.0.0.1:{port}/api/held", timeout=5).status_code == 401
        assert (app.settings.storage_root / "desk-session.key").exists()
    finally:
        stop.set()
        thread.join(30)
        app.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)


def test_a_desk_port_in_use_is_one_sentence_naming_the_setting(tmp_path, clock):
    import socket

    from gateway.app import open_app
    from gateway.http import desk
    from infra.errors import GatekeeperError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = open_app(desk_settings(tmp_path, taken.getsockname()[1]), clock=clock)
        try:
            with pytest.raises(GatekeeperError, match=r"already in use: .* change http.port = \d+"):
                desk.start(app)
        finally:
            app.close()


def test_beyond_loopback_without_tls_is_a_warning(tmp_path, clock, caplog):
    from gateway.app import open_app
    from gateway.http import desk
    from tests.conftest import free_port

    settings = desk_settings(tmp_path, free_port())
    import dataclasses

    settings = dataclasses.replace(settings, http_bind_address="0.0.0.0")
    app = open_app(settings, clock=clock)
    try:
        with caplog.at_level(logging.WARNING, "gateway.http"):
            server = desk.start(app)
        server.stop()
    finally:
        app.close()
    assert "without TLS" in caplog.text and "http.tls_cert" in caplog.text
    assert desk.is_loopback("127.0.0.1") and desk.is_loopback("::1") and not desk.is_loopback("0.0.0.0")


def test_tls_settings_go_together(tmp_path):
    from gateway.settings import SettingsError

    with pytest.raises(SettingsError, match="http.tls_cert and http.tls_key go together"):
        desk_settings(tmp_path, 0, ('tls_cert = ""', 'tls_cert = "cert.pem"'))
    settings = desk_settings(tmp_path, 0, ('tls_cert = ""\n# Private key of tls_cert (readable by the service\'s '
                                           'user only).\ntls_key = ""', 'tls_cert = "c.pem"\ntls_key = "k.pem"'))
    assert settings.http_tls_cert == tmp_path / "c.pem" and settings.http_tls_key == tmp_path / "k.pem"
