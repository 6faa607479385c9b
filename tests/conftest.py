"""Shared fixtures: a gateway folder with its own settings, database and store, an
opened app with a fixed clock, and the DICOM server running in-process on a free port.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from gateway.app import App, open_app
from gateway.settings import load
from worklist import records

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: The examples are written for exams on 2026-12-01; tests look at them from the morning before.
EXAMPLE_NOW = dt.datetime(2026, 11, 30, 8, 0, 0)
#: The same moment for a `serve` process (tests/e2e.py).
EXAMPLES_NOW = {"GATEKEEPER_NOW": EXAMPLE_NOW.isoformat()}
#: The review desk's fixtures (desk, sleeps, cheap_hashes), for every test module.
pytest_plugins = ["tests.desk_fixtures"]

#: Set by CI (or by hand) to run the database tests against PostgreSQL too.
PG_URL_ENV = "GATEKEEPER_TEST_PG_URL"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(folder: Path, port: int | None = None, extra: str = "", database_url: str | None = None,
                   unknown_aets: str = "allow", server: dict[str, str] | None = None) -> Path:
    """A settings file in ``folder`` based on the shipped one, on ``port`` and loopback.

    Tests that are not about access take any calling AE (``unknown_aets = "allow"``); tests
    of the access rules pass the mode they test. ``server`` sets more ``[server]`` keys to
    TOML values (e.g. ``{"tls_cert": '"server.pem"'}``).
    """
    text = (ROOT / "settings.toml").read_text()
    text = text.replace('unknown_aets = "echo-and-store"', f'unknown_aets = "{unknown_aets}"')
    # One receiving process unless a test asks for workers: the in-process servers of the
    # tests (RunningServer) and their clocks, patches and handlers live in the test's process.
    text, found = re.subn(r"^workers = 0$", "workers = 1", text, count=1, flags=re.M)
    assert found, "no workers = 0 in settings.toml"
    for key, value in (server or {}).items():  # [server] is the first section: its key comes first
        text, found = re.subn(rf"^{key} = .*$", lambda _: f"{key} = {value}", text, count=1, flags=re.M)
        assert found, f"no {key} in settings.toml"
    text = text.replace('bind_address = "0.0.0.0"', 'bind_address = "127.0.0.1"')
    text = text.replace("port = 11112", f"port = {port or free_port()}")
    text = text.replace("min_free_mb = 1024", "min_free_mb = 16")  # test machines may have little room
    text = text.replace("port = 9102", "port = 0")  # metrics off unless a test asks for them
    # the review desk off unless a test asks for it (a line of its own: tests look for metrics' "port = 0")
    text = text.replace("port = 8080", "port = 0  # http: the review desk, off in tests")
    text = text.replace("port = 2575", "port = 0")  # no HL7 listener unless a test asks for one
    if database_url:
        text = text.replace('url = "sqlite:///var/gatekeeper.db"', f'url = "{database_url}"')
    path = folder / "settings.toml"
    path.write_text(text + "\n" + extra)
    return path


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(EXAMPLE_NOW)


@pytest.fixture
def settings_path(tmp_path) -> Path:
    return write_settings(tmp_path)


@pytest.fixture
def app(settings_path, clock) -> App:
    application = open_app(load(settings_path, environ={}), clock=clock)
    yield application
    application.close()


class RunningServer:
    def __init__(self, app: App):
        from gateway.dicom.server import serve

        self.app = app
        self.port = app.settings.port
        self.ae_title = app.settings.ae_title
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=serve, args=(app, self._ready, self._stop), daemon=True)

    def start(self) -> "RunningServer":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the in-process server did not start within 10 s")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def server(app) -> RunningServer:
    """The gateway's AE serving on a free loopback port, in this process."""
    running = RunningServer(app).start()
    yield running
    running.stop()


def pg_unavailable(url: str | None) -> str | None:
    """Why the PostgreSQL suite cannot run against ``url``, or None when a server answers there."""
    if not url:
        return f"{PG_URL_ENV} is not set; set it to postgresql://postgres@127.0.0.1:5432/test to run"
    try:
        import psycopg2

        psycopg2.connect(url, connect_timeout=3).close()
    except Exception as exc:  # no server, refused, wrong database: all mean "cannot run here"
        return f"no PostgreSQL server answers at {url} ({str(exc).strip().splitlines()[0]})"
    return None


@pytest.fixture(scope="session")
def pg_url() -> str:
    """PostgreSQL URL for database tests: skipped locally when no server answers, a failure under CI."""
    url = os.environ.get(PG_URL_ENV)
    why = pg_unavailable(url)
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; under CI the PostgreSQL suite must run (.ci/run starts the server)")
        pytest.skip(why)
    return url


def import_orders(app: App, orders, at: dt.datetime | None = None):
    """Import checked orders as the gate does, stamped ``at`` (default: the app's clock)."""
    return records.upsert_orders(app.db, orders, at or app.now(), user="import", source="test")


def import_auths(app: App, auths, at: dt.datetime | None = None):
    """Import checked auths as the gate does, stamped ``at`` (default: the app's clock)."""
    return records.upsert_auths(app.db, auths, at or app.now(), user="import", source="test")


@pytest.fixture
def run(settings_path, capsys, monkeypatch):
    """The ``gatekeeper`` command in process, as of the examples' morning: (exit code, stdout, stderr)."""
    from gateway.cli.main import main

    monkeypatch.setenv("GATEKEEPER_NOW", "2026-11-30T08:00:00")

    def call(*args, config_first=True):
        argv = ["--config", str(settings_path), *args] if config_first else [*args, "--config", str(settings_path)]
        code = main(argv)
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture
def loaded(run):
    """:func:`run` with the example orders and auths imported."""
    assert run("orders", "import", str(EXAMPLES / "orders.json"))[0] == 0
    assert run("auths", "import", str(EXAMPLES / "auths.json"))[0] == 0
    return run


@pytest.fixture
def examples_gateway(tmp_path):
    """`serve` as a process in its own folder, the example orders and auths imported, as of EXAMPLES_NOW."""
    from tests.e2e import Gateway

    folder = tmp_path / "gw"
    folder.mkdir()
    gw = Gateway(folder, env=EXAMPLES_NOW)
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
    gw.start()
    yield gw
    assert gw.stop() == 0, gw.log()
