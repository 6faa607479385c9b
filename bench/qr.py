"""Query/Retrieve speed against `gatekeeper serve` running as a child process.

    python bench/qr.py [N ...]          (default 1000 10000)

For each N it builds a fresh gateway folder whose index holds N archived studies of
synthetic patients (three instances each, rows only: C-FIND never opens a file), starts
`gatekeeper serve` on loopback, and times over one open association (median and 95th
percentile, milliseconds):

- a Study Root STUDY query by Patient ID (a viewer opening a patient);
- a STUDY query by a one-day Study Date range with a patient name wild card (a
  worklist-style "today's studies" view);
- a SERIES query of one study.

Then, once, retrieval: one study of 100 instances of 512 KiB (received through the store,
then released) is sent with C-MOVE to DCMTK's storescp and fetched with C-GET, next to
DCMTK's storescu sending the same files to the same storescp in the same run. It prints
the seconds, MB/s and the ratio of each to storescu.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom import Dataset  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE, build_role, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    MRImageStorage, StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from gateway.app import open_app  # noqa: E402
from gateway.dicom.tuning import no_delay  # noqa: E402
from gateway.settings import load  # noqa: E402
from infra.db import batches  # noqa: E402
from store.models import InstanceRow, StudyRow  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.dicom_factory import make_instance, write_instance  # noqa: E402
from tests.e2e import Gateway, dcmtk, echo_ok  # noqa: E402

REPEAT = 40
INSTANCES = 100
PIXELS = 512 * 1024
NOW = dt.datetime(2026, 12, 1, 12, 0)
FIND, MOVE, GET = (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove,
                   StudyRootQueryRetrieveInformationModelGet)


def identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def fill(app, count: int) -> list[tuple[str, str]]:
    """``count`` archived studies (3 instances in one series each); returns (patient ID, study UID) pairs."""
    studies, instances, made = [], [], []
    for n in range(count):
        study, series = f"1.2.826.0.1.3680043.9.7{n:07d}", f"1.2.826.0.1.3680043.9.7{n:07d}.1"
        patient = f"P{n // 2:07d}"
        day = (NOW.date() - dt.timedelta(days=n % 365)).strftime("%Y%m%d")
        studies.append(dict(study_instance_uid=study, state="archived", accession_number=f"A{n:07d}",
                            order_accession=f"A{n:07d}", patient_id=patient, study_date=day, first_received_at=NOW,
                            last_received_at=NOW, state_changed_at=NOW, instance_count=3,
                            patient_name=f"PATIENT{n % 997:03d}^SYNTHETIC", birth_date="19700101", patient_sex="O",
                            study_time="101500", study_id=str(n), study_description="SYNTHETIC STUDY"))
        for i in range(3):
            instances.append(dict(sop_instance_uid=f"{series}.{i}", study_instance_uid=study,
                                  series_instance_uid=series, sop_class_uid=MRImageStorage,
                                  transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"archive/{study}/{series}/{i}.dcm",
                                  size=1, sha256="0" * 64, received_from="MR1", received_at=NOW, modality="MR",
                                  series_number="1", series_description="SYNTHETIC", instance_number=str(i + 1)))
        made.append((patient, study))
    with app.db.atomic():
        for batch in batches(studies, 200):
            StudyRow.insert_many(batch).execute()
        for batch in batches(instances, 200):
            InstanceRow.insert_many(batch).execute()
    return made


def timed(assoc, ds: Dataset, model=FIND) -> float:
    started = time.perf_counter()
    for status, _ in assoc.send_c_find(ds, model):
        if status.Status not in (0xFF00, 0xFF01):
            assert status.Status == 0x0000, f"0x{status.Status:04X}"
    return (time.perf_counter() - started) * 1000


def figures(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    return (f"  {label:<44} median {statistics.median(ordered):7.1f} ms   "
            f"p95 {ordered[int(len(ordered) * 0.95) - 1]:7.1f} ms")


def bench_find(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="qr-bench-") as tmp:
        gw = Gateway(Path(tmp))
        app = open_app(load(gw.settings, environ={}))
        made = fill(app, count)
        app.close()
        gw.start()
        try:
            ae = AE(ae_title="BENCH")
            ae.add_requested_context(FIND)
            # TCP_NODELAY on the client too, as DCMTK does: Nagle would add 40 ms to every request.
            assoc = ae.associate("127.0.0.1", gw.port, ae_title="GATEKEEPER", evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
            keys = dict(PatientName="", PatientID="", StudyDate="", StudyTime="", AccessionNumber="",
                        StudyInstanceUID="", StudyDescription="", ModalitiesInStudy="",
                        NumberOfStudyRelatedInstances="")
            by_patient, by_day, series = [], [], []
            day = NOW.date().strftime("%Y%m%d")
            for n in range(REPEAT):
                patient, study = made[(n * 7919) % len(made)]
                by_patient.append(timed(assoc, identifier("STUDY", **{**keys, "PatientID": patient})))
                by_day.append(timed(assoc, identifier("STUDY", **{**keys, "StudyDate": f"{day}-{day}",
                                                                  "PatientName": "PATIENT*"})))
                series.append(timed(assoc, identifier("SERIES", StudyInstanceUID=study, SeriesInstanceUID="",
                                                      Modality="", SeriesNumber="",
                                                      NumberOfSeriesRelatedInstances="")))
            assoc.release()
        finally:
            gw.stop()
    print(f"C-FIND, {count} archived studies ({count * 3} instances):")
    print(figures("STUDY by Patient ID (2 studies)", by_patient))
    print(figures(f"STUDY by one day, name wild card (~{count // 365 + 1} studies)", by_day))
    print(figures("SERIES of one study", series))


def bench_retrieve() -> None:
    with tempfile.TemporaryDirectory(prefix="qr-bench-") as tmp:
        tmp = Path(tmp)
        scp_port, received = free_port(), tmp / "storescp"
        received.mkdir()
        storescp = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(received), str(scp_port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not echo_ok(scp_port, timeout=1):
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        (tmp / "gw").mkdir()
        gw = Gateway(tmp / "gw", extra_settings=f'[peers.STORESCP]\nhost = "127.0.0.1"\nport = {scp_port}\n')
        study, series = generate_uid(), generate_uid()
        files = []
        for n in range(INSTANCES):
            ds = make_instance(StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=str(n + 1),
                               AccessionNumber="", Rows=512, Columns=512, BitsAllocated=16,
                               PixelData=os.urandom(PIXELS))
            files.append(write_instance(tmp / "files" / f"{n}.dcm", ds))
        app = open_app(load(gw.settings, environ={}))
        for path in files:
            app.store.receive(path, "MR1")
        app.store.release(study, user="bench", reason="benchmark")
        app.close()
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        gw.start()
        try:
            started = time.perf_counter()
            subprocess.run([dcmtk("storescu"), "-aet", "BENCH", "-aec", "STORESCP", "127.0.0.1", str(scp_port),
                            *map(str, files)], check=True, capture_output=True, timeout=600)
            storescu = time.perf_counter() - started
            clear(received)

            ae = AE(ae_title="BENCH")
            ae.add_requested_context(MOVE)
            assoc = ae.associate("127.0.0.1", gw.port, ae_title="GATEKEEPER", evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
            started = time.perf_counter()
            final = [s for s, _ in assoc.send_c_move(identifier("STUDY", StudyInstanceUID=study), "STORESCP", MOVE)][-1]
            moved = time.perf_counter() - started
            assoc.release()
            assert final.Status == 0 and final.NumberOfCompletedSuboperations == INSTANCES, final
            assert len(list(received.iterdir())) == INSTANCES
            clear(received)

            ae = AE(ae_title="BENCH")
            ae.add_requested_context(GET)
            ae.add_requested_context(MRImageStorage)
            got = []
            assoc = ae.associate("127.0.0.1", gw.port, ae_title="GATEKEEPER",
                                 ext_neg=[build_role(MRImageStorage, scp_role=True)],
                                 evt_handlers=[(evt.EVT_C_STORE, lambda e: got.append(1) or 0x0000),
                                               (evt.EVT_CONN_OPEN, no_delay)])
            started = time.perf_counter()
            final = [s for s, _ in assoc.send_c_get(identifier("STUDY", StudyInstanceUID=study), GET)][-1]
            fetched = time.perf_counter() - started
            assoc.release()
            assert final.Status == 0 and len(got) == INSTANCES, final
        finally:
            gw.stop()
            storescp.terminate()
            storescp.wait(10)
    print(f"Retrieve {INSTANCES} instances of {PIXELS // 1024} KiB ({megabytes:.0f} MB):")
    print(f"  DCMTK storescu -> storescp   {storescu:6.2f} s  {megabytes / storescu:6.1f} MB/s")
    print(f"  C-MOVE -> storescp           {moved:6.2f} s  {megabytes / moved:6.1f} MB/s  "
          f"ratio to storescu {storescu / moved:4.2f}")
    print(f"  C-GET (pynetdicom SCU)       {fetched:6.2f} s  {megabytes / fetched:6.1f} MB/s  "
          f"ratio to storescu {storescu / fetched:4.2f}")


def clear(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def main(argv: list[str]) -> int:
    for count in [int(a) for a in argv] or [1000, 10000]:
        bench_find(count)
    bench_retrieve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
