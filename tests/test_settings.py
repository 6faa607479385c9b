"""Settings: every setting documented where it is set, errors name file and key."""

import re
from pathlib import Path

import pytest

from gateway.settings import DECLARED, SettingsError, config_path, load
from tests.conftest import ROOT, write_settings

SHIPPED = ROOT / "settings.toml"


def test_shipped_file_loads_with_declared_defaults():
    s = load(SHIPPED, environ={})
    assert (s.ae_title, s.port, s.unknown_aets, s.tls_port) == ("GATEKEEPER", 11112, "echo-and-store", 2762)
    assert {"CT1", "MR1", "DX1", "US1", "MG1"} <= set(s.modalities) and s.tls_cert is None
    assert s.warn_codes == frozenset({"STUDY_UID_MISMATCH", "POSSIBLE_DUPLICATE_ORDER"})
    assert s.database_url == f"sqlite:///{ROOT / 'var' / 'gatekeeper.db'}"


def test_every_declared_setting_is_in_the_shipped_file_with_a_comment():
    text = SHIPPED.read_text()
    for d in DECLARED:
        section, name = d.key.split(".")
        block = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
        match = re.search(rf"((?:^#.*\n)+)^{name} = ", block, re.M)
        assert match, f"{d.key} is not in settings.toml with a comment above it"


def test_every_declared_setting_is_in_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    for d in DECLARED:
        assert f"`{d.key}`" in readme, f"{d.key} is missing from the README settings table"


def test_relative_paths_resolve_from_the_files_folder(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    s1, s2 = load(write_settings(one), environ={}), load(write_settings(two), environ={})
    assert s1.storage_root == one / "var" / "store" and s2.storage_root == two / "var" / "store"
    assert s1.database_url != s2.database_url


@pytest.mark.parametrize("edit, words", [
    (("port = ", "prot = "), "unknown setting server.prot"),
    (("max_associations = 20", 'max_associations = "many"'), "server.max_associations must be int"),
    (('warn_codes = ["STUDY_UID_MISMATCH", "POSSIBLE_DUPLICATE_ORDER"]', 'warn_codes = ["NOPE"]'), "unknown codes"),
    (('"70336",', '"7033",'), "payers.default.requires_auth"),
    (('ae_title = "GATEKEEPER"', 'ae_title = "A_VERY_LONG_AE_TITLE"'), "server.ae_title"),
    (("purge_hour = 2", "purge_hour = 25"), "jobs.purge_hour"),
])
def test_errors_name_the_file_and_key(tmp_path, edit, words):
    path = write_settings(tmp_path)
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(SettingsError) as err:
        load(path, environ={})
    assert words in str(err.value) and str(path) in str(err.value)


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(SettingsError, match="--config"):
        load(tmp_path / "nope.toml", environ={})


def test_config_path_precedence(tmp_path):
    assert config_path("a.toml", {"GATEKEEPER_CONFIG": "b.toml"}) == Path("a.toml").resolve()
    assert config_path(None, {"GATEKEEPER_CONFIG": "b.toml"}) == Path("b.toml").resolve()
    assert config_path(None, {}) == Path("settings.toml").resolve()


def test_database_url_from_environment_wins(tmp_path):
    s = load(write_settings(tmp_path), environ={"GATEKEEPER_DATABASE_URL": "postgresql://postgres@127.0.0.1/test"})
    assert s.database_url == "postgresql://postgres@127.0.0.1/test"
