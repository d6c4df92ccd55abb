# SPDX-License-Identifier: Apache-2.0
"""The playground page (``--playground``) in a real headless Chromium.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them), driven by selenium
with both paths given, so selenium never downloads a browser or driver of its own. The page
loads, an image and a question round-trip through ``/v1/chat/completions`` of the same server,
and the overlay outlines as many patches as the response says were kept. The screenshot is kept
in ``build/test-artifacts/playground.png`` (or ``$MIPRUNER_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest
from helpers.server import CUSTOM_DEFAULTS_ARGS, image_data_url

from mipruner_vllm.params import n_keep

pytestmark = pytest.mark.server
OWN_SERVER = True  # conftest orders this module last: it replaces the shared server
SERVER_GROUP = "custom-defaults"  # next to the server-defaults module, on the same server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(
    os.environ.get(
        "MIPRUNER_TEST_ARTIFACTS", Path(__file__).parents[2] / "build" / "test-artifacts"
    )
)


@pytest.fixture(scope="module")
def playground(server_with):
    return server_with(*CUSTOM_DEFAULTS_ARGS, name="custom-defaults")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install them)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mipruner-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_page_is_served_with_a_strict_policy(playground) -> None:
    response = httpx.get(playground.base_url + "/playground", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "http://" not in response.text and "https://" not in response.text  # no external asset


def test_a_question_round_trips_and_the_overlay_shows_the_kept_count(
    playground, browser, tmp_path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "picture.png"
    image.write_bytes(base64.b64decode(image_data_url(seed=21, size=(224, 168)).split(",", 1)[1]))
    browser.get(playground.base_url + "/playground")
    assert browser.title == "MI-Pruner playground"
    browser.find_element(By.ID, "file").send_keys(str(image))
    question = browser.find_element(By.ID, "question")
    question.clear()
    question.send_keys("Where is the brightest patch?")
    browser.execute_script(
        "const r = document.getElementById('ratio'); r.value = '0.3';"
        "r.dispatchEvent(new Event('input'));"
    )
    WebDriverWait(browser, 30).until(
        lambda d: int(d.find_element(By.ID, "overlay").get_attribute("width")) > 0
    )
    browser.find_element(By.ID, "ask").click()
    WebDriverWait(browser, 400).until(
        lambda d: (
            d.find_element(By.ID, "status").text in ("Done.",)
            or d.find_element(By.ID, "status").text.startswith("Refused")
        )
    )
    status = browser.find_element(By.ID, "status").text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "playground.png"))
    assert status == "Done.", status
    reported = int(browser.find_element(By.ID, "kept-count").text)
    total = int(browser.find_element(By.ID, "total-count").text)
    drawn = int(browser.find_element(By.ID, "overlay").get_attribute("data-kept-cells"))
    # The tiny checkpoint's processor caps the pixels: 224 x 168 px becomes a 4 x 3 token grid.
    assert total == 12
    assert reported == drawn == n_keep(total, keep_ratio=0.3) < total
    assert browser.find_element(By.ID, "ran").text == "mi"
    assert (ARTIFACTS / "playground.png").stat().st_size > 0


def test_the_heat_map_shades_every_patch_by_its_score(playground, browser, tmp_path) -> None:
    """ "Heat map" ticked: the request asks pruning_detail_scores, every cell of the grid is
    shaded and the kept ones are still outlined."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "picture.png"
    image.write_bytes(base64.b64decode(image_data_url(seed=22, size=(224, 168)).split(",", 1)[1]))
    browser.get(playground.base_url + "/playground")
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 30).until(
        lambda d: int(d.find_element(By.ID, "overlay").get_attribute("width")) > 0
    )
    browser.find_element(By.ID, "heat").click()
    browser.find_element(By.ID, "ask").click()
    WebDriverWait(browser, 400).until(
        lambda d: (
            d.find_element(By.ID, "status").text == "Done."
            or d.find_element(By.ID, "status").text.startswith("Refused")
        )
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "playground-heat.png"))
    assert browser.find_element(By.ID, "status").text == "Done."
    overlay = browser.find_element(By.ID, "overlay")
    total = int(browser.find_element(By.ID, "total-count").text)
    assert int(overlay.get_attribute("data-heat-cells")) == total == 12
    kept = int(browser.find_element(By.ID, "kept-count").text)
    assert int(overlay.get_attribute("data-kept-cells")) == kept == n_keep(12, keep_ratio=0.25)
    assert "Eq. 19" in browser.find_element(By.ID, "scores").text
