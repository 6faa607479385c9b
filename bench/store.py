"""C-STORE speed and memory: the gatekeeper against a bare pynetdicom storage SCP.

    python3 bench/store.py [--count N] [--kib K] [--big-mib M] [--rounds R] [--sender storescu|pynetdicom]

Both servers run as child processes on loopback, each on its own store folder:

- the gatekeeper is ``gatekeeper serve`` (``python -m gateway.cli serve``) with the shipped
  settings, the examples imported (order ACC1001, auth PA-778899) and
  GATEKEEPER_NOW=2026-11-30T08:00:00, so every instance is reconciled against a real
  order with an auth look-up, fsynced, renamed into place and indexed in SQLite
  (``synchronous=FULL``) before its 0x0000. Scheduled jobs are off (``jobs.enabled = false``)
  so that nothing else runs during the measurement.
- the bare SCP (``--bare-scp``, below) is a few lines of pynetdicom: it takes the dataset
  in memory and writes it to a file with one fsync.

The senders are separate processes, one per association: DCMTK's ``storescu`` when it is
installed (as a modality would send; C++, so the two CPUs of a small machine go to the
servers rather than to the senders), else pynetdicom SCUs sending files with
``STORE_SEND_CHUNKED_DATASET`` (``--sender pynetdicom`` forces those). N instances of about
K KiB (default 500 of 512 KiB: MR, 512x512x16 bit) go first on one association, then split
over four associations at once; each association sends its own studies of 50 instances,
as modalities do. Instances per second are wall-clock over the whole batch. With
``--rounds`` > 1 the best round of each is kept.

Then a fresh gatekeeper child receives one M MiB instance (default 512) and the
high-water mark of its resident memory (VmHWM in /proc/PID/status) is printed.

    python3 bench/store.py --compare [--workers W] [--count N] [--kib K] [--rounds R]

Comparison mode: four servers started once, each on its own store: the gatekeeper with
``server.workers = 1``, the gatekeeper with ``server.workers = W`` (default: the number of
cores), Orthanc (``/usr/sbin/Orthanc``, Debian package ``orthanc``, with a temporary JSON
configuration) and the bare SCP. Each round sends one batch to each, the order turning
from round to round, first on one association, then on four at once; it prints the median
instances per second of each and the gatekeeper's ratios to the bare SCP and to Orthanc,
and the median CPU time each server (with its worker processes) spent per instance.
``TCP_NODELAY=1`` is exported to storescu and Orthanc (DCMTK reads it from the
environment); the pynetdicom servers set it on every connection.

In every mode the senders' files are made in ``/dev/shm`` (memory) when it has room for
two batches (:func:`sending_root`), so that making and deleting them every round does not
slow down the file system the servers write to. On ext4 without a journal (as on some
virtual machines; ``/proc/fs/jbd2`` then has no entry for the device), leave six minutes
between two runs: each run deletes what it stored when it ends, and for up to six minutes
after a deletion every file created on that file system first looks past the inodes just
freed, which slows down the next run's servers, and not all of them alike.

    python3 bench/store.py --tls [--count N] [--kib K] [--rounds R]

TLS mode: one gatekeeper listens on its plain port and on ``server.tls_port`` (BCP 195
profile, client certificates required: a CA and certificates are made with ``openssl``,
as tests/certs.py does), and each round sends the same kind of batch over plain TCP and
over TLS, alternating which goes first (the machine may be shared and noisy). It prints
the median instances per second of each, for one and for four associations, and the
ratio. DCMTK's storescu sends with ``+tls`` (its default BCP 195 non-downgrading profile);
the pynetdicom senders wrap their sockets with an ``ssl`` client context.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import socket
import ssl
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

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid  # noqa: E402
from pynetdicom import AE, _config, evt  # noqa: E402
from pynetdicom.sop_class import Verification  # noqa: E402

EXAMPLES = ROOT / "examples"
NOW = "2026-11-30T08:00:00"
STUDY_SIZE = 50


# ------------------------------------------------------------------ the bare SCP (child)


def bare_scp(port: int, folder: str) -> None:
    """A storage SCP that only writes each dataset to a file with fsync."""
    def on_store(event):
        path = os.path.join(folder, event.request.AffectedSOPInstanceUID + ".dcm")
        with open(path, "wb") as f:
            f.write(event.encoded_dataset())
            f.flush()
            os.fsync(f.fileno())
        return 0x0000

    def nodelay(event):  # as the gatekeeper does (gateway/server.py)
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title="BARE")
    ae.maximum_associations = 20
    ae.add_supported_context(Verification)
    ae.add_supported_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, nodelay)])


# ---------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_ok(port: int, called: str) -> bool:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def wait_for(process: subprocess.Popen, port: int, called: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while not echo_ok(port, called):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{called} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def gatekeeper_folder(folder: Path, tls: dict | None = None, workers: int = 1,
                      database_url: str | None = None) -> tuple[dict, int]:
    """Write the shipped settings into ``folder`` (loopback, a free port, jobs, metrics, desk and
    HL7 off; ``tls`` and ``workers`` as :func:`start_gatekeeper`; ``database_url`` instead of the
    shipped SQLite file) and import the examples' orders and auths, which creates the schema.
    Returns the environment to run the CLI with and the DICOM port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    text = (ROOT / "settings.toml").read_text()
    text = text.replace('bind_address = "0.0.0.0"', 'bind_address = "127.0.0.1"').replace("port = 11112", f"port = {port}")
    text = text.replace("enabled = true", "enabled = false")
    text = re.sub(r"^workers = .*$", f"workers = {workers}", text, count=1, flags=re.M)
    for other in ("9102", "8080", "2575"):  # metrics, review desk, HL7: off, so that two can run side by side
        text = text.replace(f"port = {other}", "port = 0")
    for key, value in (tls or {}).items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {json.dumps(value)}", text, count=1, flags=re.M)
    if database_url is not None:
        text = text.replace('url = "sqlite:///var/gatekeeper.db"', f"url = {json.dumps(database_url)}")
    (folder / "settings.toml").write_text(text)
    env = {**os.environ, "GATEKEEPER_CONFIG": str(folder / "settings.toml"), "GATEKEEPER_NOW": NOW,
           "PYTHONPATH": str(ROOT)}
    env.pop("GATEKEEPER_DATABASE_URL", None)
    for kind in ("orders", "auths"):
        subprocess.run([sys.executable, "-m", "gateway.cli", kind, "import", str(EXAMPLES / f"{kind}.json")],
                       env=env, check=True, capture_output=True)
    return env, port


def run_gatekeeper(folder: Path, env: dict, port: int) -> subprocess.Popen:
    """``gatekeeper serve`` on a folder made by :func:`gatekeeper_folder`, once every receiver listens."""
    log = folder / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env,
                               stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    wait_for(process, port, "GATEKEEPER", log)
    deadline = time.monotonic() + 60
    while "listening as" not in log.read_text(errors="replace"):  # every worker listens
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the gatekeeper did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    return process


def start_gatekeeper(folder: Path, tls: dict | None = None, workers: int = 1) -> tuple[subprocess.Popen, int]:
    """``tls``: ``{"tls_port": ..., "tls_cert": ..., "tls_key": ..., "tls_ca": ...}`` to listen on a TLS port too;
    ``workers``: ``server.workers``."""
    env, port = gatekeeper_folder(folder, tls, workers)
    return run_gatekeeper(folder, env, port), port


ORTHANC = "/usr/sbin/Orthanc"


def start_orthanc(folder: Path) -> tuple[subprocess.Popen, int]:
    """Orthanc (Debian package ``orthanc``) with a temporary configuration: its own store and
    index in ``folder``, DICOM on a free port, HTTP on another (loopback only), no plugins."""
    folder.mkdir(parents=True)
    port, http = free_port(), free_port()
    config = {"Name": "bench", "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http,
              "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
              "DicomCheckCalledAet": False, "StorageCompression": False, "DicomAlwaysAllowStore": True,
              "DicomAlwaysAllowEcho": True, "DicomThreadsCount": 4, "ConcurrentJobs": 1}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = folder / "orthanc.log"
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], env={**os.environ, **NODELAY},
                               stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    wait_for(process, port, "ORTHANC", log)
    return process, port


#: DCMTK (storescu, and Orthanc's DICOM layer, which is DCMTK) reads TCP_NODELAY from the
#: environment; pynetdicom servers set it on each connection themselves.
NODELAY = {"TCP_NODELAY": "1"}


def start_bare(folder: Path) -> tuple[subprocess.Popen, int]:
    folder.mkdir(parents=True)
    port = free_port()
    log = folder / "bare.log"
    process = subprocess.Popen([sys.executable, __file__, "--bare-scp", str(port), str(folder)],
                               stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    wait_for(process, port, "BARE", log)
    return process, port


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def header(study: str, series: str, rows: int, columns: int, number: int) -> Dataset:
    """An MR image of patient MRN5001 for order ACC1001 (examples/), no pixel data."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime = "20261201", "093000"
    ds.AccessionNumber = "ACC1001"
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DOE^JANE^Q", "MRN5001", "19800203", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SeriesNumber, ds.InstanceNumber = "1", str(number)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_instance(path: Path, ds: Dataset, pixel_bytes: int, chunk: bytes) -> None:
    """Write ``ds`` as a Part 10 file, then Pixel Data (OW) of ``pixel_bytes`` streamed from ``chunk``."""
    ds.save_as(path, enforce_file_format=True)
    with open(path, "ab") as f:
        f.write(b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little"))
        left = pixel_bytes
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))


#: Where the senders' files are made when it has room: memory (tmpfs), not the servers' file system.
SEND_DIR = Path("/dev/shm")


def sending_root(work: Path, count: int, kib: int) -> Path:
    """A folder for the files the senders send: in :data:`SEND_DIR` when it holds twice a batch,
    else under ``work``. Made and deleted every round, 500 files on the servers' file system
    would make each server's next 500 file creations slower (ext4 without a journal looks past
    every inode deleted in the last minutes before reusing one), whichever server comes next."""
    try:
        if SEND_DIR.is_dir() and shutil.disk_usage(SEND_DIR).free > 2 * count * (kib + 4) * 1024:
            return Path(tempfile.mkdtemp(prefix="bench-store-send-", dir=SEND_DIR))
    except OSError:
        pass
    return work / "send"


def make_batches(folder: Path, count: int, kib: int, associations: int) -> list[list[str]]:
    """``count`` files split into ``associations`` lists, each list made of its own studies."""
    folder.mkdir(parents=True)
    side = int((kib * 1024 // 2) ** 0.5)
    chunk = os.urandom(side * side * 2)
    batches: list[list[str]] = [[] for _ in range(associations)]
    per = count // associations
    for a in range(associations):
        for n in range(per if a < associations - 1 else count - per * (associations - 1)):
            if n % STUDY_SIZE == 0:
                study, series = generate_uid(), generate_uid()
            ds = header(study, series, side, side, n + 1)
            path = folder / f"{a}-{n}.dcm"
            write_instance(path, ds, side * side * 2, chunk)
            batches[a].append(str(path))
    return batches


def send_batch(args) -> int:
    """One association sending every file of ``paths`` (run in a worker process); ``pki``
    (``(ca, cert, key)``, optional) sends over TLS with that client certificate."""
    port, called, paths, *pki = args
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="MR1")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    tls_args = None
    if pki and pki[0]:
        ca, cert, key = pki[0]
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(cert, key)
        tls_args = (context, "localhost")
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls_args)
    if not assoc.is_established:
        raise RuntimeError(f"could not associate with {called}")
    failed = 0
    for path in paths:
        status = assoc.send_c_store(Path(path))
        failed += not status or status.Status != 0
    assoc.release()
    return failed


def storescu() -> str | None:
    """DCMTK's storescu (not pynetdicom's script of the same name), if installed."""
    for path in ("/usr/bin/storescu", "/usr/local/bin/storescu", shutil.which("storescu")):
        if path and os.access(path, os.X_OK):
            out = subprocess.run([path, "--version"], capture_output=True, text=True)
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return path
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of a process and of every process under it (``server.workers`` > 1
    serves from child processes, whose time the parent's counters do not hold until they end)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue  # ended meanwhile
    return total


def timed(pool, port: int, called: str, batches: list[list[str]], dcmtk: str | None, pki=None) -> float:
    """Instances per second for sending ``batches`` at once, one association each (over TLS with ``pki``)."""
    count = sum(len(b) for b in batches)
    tls = ["+tls", pki[2], pki[1], "+cf", pki[0]] if pki else []
    started = time.perf_counter()
    if dcmtk:
        senders = [subprocess.Popen([dcmtk, *tls, "-aet", "MR1", "-aec", called, "127.0.0.1", str(port), *b],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **NODELAY})
                   for b in batches]
        failed = sum(p.wait() != 0 for p in senders)
    else:
        failed = sum(pool.map(send_batch, [(port, called, b, pki) for b in batches]))
    elapsed = time.perf_counter() - started
    if failed:
        raise SystemExit(f"sending to {called} failed")
    return count / elapsed


def dataset_size(path: Path) -> int:
    """Size of a Part 10 file after its File Meta Information (the receiver writes its own)."""
    with open(path, "rb") as f:
        head = f.read(144)
    return path.stat().st_size - 144 - int.from_bytes(head[140:144], "little")


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# -------------------------------------------------------------------------------- main


def speed(work: Path, count: int, kib: int, rounds: int, dcmtk: str | None, sends: Path) -> dict:
    results: dict = {}
    with multiprocessing.Pool(4) as pool:
        for associations in (1, 4):
            best = {"gatekeeper": 0.0, "bare": 0.0}
            cpu = {"gatekeeper": [], "bare": []}
            for r in range(rounds):
                for name in ("gatekeeper", "bare"):
                    folder = work / f"{name}-{associations}-{r}"
                    batches = make_batches(sends / f"{name}-{associations}-{r}", count, kib, associations)
                    process, port = (start_gatekeeper if name == "gatekeeper" else start_bare)(folder / "server")
                    try:
                        before = cpu_seconds(process.pid)
                        rate = timed(pool, port, "GATEKEEPER" if name == "gatekeeper" else "BARE", batches, dcmtk)
                        cpu[name].append((cpu_seconds(process.pid) - before) / count * 1000)
                    finally:
                        stop(process)
                    best[name] = max(best[name], rate)
                    shutil.rmtree(folder)
                    shutil.rmtree(sends / f"{name}-{associations}-{r}")
            best["cpu_ms"] = {name: min(values) for name, values in cpu.items()}
            results[associations] = best
    return results


def tls_speed(work: Path, count: int, kib: int, rounds: int, dcmtk: str | None, sends: Path) -> dict:
    """Median instances per second over plain TCP and over TLS, one gatekeeper, interleaved rounds."""
    from tests.certs import make_pki

    pki = make_pki(work / "pki")
    client = (str(pki.ca_cert), str(pki.client_cert), str(pki.client_key))
    tls_port = free_port()
    process, port = start_gatekeeper(work / "server", tls={
        "tls_port": tls_port, "tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key),
        "tls_ca": str(pki.ca_cert)})
    results: dict = {}
    try:
        with multiprocessing.Pool(4) as pool:
            for associations in (1, 4):
                rates: dict = {"tcp": [], "tls": []}
                for r in range(rounds):
                    order = ("tcp", "tls") if r % 2 == 0 else ("tls", "tcp")
                    for transport in order:
                        folder = sends / f"{associations}-{r}-{transport}"
                        batches = make_batches(folder, count, kib, associations)
                        rates[transport].append(timed(pool, tls_port if transport == "tls" else port, "GATEKEEPER",
                                                      batches, dcmtk, client if transport == "tls" else None))
                        shutil.rmtree(folder)
                results[associations] = {t: statistics.median(v) for t, v in rates.items()}
                results[associations]["runs"] = rates
    finally:
        stop(process)
    return results


def compare(work: Path, count: int, kib: int, rounds: int, dcmtk: str | None, workers: int, sends: Path) -> dict:
    """Median instances per second of each server, started once, the rounds interleaved (the
    order of the servers turns each round: the machine may be shared and noisy)."""
    starts = {"gatekeeper": lambda f: start_gatekeeper(f, workers=1),
              f"gatekeeper workers={workers}": lambda f: start_gatekeeper(f, workers=workers),
              "orthanc": start_orthanc, "bare": start_bare}
    called = {"orthanc": "ORTHANC", "bare": "BARE"}
    running = {}
    results: dict = {}
    try:
        for name, start in starts.items():
            running[name] = start(work / name.replace(" ", "-").replace("=", ""))
        with multiprocessing.Pool(4) as pool:
            for associations in (1, 4):
                rates: dict = {name: [] for name in starts}
                cpu: dict = {name: [] for name in starts}
                names = list(starts)
                for r in range(rounds):
                    for name in names[r % len(names):] + names[: r % len(names)]:
                        folder = sends / f"{associations}-{r}-{len(rates[name])}"
                        batches = make_batches(folder, count, kib, associations)
                        pid = running[name][0].pid
                        before = tree_cpu_seconds(pid)
                        rates[name].append(timed(pool, running[name][1], called.get(name, "GATEKEEPER"), batches,
                                                 dcmtk))
                        cpu[name].append((tree_cpu_seconds(pid) - before) / count * 1000)
                        shutil.rmtree(folder)
                results[associations] = {"median": {n: statistics.median(v) for n, v in rates.items()}, "runs": rates,
                                         "cpu_ms": {n: statistics.median(v) for n, v in cpu.items()}}
    finally:
        for process, _ in running.values():
            stop(process)
    return results


def memory(work: Path, mib: int) -> dict:
    folder = work / "big"
    process, port = start_gatekeeper(folder / "server")
    try:
        ds = header(generate_uid(), generate_uid(), 16384, mib * 1024 * 1024 // (16384 * 2), 1)
        path = folder / "big.dcm"
        write_instance(path, ds, ds.Rows * ds.Columns * 2, os.urandom(4 * 1024 * 1024))
        before = vm_kib(process.pid, "VmHWM")
        started = time.perf_counter()
        failed = send_batch((port, "GATEKEEPER", [str(path)]))
        took = time.perf_counter() - started
        peak = vm_kib(process.pid, "VmHWM")
        stored = list((folder / "server" / "var" / "store" / "archive").rglob("*.dcm"))
        if failed or len(stored) != 1 or dataset_size(stored[0]) != dataset_size(path):
            raise SystemExit("the big instance was not stored whole")
    finally:
        stop(process)
    return {"size_mib": path.stat().st_size / 2**20, "seconds": took, "hwm_before_mib": before / 1024,
            "hwm_peak_mib": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=500, help="instances per run (default 500)")
    parser.add_argument("--kib", type=int, default=512, help="size of each instance in KiB (default 512)")
    parser.add_argument("--big-mib", type=int, default=512, help="size of the big instance (default 512; 0 skips)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, best kept (default 3)")
    parser.add_argument("--sender", choices=("storescu", "pynetdicom"), default="storescu",
                        help="what sends (default: DCMTK storescu when installed)")
    parser.add_argument("--tls", action="store_true",
                        help="plain TCP against DICOM TLS on one gatekeeper, interleaved; medians (no bare SCP)")
    parser.add_argument("--compare", action="store_true",
                        help="the gatekeeper (1 and --workers processes), Orthanc and the bare SCP, interleaved; medians")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                        help="server.workers of the second gatekeeper in --compare (default: the number of cores)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--bare-scp", nargs=2, metavar=("PORT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_scp:
        return bare_scp(int(args.bare_scp[0]), args.bare_scp[1])
    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=os.environ.get("BENCH_DIR")))
    sends = sending_root(work, args.count, args.kib)
    try:
        dcmtk = storescu() if args.sender == "storescu" else None
        if args.tls:
            figures = {"tls": tls_speed(work, args.count, args.kib, args.rounds, dcmtk, sends)}
            print(f"C-STORE of {args.count} instances of {args.kib} KiB to one gatekeeper, sent by "
                  f"{'DCMTK storescu' if dcmtk else 'pynetdicom'} (median of {args.rounds} interleaved rounds):")
            for associations, m in figures["tls"].items():
                print(f"  {associations} association(s): plain TCP {m['tcp']:6.1f}/s, TLS {m['tls']:6.1f}/s, "
                      f"TLS/TCP {m['tls'] / m['tcp']:.2f}  (runs: TCP "
                      f"{', '.join(f'{x:.1f}' for x in m['runs']['tcp'])}; TLS "
                      f"{', '.join(f'{x:.1f}' for x in m['runs']['tls'])})")
            if args.json:
                print(json.dumps(figures, indent=2))
            return
        if args.compare:
            figures = {"compare": compare(work, args.count, args.kib, args.rounds, dcmtk, args.workers, sends)}
            print(f"C-STORE of {args.count} instances of {args.kib} KiB, sent by "
                  f"{'DCMTK storescu' if dcmtk else 'pynetdicom'}, TCP_NODELAY on every side "
                  f"(median of {args.rounds} interleaved rounds, instances/s):")
            for associations, m in figures["compare"].items():
                med = m["median"]
                print(f"  {associations} association(s) at once: "
                      + ", ".join(f"{name} {rate:.1f}" for name, rate in med.items()))
                for name in med:
                    if name.startswith("gatekeeper"):
                        print(f"    {name}: {med[name] / med['bare']:.2f} of bare, {med[name] / med['orthanc']:.2f} "
                              f"of Orthanc")
                print("    runs: " + "; ".join(f"{n} {', '.join(f'{x:.0f}' for x in v)}" for n, v in m["runs"].items()))
                print("    server CPU per instance (median, ms; less noisy than the rates on a shared machine): "
                      + ", ".join(f"{n} {v:.1f}" for n, v in m["cpu_ms"].items()))
            if args.json:
                print(json.dumps(figures, indent=2))
            return
        figures = {"speed": speed(work, args.count, args.kib, args.rounds, dcmtk, sends)}
        print(f"C-STORE of {args.count} instances of {args.kib} KiB, sent by {'DCMTK storescu' if dcmtk else 'pynetdicom'}"
              f" (best of {args.rounds}):")
        for associations, best in figures["speed"].items():
            ratio = best["gatekeeper"] / best["bare"]
            print(f"  {associations} association(s): gatekeeper {best['gatekeeper']:6.1f}/s, "
                  f"bare SCP {best['bare']:6.1f}/s, ratio {ratio:.2f} (target >= 0.80); server CPU per "
                  f"instance {best['cpu_ms']['gatekeeper']:.1f} ms against {best['cpu_ms']['bare']:.1f} ms")
        if args.big_mib:
            figures["memory"] = memory(work, args.big_mib)
            m = figures["memory"]
            print(f"One {m['size_mib']:.0f} MiB instance: stored in {m['seconds']:.1f} s; gatekeeper resident memory "
                  f"high-water mark {m['hwm_peak_mib']:.0f} MiB (at start {m['hwm_before_mib']:.0f} MiB; target < 150)")
        if args.json:
            print(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sends, ignore_errors=True)


if __name__ == "__main__":
    main()
