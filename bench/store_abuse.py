"""Resident memory of ``gatekeeper serve`` while it receives a deflate bomb, before and after.

    python3 bench/store_abuse.py [--inflated-mib M] [--at-once N] [--before DIR] [--after DIR]

A deflate bomb is a C-STORE in Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99)
whose dataset, an MR image of zeros, inflates about a thousand times: 1 MB on the wire is
1 GiB once inflated, and pydicom inflates the whole dataset in memory to read its header.
The default here is a bomb of M = 256 MiB inflated (about 256 KiB sent), so that the old
code's growth shows without hurting the machine; N bombs go on N associations at once.

Each tree (``--before``, default /tmp/before, the previous release; ``--after``, default
this checkout) runs as its own child process on loopback, exactly as
``cd TREE && PYTHONPATH=TREE python -m gateway.cli --config SETTINGS serve``, with a
settings file copied from TREE/settings.toml into a fresh folder (so its database and store
are there): a free port, ``bind_address = "127.0.0.1"``, jobs off. Two probes, each on a
fresh server:

- ``deflated``: the bomb on a context proposing Deflated only (plus Verification, so that
  the association is made). A server that accepts the context receives and reads it.
- ``mislabelled``: the same deflated bytes on an Explicit VR Little Endian context, as a
  sender that lies about its encoding would send them.

Printed per probe: the status (or why nothing could be sent), the server's resident memory
before (VmRSS), its peak during the probe (VmHWM) and after, and the files kept.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom import uid as ts  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.filewriter import write_file_meta_info  # noqa: E402
from pydicom.uid import MRImageStorage, PYDICOM_IMPLEMENTATION_UID, generate_uid  # noqa: E402
from pynetdicom import AE, _config  # noqa: E402
from pynetdicom.dsutils import encode  # noqa: E402
from pynetdicom.sop_class import Verification  # noqa: E402

from tests import e2e  # noqa: E402

MiB = 1024 * 1024
START_TIMEOUT = 60
PROBE_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deflate_bomb(path: Path, inflated_mib: int, labelled: str = ts.DeflatedExplicitVRLittleEndian) -> Path:
    """A Part 10 file whose deflated dataset inflates to about ``inflated_mib`` MiB; its file meta
    names ``labelled`` (Deflated, or another syntax for a sender that lies)."""
    side = int((inflated_mib * MiB // 2) ** 0.5)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.StudyDate, ds.AccessionNumber, ds.Modality = "20261201", "BOMB1", "MR"
    ds.PatientName, ds.PatientID = "BOMB^TEST", "BOMB1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = labelled
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    pixels = side * side * 2
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(f, meta)
        f.write(squeeze.compress(encode(ds, False, True) + b"\xe0\x7f\x10\x00OW\0\0" + pixels.to_bytes(4, "little")))
        zeros = bytes(MiB)
        for start in range(0, pixels, MiB):
            f.write(squeeze.compress(zeros[: min(MiB, pixels - start)]))
        f.write(squeeze.flush())
    return path


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) // 1024 for key in ("VmRSS", "VmHWM")}


echo_ok = e2e.echo_ok  # C-ECHO to GATEKEEPER on loopback


class Server:
    """``gatekeeper serve`` of one tree, in a folder of its own."""

    def __init__(self, tree: Path, folder: Path) -> None:
        self.tree, self.folder = tree, folder
        folder.mkdir(parents=True)
        self.port = free_port()
        text = (tree / "settings.toml").read_text()
        text = text.replace('bind_address = "0.0.0.0"', 'bind_address = "127.0.0.1"')
        text = re.sub(r"(?m)^port = \d+", f"port = {self.port}", text)
        text = re.sub(r"(?m)^enabled = true", "enabled = false", text)
        self.settings = folder / "settings.toml"
        self.settings.write_text(text)
        self.log = folder / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
        env["PYTHONPATH"] = str(tree)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(self.settings), "serve"],
                                            cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not echo_ok(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{tree}: serve did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def kept(self) -> int:
        store = self.folder / "var" / "store"
        return sum(1 for tree in ("archive", "held") for _ in (store / tree).rglob("*.dcm"))

    def leftovers(self) -> int:
        return sum(1 for p in (self.folder / "var" / "store" / "incoming").rglob("*") if p.is_file()
                   and not p.name.endswith(".lock"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def send(port: int, bomb: Path, syntax: str, results: list, index: int) -> None:
    ae = AE(ae_title="MR1")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = PROBE_TIMEOUT
    ae.add_requested_context(MRImageStorage, [syntax])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
    if not assoc.is_established:
        results[index] = "association not made"
        return
    try:
        if not any(cx.abstract_syntax == MRImageStorage for cx in assoc.accepted_contexts):
            results[index] = "refused at association: no context accepts it"
            return
        # The file's bytes as they are, on the context of the syntax its file meta names.
        status = assoc.send_c_store(bomb)
        results[index] = f"0x{status.Status:04X}" if status else "no answer (aborted or timed out)"
    finally:
        if assoc.is_established:
            assoc.release()


def probe(tree: Path, work: Path, name: str, bomb: Path, syntax: str, at_once: int) -> dict:
    """Send ``at_once`` copies of ``bomb`` (each its own association) to a fresh server of ``tree``."""
    server = Server(tree, work / name)
    try:
        time.sleep(1)
        before = memory(server.process.pid)
        results: list = [None] * at_once
        threads = [threading.Thread(target=send, args=(server.port, bomb, syntax, results, i)) for i in range(at_once)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(PROBE_TIMEOUT + 30)
        time.sleep(1)
        alive = server.process.poll() is None
        after = memory(server.process.pid) if alive else {"VmRSS": -1, "VmHWM": -1}
        return {"status": ", ".join(sorted(set(map(str, results)))), "rss_before": before["VmRSS"],
                "peak": after["VmHWM"], "rss_after": after["VmRSS"], "growth": after["VmHWM"] - before["VmRSS"],
                "kept": server.kept(), "leftovers": server.leftovers(), "alive": alive}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inflated-mib", type=int, default=256, help="inflated size of the bomb (default 256)")
    parser.add_argument("--at-once", type=int, default=1, help="bombs sent at once, one per association")
    parser.add_argument("--before", type=Path, default=Path("/tmp/before"))
    parser.add_argument("--after", type=Path, default=ROOT)
    args = parser.parse_args()
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    work = Path(tempfile.mkdtemp(prefix="gk-store-abuse-"))
    try:
        bomb = deflate_bomb(work / "bomb.dcm", args.inflated_mib)
        mislabelled = deflate_bomb(work / "bomb-mislabelled.dcm", args.inflated_mib, ts.ExplicitVRLittleEndian)
        print(f"deflate bomb: {bomb.stat().st_size / 1024:.0f} KiB sent, {args.inflated_mib} MiB inflated; "
              f"{args.at_once} at once")
        print(f"{'tree':<8} {'probe':<12} {'RSS before':>10} {'peak':>6} {'growth':>7} {'RSS after':>9} "
              f"{'kept':>4} {'left':>4}  status")
        for label, tree in (("before", args.before), ("after", args.after)):
            for name, sent, syntax in (("deflated", bomb, ts.DeflatedExplicitVRLittleEndian),
                                       ("mislabelled", mislabelled, ts.ExplicitVRLittleEndian)):
                r = probe(tree.resolve(), work, f"{label}-{name}", sent, syntax, args.at_once)
                print(f"{label:<8} {name:<12} {r['rss_before']:>7} MiB {r['peak']:>6} {r['growth']:>+7} "
                      f"{r['rss_after']:>9} {r['kept']:>4} {r['leftovers']:>4}  {r['status']}"
                      f"{'' if r['alive'] else ' (server died)'}", flush=True)
        print("MiB; peak = VmHWM after the probe, growth = peak - RSS before; kept = files in archive/ and held/, "
              "left = files left in incoming/")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
