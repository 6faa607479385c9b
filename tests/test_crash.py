"""Rule 4 of docs/rules.md under a crash: SIGKILL `gatekeeper serve` while a modality is sending.

A separate process sends a few hundred small instances on two associations and writes
down each SOP Instance UID the gatekeeper acknowledged (flushed after each success). The
server is killed in the middle, restarted, and then every acknowledged instance must be
in the index with a readable file of the same checksum, every file in the trees must be
whole and indexed, each study must live in one tree, and incoming/ must be empty.
"""

from __future__ import annotations

import hashlib
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import EXAMPLES, ROOT
from tests.e2e import Gateway

pytestmark = pytest.mark.e2e

NOW = {"GATEKEEPER_NOW": "2026-11-30T08:00:00"}
COUNT = 400
KILL_AFTER = 120  # acknowledged instances before the kill

SENDER = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, {root!r})
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage
    from tests.dicom_factory import make_instance

    port, acked_path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    acked = open(acked_path, "a")
    lock = threading.Lock()

    def instances(first, last):
        # studies of 20; every third study turns held half-way (its archived files move)
        studies = {{}}
        for n in range(first, last):
            number = n // 20
            study = studies.setdefault(number, generate_uid())
            wrong = number % 3 == 2 and n % 20 >= 10
            yield make_instance(StudyInstanceUID=study, StudyDate="20261201", InstanceNumber=str(n),
                                PatientBirthDate="19800302" if wrong else "19800203")

    def send(first, last):
        ae = AE(ae_title="MR1")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
        if not assoc.is_established:
            return
        for ds in instances(first, last):
            status = assoc.send_c_store(ds)
            if not status or status.Status != 0:
                break
            with lock:
                acked.write(ds.SOPInstanceUID + "\\n")
                acked.flush()
        if assoc.is_established:
            assoc.release()

    half = count // 2
    threads = [threading.Thread(target=send, args=(0, half)), threading.Thread(target=send, args=(half, count))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
""")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def acknowledged(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_sigkill_in_the_middle_loses_nothing_acknowledged(tmp_path):
    gw = Gateway(tmp_path, env=NOW)
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
    gw.start()
    store = tmp_path / "var" / "store"
    acked_file = tmp_path / "acked.txt"
    script = tmp_path / "sender.py"
    script.write_text(SENDER.format(root=str(ROOT)))
    sender = subprocess.Popen([sys.executable, str(script), str(gw.port), str(acked_file), str(COUNT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged(acked_file)) < KILL_AFTER:
            assert time.monotonic() < deadline, f"only {len(acknowledged(acked_file))} acknowledged in 60 s:\n{gw.log()}"
            assert sender.poll() is None, "the sender stopped before the kill"
            time.sleep(0.005)
        gw.process.send_signal(signal.SIGKILL)
        gw.process.wait(10)
        sender.wait(60)
    finally:
        if sender.poll() is None:
            sender.kill()
    acked = acknowledged(acked_file)
    assert KILL_AFTER <= len(acked) < COUNT, "the kill must land in the middle of the sending"

    # what a crash can leave in the dead process's incoming folder: partial receives and
    # in-flight links; plus one planted for sure
    [dead] = [p for p in (store / "incoming").iterdir() if p.is_dir()]
    assert dead.name.startswith(f"p{gw.process.pid}-")
    (dead / "rx-planted.dcm").write_bytes(b"\0" * 1000)
    left = len(list(dead.iterdir()))

    gw.start()
    try:
        owner = [p for p in (store / "incoming").iterdir() if p.is_dir()]
        assert [p.name.split("-")[0] for p in owner] == [f"p{gw.process.pid}"]  # the dead folder is gone
        assert list(owner[0].iterdir()) == []
        cleaned = re.findall(r"store: (\d+) leftover files? of interrupted receives", gw.log())
        assert int(cleaned[-1]) >= 1 and int(cleaned[-1]) <= left

        states = assert_nothing_lost(tmp_path / "var" / "gatekeeper.db", store, acked)
        assert "held" in states.values() and "archived" in states.values()
    finally:
        assert gw.stop() == 0, gw.log()


def assert_nothing_lost(database: Path, store: Path, acked: list[str]) -> dict[str, str]:
    """Rule 4 after a crash: every acknowledged instance is indexed with a whole file, every file
    in the trees is whole and indexed where it is, a study lives in one tree, no move is left
    pending. Returns each study's state."""
    db = sqlite3.connect(database)
    try:
        rows = {sop: (path, sha, study) for sop, path, sha, study in db.execute(
            "SELECT sop_instance_uid, path, sha256, study_instance_uid FROM instances")}
        states = dict(db.execute("SELECT study_instance_uid, state FROM studies"))
        assert db.execute("SELECT COUNT(*) FROM studies WHERE pending_files IS NOT NULL").fetchone() == (0,)
    finally:
        db.close()
    for sop in acked:
        assert sop in rows, f"acknowledged instance {sop} is not in the index"
        path, sha, _ = rows[sop]
        assert dcmread(store / path).SOPInstanceUID == sop
        assert sha256(store / path) == sha
    files = [p for tree in ("archive", "held", "rejected") for p in sorted((store / tree).rglob("*")) if p.is_file()]
    assert len(files) >= len(acked)
    for file in files:
        assert file.suffix == ".dcm"
        sop = dcmread(file).SOPInstanceUID
        assert file.stem == sop and sop in rows, f"{file} is not indexed"
        path, sha, study = rows[sop]
        assert store / path == file and sha256(file) == sha
        assert path.split("/")[0] == {"archived": "archive", "held": "held"}[states[study]]
    assert len(files) == len(rows)
    return states
