"""End to end: `gatekeeper serve` forwarding to real peers on loopback (docs/rules.md, rule 7).

Orthanc is the PACS (with storage commitment: its report comes back on a new association
to the gatekeeper), DCMTK's storescp a second destination. Studies reach the gateway from
DCMTK's storescu as from a modality; what arrived is counted through Orthanc's REST API and
storescp's folder.
"""

from __future__ import annotations

import json
import signal

import pytest
from pydicom import dcmread

from tests.conftest import EXAMPLES, EXAMPLES_NOW, free_port
from tests.e2e import Gateway
from tests.peers import Orthanc, SlowSCP, StoreSCP, wait_for
from tests.test_e2e_store import storescu, study_files

pytestmark = pytest.mark.e2e

WAIT = 60  # seconds: generous for a loaded machine; every wait polls


def destinations(pacs_port: int, store_port: int | None = None, *, store_ae: str = "STORESCP",
                 commitment: bool = True) -> str:
    text = (f'\n[forward.PACS]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs_port}\n'
            f'storage_commitment = {"true" if commitment else "false"}\n')
    if store_port:
        text += f'\n[forward.STORE2]\nae_title = "{store_ae}"\nhost = "127.0.0.1"\nport = {store_port}\n'
    return text


def gateway_with(folder, extra: str) -> Gateway:
    folder.mkdir(parents=True, exist_ok=True)
    gw = Gateway(folder, extra_settings=extra, env=EXAMPLES_NOW)
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
    return gw


def queue(gw: Gateway, *args: str) -> list[dict]:
    return json.loads(gw.cli("forward", "list", "--json", *args).stdout)["studies"]


def states(gw: Gateway, study: str, destination: str) -> dict[str, int]:
    for group in queue(gw):
        if group["study_instance_uid"] == study and group["destination"] == destination:
            return group["counts"]
    return {}


def done(gw: Gateway, study: str, destination: str, state: str, count: int):
    return lambda: states(gw, study, destination).get(state) == count


@pytest.fixture
def site(tmp_path):
    """Orthanc (PACS, storage commitment) and storescp (STORE2) in front of one gateway, all running."""
    pacs_port = free_port()
    store = StoreSCP(tmp_path / "store2")
    gw = gateway_with(tmp_path / "gw", destinations(pacs_port, store.port))
    pacs = Orthanc(tmp_path / "pacs", dicom_port=pacs_port, gateway_port=gw.port)
    pacs.start()
    store.start()
    gw.start()
    yield gw, pacs, store
    try:
        assert gw.stop() == 0, gw.log()
    finally:
        pacs.stop()
        store.stop()


def test_a_clean_study_arrives_at_both_destinations_with_identical_pixel_data(site, tmp_path):
    gw, pacs, store = site
    study, paths = study_files(tmp_path / "sent", count=3)
    storescu(gw, *paths)

    wait_for(done(gw, study, "PACS", "committed", 3), WAIT, "Orthanc's storage commitment of 3 instances")
    wait_for(done(gw, study, "STORE2", "sent", 3), WAIT, "3 instances at storescp")
    sent = {dcmread(p).SOPInstanceUID: dcmread(p) for p in paths}
    at_pacs = pacs.by_sop()
    assert set(at_pacs) == set(sent)
    for sop, orthanc_id in at_pacs.items():
        received = dcmread(__import__("io").BytesIO(pacs.file(orthanc_id)))
        assert received.PixelData == sent[sop].PixelData
    at_store = {dcmread(p).SOPInstanceUID: dcmread(p) for p in store.files()}
    assert set(at_store) == set(sent)
    for sop, ds in at_store.items():
        assert ds.PixelData == sent[sop].PixelData
        assert ds.file_meta.TransferSyntaxUID == sent[sop].file_meta.TransferSyntaxUID
    assert store.requests() == 3  # one C-STORE each, no duplicate
    log = gw.log()
    assert "storage commitment report from PACS" in log and "3 instances committed" in log
    assert "DOE^JANE" not in log
