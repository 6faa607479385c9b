"""``[forward.NAME]`` destinations in settings (each key's edges) and the preflight's C-ECHO to each."""

from __future__ import annotations

import pytest

from gateway import preflight
from gateway.cli.main import main
from gateway.settings import SettingsError, load
from store.forwarding import Destination
from tests.conftest import free_port, write_settings


def settings_with(tmp_path, text: str):
    return load(write_settings(tmp_path, extra=text), environ={})


def test_destinations_in_the_order_of_the_file_with_their_defaults(tmp_path):
    s = settings_with(tmp_path, """
[forward.PACS]
ae_title = "PACS"
host = "pacs.example"
port = 104
storage_commitment = true
modalities = ["ct", " MR "]

[forward.VNA]
ae_title = "VNA"
host = "10.0.0.31"
port = 11112
calling_ae = "GK_VNA"
""")
    assert s.destinations == (
        Destination("PACS", "PACS", "pacs.example", 104, "GATEKEEPER", True, frozenset({"CT", "MR"})),
        Destination("VNA", "VNA", "10.0.0.31", 11112, "GK_VNA", False, frozenset()),
    )
    assert settings_with(tmp_path, "").destinations == ()
    assert s.forwarded_retention_days == 0


@pytest.mark.parametrize("text, words", [
    ('[forward.PACS]\nhost = "h"\nport = 104\n', "forward.PACS lacks ae_title"),
    ('[forward.PACS]\nae_title = "PACS"\nport = 104\n', "forward.PACS lacks host"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = "h"\n', "forward.PACS lacks port"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = "h"\nport = 0\n', "forward.PACS.port is 0"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = "h"\nport = 65536\n', "forward.PACS.port is 65536"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = "h"\nport = "104"\n', "forward.PACS.port must be int"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = "h"\nport = true\n', "forward.PACS.port must be int"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = " "\nport = 104\n', "forward.PACS.host is empty"),
    ('[forward.PACS]\nae_title = "A_TITLE_OF_17_CHR"\nhost = "h"\nport = 104\n', "forward.PACS.ae_title has"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = "h"\nport = 104\ncalling_ae = ""\n', "forward.PACS.calling_ae has"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = "h"\nport = 104\nstorage_commitment = "yes"\n',
     "forward.PACS.storage_commitment must be bool"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = "h"\nport = 104\nmodalities = "CT"\n',
     "forward.PACS.modalities must be list"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = "h"\nport = 104\nmodalities = [""]\n',
     "forward.PACS.modalities must list modality codes"),
    ('[forward.PACS]\nae_title = "PACS"\nhost = "h"\nport = 104\nretries = 3\n', "unknown key retries"),
    ('[forward]\nPACS = 3\n', "forward.PACS must be a table"),
    ('[storage]\nforwarded_retention_days = -1\n', "storage.forwarded_retention_days must not be negative"),
])
def test_a_wrong_destination_is_named(tmp_path, text, words):
    path = write_settings(tmp_path)
    body = path.read_text()
    if text.startswith("[storage]"):
        body = body.replace("forwarded_retention_days = 0", "forwarded_retention_days = -1")
        text = ""
    path.write_text(body + "\n" + text)
    with pytest.raises(SettingsError) as refused:
        load(path, environ={})
    assert words in str(refused.value) and str(path) in str(refused.value)


def test_the_preflight_echoes_each_destination(server, settings_path, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "TIMEOUT", 0.5)
    monkeypatch.delenv("GATEKEEPER_DATABASE_URL", raising=False)
    dead = free_port()
    with settings_path.open("a") as f:
        f.write(f'\n[forward.SELF]\nae_title = "GATEKEEPER"\nhost = "127.0.0.1"\nport = {server.port}\n'
                f'\n[forward.GONE]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {dead}\ncalling_ae = "GK2"\n')
    code = main(["--config", str(settings_path), "check"])
    text = capsys.readouterr().out
    assert code == 1
    assert (f"ok    forward destination SELF (GATEKEEPER at 127.0.0.1:{server.port}): C-ECHO succeeded"
            in text.splitlines())
    [failed] = [line for line in text.splitlines() if line.startswith("FAIL")]
    assert failed.startswith(f"FAIL  forward destination GONE (PACS at 127.0.0.1:{dead}): nothing listens on "
                             f"127.0.0.1:{dead}")
    assert "[forward.GONE]" in failed and "calling AE GK2" in failed and "studies wait in the queue" in failed
