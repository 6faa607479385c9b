"""The review desk in a real headless Chromium against `gatekeeper serve` as a process.

The flows of a practice: a technologist logs in; a study sent by DCMTK's storescu with a
misspelled patient name shows in the held queue by itself, with its preview; corrected, it
leaves the queue and shows in studies. A scheduler overrides a withheld order and
findscu then returns it; a technologist's override is refused; a form posted without
its CSRF token is refused. A screenshot of each step is kept in $GATEKEEPER_TEST_ARTIFACTS
(default: a folder under pytest's temporary directory).

Needs the Debian packages chromium and chromium-driver (skipped locally without them, a
failure under CI=true) and DCMTK.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, EXAMPLES_NOW, free_port
from tests.desk_fixtures import MISSPELLED, PASSWORD, USERS
from tests.dicom_factory import make_instance, write_instance
from tests.e2e import Gateway, dcmtk, gatekeeper_command
from tests.test_e2e_worklist import findscu
from tests.tools import missing_tool

pytestmark = pytest.mark.e2e

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000"]


def tool(*candidates: str, package: str) -> str:
    for path in candidates:
        found = path if os.path.isabs(path) else shutil.which(path)
        if found and os.access(found, os.X_OK):
            return found
    message = f"{candidates[0]} is not installed (Debian package {package})"
    missing_tool(message)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("GATEKEEPER_TEST_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser(tmp_path, artifacts):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = tool("/usr/bin/chromium", "chromium", package="chromium")
    driver_path = tool("/usr/bin/chromedriver", "chromedriver", package="chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    shots = []

    def shot(name: str) -> None:
        path = artifacts / f"{len(shots) + 1:02d}-{name}.png"
        driver.save_screenshot(str(path))
        shots.append(path)

    driver.shot = shot
    yield driver
    driver.quit()


@pytest.fixture
def desk_gateway(tmp_path):
    """serve with the review desk on a free port, the examples, and a user per role."""
    folder = tmp_path / "gw"
    folder.mkdir()
    gw = Gateway(folder, env=EXAMPLES_NOW)
    head, tail = gw.settings.read_text().split("[http]", 1)
    gw.http_port = free_port()
    gw.settings.write_text(head + "[http]" + tail.replace("port = 0", f"port = {gw.http_port}", 1))
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
    for role, name in USERS.items():
        result = subprocess.run(gatekeeper_command() + ["users", "add", name, "--role", role], env=gw.env,
                                input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    gw.start()
    gw.url = f"http://127.0.0.1:{gw.http_port}"
    yield gw
    assert gw.stop() == 0, gw.log()


def wait_for(predicate, timeout: float = 20, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def log_in(browser, gw, role: str) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{gw.url}/login")
    browser.find_element(By.ID, "name").send_keys(USERS[role])
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    wait_for(lambda: browser.find_elements(By.ID, "who"), what="the login")
    assert USERS[role] in browser.find_element(By.ID, "who").text


def storescu(gw, tmp_path, **overrides) -> str:
    ds = make_instance(StudyDate="20261201", AccessionNumber="ACC1001", **overrides)
    path = write_instance(tmp_path / "send" / "one.dcm", ds)
    result = subprocess.run([dcmtk("storescu"), "-aet", "MR1", "-aec", "GATEKEEPER", "127.0.0.1", str(gw.port),
                             str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return ds.StudyInstanceUID


def test_a_misspelled_study_is_held_with_its_preview_corrected_and_archived(desk_gateway, browser, tmp_path):
    from selenium.webdriver.common.by import By

    gw = desk_gateway
    log_in(browser, gw, "technologist")
    browser.get(f"{gw.url}/held")
    assert "No held studies." in browser.find_element(By.ID, "held-rows").text
    browser.shot("held-queue-empty")

    study = storescu(gw, tmp_path, PatientName=MISSPELLED)
    row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-study="{study}"]'), timeout=30,
                   what="the held queue updating by itself")[0]  # no reload: the page's script polls
    assert "ACC1001" in row.text and "patient name differs from the order" in row.text
    browser.shot("held-queue-updated-by-itself")

    row.find_element(By.LINK_TEXT, "Review").click()
    assert MISSPELLED in browser.find_element(By.ID, "findings").text
    image = browser.find_element(By.CSS_SELECTOR, "img.preview")
    wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image),
             what="the preview loading")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 256
    browser.shot("held-study-with-preview")

    browser.find_element(By.ID, "correct-reason").send_keys("name misspelled at the console")
    browser.find_element(By.ID, "correct").click()
    wait_for(lambda: "/studies" in browser.current_url, what="the redirect to studies")
    assert "corrected from order ACC1001" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert study in browser.find_element(By.ID, "studies").text
    browser.shot("studies-after-correction")
    browser.get(f"{gw.url}/held")
    assert "No held studies." in browser.find_element(By.ID, "held-rows").text


def test_a_scheduler_overrides_and_findscu_returns_the_order(desk_gateway, browser, tmp_path):
    from selenium.webdriver.common.by import By

    gw = desk_gateway
    assert findscu(gw, tmp_path, "AccessionNumber=ACC1002", "PatientName") == []
    log_in(browser, gw, "scheduler")
    browser.get(f"{gw.url}/orders/ACC1002")
    assert "withheld" in browser.find_element(By.ID, "decision").text
    browser.shot("order-withheld")
    browser.find_element(By.ID, "reason").send_keys("suspected fracture, cannot wait")
    browser.find_element(By.ID, "override").click()
    wait_for(lambda: "Override recorded" in browser.page_source, what="the override")
    assert "override" in browser.find_element(By.ID, "decision").text
    browser.shot("order-overridden")
    [found] = findscu(gw, tmp_path, "AccessionNumber=ACC1002", "PatientName")
    assert found.AccessionNumber == "ACC1002"


def test_a_technologists_override_and_a_form_without_csrf_are_refused(desk_gateway, browser, tmp_path):
    from selenium.webdriver.common.by import By

    gw = desk_gateway
    log_in(browser, gw, "technologist")
    browser.get(f"{gw.url}/orders/ACC1002")
    assert not browser.find_elements(By.ID, "override-form")
    browser.shot("technologist-sees-no-override")
    # post the override form anyway, with the session's own CSRF token (as a crafted page would)
    browser.execute_script("""
        var f = document.createElement('form'); f.method = 'post'; f.action = '/orders/ACC1002/override';
        var token = document.querySelector('input[name=csrf]').value;
        [['csrf', token], ['reason', 'try']].forEach(function (kv) {
            var i = document.createElement('input'); i.type = 'hidden'; i.name = kv[0]; i.value = kv[1]; f.appendChild(i);
        });
        document.body.appendChild(f); f.submit();""")
    wait_for(lambda: browser.find_elements(By.ID, "problem"), what="the refusal page")
    assert "may not override withheld orders" in browser.find_element(By.ID, "problem").text
    browser.shot("technologist-override-refused")
    assert findscu(gw, tmp_path, "AccessionNumber=ACC1002", "PatientName") == []

    browser.get(f"{gw.url}/held")
    browser.execute_script("document.querySelector('form.logout input[name=csrf]').remove();"
                           "document.querySelector('form.logout').submit();")
    wait_for(lambda: browser.find_elements(By.ID, "problem"), what="the refusal page")
    assert "security token" in browser.find_element(By.ID, "problem").text
    browser.shot("form-without-csrf-refused")
    browser.get(f"{gw.url}/held")  # still logged in: the logout was refused
    assert browser.find_elements(By.ID, "who")
