"""Shared set-up of the review desk tests: users of every role, the example orders and auths,
held studies made from synthetic instances, and an in-process client."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.dicom_factory import make_instance, write_instance

PASSWORD = "synthetic-password-1"
ROLES = ("technologist", "scheduler", "billing", "admin")
#: A user per role, named after it.
USERS = {role: f"{role[:4]}1" for role in ROLES}
#: The misspelled name of the synthetic patient (the order has DOE^JANE^Q).
MISSPELLED = "DOE^JNAE^Q"


class Sleeps:
    """Stands in for asyncio.sleep: records the slowed answers instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def basic(role_or_name: str, password: str = PASSWORD) -> dict:
    name = USERS.get(role_or_name, role_or_name)
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def add_users(app) -> None:
    for role, name in USERS.items():
        app.users.add(name, role, PASSWORD, by="test")


def load_examples(app) -> None:
    app.gate.import_orders_text((EXAMPLES / "orders.json").read_text(), "orders.json", user="test")
    app.gate.import_auths_text((EXAMPLES / "auths.json").read_text(), "auths.json", user="test")


def hold(app, folder: Path, count: int = 2, series: int = 1, edit=None, **overrides) -> str:
    """Receive a study of ACC1001 whose images differ from the order (default: a misspelled name); its UID."""
    from pydicom.uid import generate_uid

    overrides.setdefault("PatientName", MISSPELLED)
    overrides.setdefault("StudyDate", "20261201")
    overrides.setdefault("AccessionNumber", "ACC1001")
    study = overrides.pop("StudyInstanceUID", None) or generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    for i in range(count):
        ds = make_instance(StudyInstanceUID=study, SeriesInstanceUID=series_uids[i % series], **overrides)
        if edit is not None:
            edit(ds)
        path = write_instance(folder / f"{ds.SOPInstanceUID}.dcm", ds)
        app.store.receive(path, "MR1")
    return study


@pytest.fixture
def cheap_hashes(monkeypatch):
    """argon2 at its lowest cost: the tests check logins, not the hash's strength."""
    from argon2 import PasswordHasher

    from infra import users

    monkeypatch.setattr(users, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def desk(app, sleeps, cheap_hashes):
    """The review desk of ``app`` in process: (client, app), with users and the examples loaded."""
    from fastapi.testclient import TestClient

    from gateway.http.desk import build

    add_users(app)
    load_examples(app)
    with TestClient(build(app, key=b"k" * 64, sleep=sleeps), base_url="http://127.0.0.1") as client:
        yield client
