"""Worklist query speed against `gatekeeper serve` running as a child process.

    python bench/mwl.py [N ...]          (default 1000 10000 100000)

For each N it builds a fresh gateway folder with N synthetic orders (half withheld
for a CPT mismatch in their auth), starts `gatekeeper serve` on loopback, and times
over one open association:

- a console query: one station, one day, about 40 served items, with the usual
  return keys of a modality console;
- a query by accession number;
- a query by accession number on a new association (association, query, release),
  as a console that does not keep its association open would do.

With ``--wlmscpfs`` the same queries go, for each N, to DCMTK's ``wlmscpfs`` too, serving the
orders the gatekeeper serves as ``.wl`` files (the gatekeeper's own items), with
``TCP_NODELAY=1`` exported as DCMTK reads it; the two are timed in turn, query by query,
and the ratio of the medians is printed (the goal: the gatekeeper's console query at most
0.15 of wlmscpfs's at 10,000 items).

    python bench/mwl.py [--wlmscpfs] [N ...]

Those figures are taken with a pynetdicom console (this process), so they include its own
work: it decodes every response with pydicom, about as much time again as the answer. With
``--wlmscpfs`` the console query is also timed with a native console, DCMTK's ``findscu``
(same keys, ``TCP_NODELAY=1``), against both servers in turn: each round runs
``findscu --repeat 1`` and ``findscu --repeat R`` (one association, R queries; R chosen per
server so that the run lasts about ``FINDSCU_SPAN``, at least ``FINDSCU_REPEAT``), and the
difference over ``R - 1`` is the time of one query on an open association, process start,
association and release taken out. The median of the rounds is
printed for each server, and their ratio: what a DCMTK-based console would see.

It prints the median and 95th percentile in milliseconds, and the ratio of the
console median at the largest N to the smallest (the lookup must use the indexes:
that ratio stays under 2).

For scale it also times the floor on this machine: a bare pynetdicom C-FIND SCP (a
child process, no database, no gating, no matching) that answers every query with 40
prebuilt worklist items of the same shape, sent the way pynetdicom sends them, one DUL
round and one socket write per PDU. The gatekeeper sends its pending responses in batches
(gateway/dicom/tuning.py, change 7), so it can come in under that floor: the floor is then
mostly the pynetdicom console's own decoding.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path.pop(0)  # run as a script: bench/http.py would shadow the standard library's http
sys.path.insert(0, str(ROOT))

from pydicom import Dataset  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification  # noqa: E402

from bench.synthetic import STATIONS, orders_and_auths  # noqa: E402
from gateway.app import open_app  # noqa: E402
from gateway.settings import load  # noqa: E402
from tests.conftest import free_port, write_settings  # noqa: E402
from worklist.intake import auth_from_record, order_from_record  # noqa: E402

FIRST_DAY = dt.date(2026, 12, 1)
NOW = "2026-11-30T08:00:00"
REPEAT = 60
FINDSCU_ROUNDS = 9
FINDSCU_REPEAT = 6
FINDSCU_MAX_REPEAT = 101
FINDSCU_SPAN = 1500.0  # ms
PER_STATION_DAY = 80  # orders per station and day: half served, so about 40 items


def console_query(station: str, day: dt.date) -> Dataset:
    ds = Dataset()
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                "RequestedProcedureID", "RequestedProcedureDescription", "StudyInstanceUID",
                "ReferringPhysicianName", "RequestedProcedureComments"):
        setattr(ds, key, "")
    step = Dataset()
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = day.strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = ""
    step.Modality = ""
    step.ScheduledProcedureStepDescription = ""
    step.ScheduledProcedureStepID = ""
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def findscu_keys(station: str, day: dt.date) -> list[str]:
    """:func:`console_query` as findscu ``-k`` arguments."""
    keys = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
            "RequestedProcedureID", "RequestedProcedureDescription", "StudyInstanceUID",
            "ReferringPhysicianName", "RequestedProcedureComments"]
    step = {"ScheduledStationAETitle": station, "ScheduledProcedureStepStartDate": day.strftime("%Y%m%d"),
            "ScheduledProcedureStepStartTime": "", "Modality": "", "ScheduledProcedureStepDescription": "",
            "ScheduledProcedureStepID": ""}
    keys += [f"ScheduledProcedureStepSequence[0].{k}" + (f"={v}" if v else "") for k, v in step.items()]
    args = []
    for key in keys:
        args += ["-k", key]
    return args


def findscu_run(port: int, keys: list[str], repeat: int) -> float:
    """ms for one ``findscu`` process making ``repeat`` queries over one association."""
    cmd = ["findscu", "-W", "-q", "-aet", "MR1", "-aec", "GATEKEEPER", "--repeat", str(repeat), *keys,
           "127.0.0.1", str(port)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def findscu_count(port: int, keys: list[str]) -> int:
    """How many pending responses findscu receives for ``keys`` (it must see what pynetdicom sees)."""
    cmd = ["findscu", "-W", "-v", "-aet", "MR1", "-aec", "GATEKEEPER", *keys, "127.0.0.1", str(port)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return (out.stdout + out.stderr).count("(Pending)")


def findscu_repeat(port: int, keys: list[str]) -> int:
    """How many queries one findscu run makes for ``port``: enough to last about
    :data:`FINDSCU_SPAN` ms (so that the noise of one process start is small beside them),
    from :data:`FINDSCU_REPEAT` to :data:`FINDSCU_MAX_REPEAT`."""
    per_query = max((findscu_run(port, keys, 3) - findscu_run(port, keys, 1)) / 2, 1.0)
    return max(FINDSCU_REPEAT, min(FINDSCU_MAX_REPEAT, round(FINDSCU_SPAN / per_query)))


def findscu_compare(ours: int, theirs: int, day: dt.date) -> tuple[list[float], list[float], int, int]:
    """Per-query ms with findscu, round by round in turn (see the module docstring), for both
    servers; and how many items each answered."""
    ours_ms, theirs_ms = [], []
    repeats = {port: findscu_repeat(port, findscu_keys(STATIONS[0], day)) for port in (ours, theirs)}
    for i in range(FINDSCU_ROUNDS):
        keys = findscu_keys(STATIONS[i % len(STATIONS)], day)
        for got, port in ((ours_ms, ours), (theirs_ms, theirs)):
            one = findscu_run(port, keys, 1)
            many = findscu_run(port, keys, repeats[port])
            got.append((many - one) / (repeats[port] - 1))
    keys = findscu_keys(STATIONS[0], day)
    return ours_ms, theirs_ms, findscu_count(ours, keys), findscu_count(theirs, keys)


def accession_query(accession: str) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = accession
    ds.PatientName = ""
    ds.PatientID = ""
    ds.RequestedProcedureComments = ""
    return ds


def _no_delay(event) -> None:
    # The console side of the bench sends without Nagle's delay, as the server does;
    # otherwise pynetdicom's two-PDU requests wait ~40 ms for a delayed ACK.
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def timed_find(assoc, identifier: Dataset) -> tuple[float, int]:
    start = time.perf_counter()
    count = 0
    for status, _ in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
        if status and status.Status == 0xFF00:
            count += 1
    return (time.perf_counter() - start) * 1000, count


def wait_for_echo(port: int, process: subprocess.Popen) -> None:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit("gatekeeper serve exited during start-up")
        assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.1)
    raise SystemExit("gatekeeper serve did not answer C-ECHO")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def measure(port: int, day: dt.date, accessions: list[str]) -> tuple[list, list, list]:
    """Console and by-accession query times (ms) over one open association."""
    ae = AE(ae_title="MR1")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER",
                         evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)])
    console, items, by_acc = [], [], []
    for i, accession in enumerate(accessions):
        took, n = timed_find(assoc, console_query(STATIONS[i % len(STATIONS)], day))
        console.append(took)
        items.append(n)
        took, n = timed_find(assoc, accession_query(accession))
        by_acc.append(took)
    assoc.release()
    return console, items, by_acc


def fresh_association_query(port: int, accession: str) -> float:
    """ms for association, one query by accession, release: a console that does not keep
    its association open between queries."""
    ae = AE(ae_title="MR1")
    ae.add_requested_context(ModalityWorklistInformationFind)
    start = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER", evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)])
    timed_find(assoc, accession_query(accession))
    assoc.release()
    return (time.perf_counter() - start) * 1000


def bare_scp(port: int, count: int) -> None:
    """The floor: pynetdicom answering every C-FIND with ``count`` prebuilt items."""
    import logging

    from pynetdicom import _config

    from worklist.mwl import build_item, build_response

    _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    records, _ = orders_and_auths(count, first_day=FIRST_DAY, days=1)
    query = console_query(STATIONS[0], FIRST_DAY)
    prebuilt = [build_response(query, build_item(order_from_record(r), "PA-1")) for r in records]

    def on_find(event):
        for item in prebuilt:
            yield 0xFF00, item

    ae = AE(ae_title="GATEKEEPER")
    ae.add_supported_context(Verification)
    ae.add_supported_context(ModalityWorklistInformationFind)
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_CONN_OPEN, _no_delay)])


def floor(items: int = 40) -> None:
    port = free_port()
    bare = subprocess.Popen([sys.executable, __file__, "--bare-scp", str(port), str(items)], cwd=ROOT)
    try:
        wait_for_echo(port, bare)
        console, _, _ = measure(port, FIRST_DAY, ["X"] * REPEAT)
    finally:
        bare.terminate()
        bare.wait(20)
    print(f"  floor: bare pynetdicom SCP answering {items} prebuilt items: median "
          f"{statistics.median(console):6.1f} ms  p95 {percentile(console, 95):6.1f} ms")


def start_wlmscpfs(folder: Path, order_records: list, days: int) -> tuple[subprocess.Popen, int]:
    """DCMTK wlmscpfs on a free port, serving as ``.wl`` files the orders the gatekeeper serves."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from worklist.mwl import build_item

    base = folder / "wlist"
    aet = base / "GATEKEEPER"
    aet.mkdir(parents=True)
    (aet / "lockfile").write_text("")
    block = len(STATIONS) * days  # bench/synthetic.py: every other block of orders is withheld
    for i, record in enumerate(order_records):
        if (i // block) % 2:
            continue
        ds = build_item(order_from_record(record), f"PA-{i}")
        if not ds.get("StudyInstanceUID"):  # wlmscpfs ignores an item without one (Type 1 in its check)
            ds.StudyInstanceUID = f"2.25.{i + 1}"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
        ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.{i + 1}"
        ds.save_as(aet / f"{i:07d}.wl", enforce_file_format=True)
    port = free_port()
    process = subprocess.Popen(["wlmscpfs", "-dfp", str(base), str(port)], env={**os.environ, "TCP_NODELAY": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_echo(port, process)
    return process, port


def run(count: int, wlmscpfs: bool = False) -> float:
    days = max(count // (PER_STATION_DAY * len(STATIONS)), 1)
    order_records, auth_records = orders_and_auths(count, first_day=FIRST_DAY, days=days)
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        settings_path = write_settings(Path(folder), port=port)
        app = open_app(load(settings_path, environ={}), clock=lambda: dt.datetime.fromisoformat(NOW))
        app.gate.import_orders([order_from_record(r) for r in order_records])
        app.gate.import_auths([auth_from_record(r) for r in auth_records])
        app.close()
        env = {**os.environ, "GATEKEEPER_CONFIG": str(settings_path), "GATEKEEPER_NOW": NOW}
        env.pop("GATEKEEPER_DATABASE_URL", None)
        serve = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_echo(port, serve)
            middle_day = FIRST_DAY + dt.timedelta(days=days // 2)
            accessions = [order_records[(i * 7919) % count]["accession_number"] for i in range(REPEAT)]
            if wlmscpfs:
                dcmtk, dcmtk_port = start_wlmscpfs(Path(folder), order_records, days)
                try:  # query by query in turn: the machine may be shared and noisy
                    ours, theirs = ([], [], []), ([], [], [])
                    for accession in accessions:
                        for mine, target in ((ours, port), (theirs, dcmtk_port)):
                            for got, value in zip(mine, measure(target, middle_day, [accession])):
                                got.extend(value)
                    native = findscu_compare(port, dcmtk_port, middle_day)
                finally:
                    dcmtk.terminate()
                    dcmtk.wait(20)
                console, items, by_acc = ours
                print(f"{count:>7} orders, wlmscpfs: console query (about {statistics.median(theirs[1]):.0f} items) "
                      f"median {statistics.median(theirs[0]):6.1f} ms | by accession median "
                      f"{statistics.median(theirs[2]):5.1f} ms; gatekeeper/wlmscpfs: console "
                      f"{statistics.median(ours[0]) / statistics.median(theirs[0]):.2f}, by accession "
                      f"{statistics.median(ours[2]) / statistics.median(theirs[2]):.2f}")
                f_ours, f_theirs, n_ours, n_theirs = native
                print(f"{count:>7} orders, findscu console query on an open association (gatekeeper {n_ours} items, "
                      f"wlmscpfs {n_theirs}): gatekeeper median {statistics.median(f_ours):6.1f} ms, wlmscpfs "
                      f"median {statistics.median(f_theirs):6.1f} ms; gatekeeper/wlmscpfs "
                      f"{statistics.median(f_ours) / statistics.median(f_theirs):.2f}")
            else:
                console, items, by_acc = measure(port, middle_day, accessions)
            fresh = [fresh_association_query(port, acc) for acc in accessions[:20]]
        finally:
            serve.terminate()
            serve.wait(20)
    c_med = statistics.median(console)
    print(f"{count:>7} orders: console query (about {statistics.median(items):.0f} items) "
          f"median {c_med:6.1f} ms  p95 {percentile(console, 95):6.1f} ms | by accession "
          f"median {statistics.median(by_acc):5.1f} ms  p95 {percentile(by_acc, 95):5.1f} ms | "
          f"new association + query by accession median {statistics.median(fresh):5.1f} ms")
    return c_med


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare-scp"]:
        bare_scp(int(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    with_dcmtk = "--wlmscpfs" in sys.argv[1:]
    sizes = [int(a) for a in sys.argv[1:] if a != "--wlmscpfs"] or [1_000, 10_000, 100_000]
    floor()
    medians = [run(n, with_dcmtk) for n in sizes]
    if len(medians) > 1:
        print(f"console median at {sizes[-1]:,} / at {sizes[0]:,}: {medians[-1] / medians[0]:.2f} (must stay under 2)")
