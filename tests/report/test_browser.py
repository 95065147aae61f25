"""The report in a real browser: headless Chromium loads it without console errors, every
image loads, and the metrics table shows the runs' numbers.

The browser is Debian's ``chromium`` + ``chromium-driver`` (``make test`` installs them where
apt-get can); this test installs nothing and skips, saying why, where they are missing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from vsekit.report.page import write_report

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,2000")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A headless Chromium driven by chromedriver (selenium), with console logging on."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is missing: install the dev extras "
                                     "(pip install -e '.[dev]', which make test does)")
    binary = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no Chromium/chromedriver on this machine; make test installs the Debian "
                    "packages chromium and chromium-driver where apt-get is available (run it "
                    "as root, or apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, path: Path) -> tuple[list[str], list[dict]]:
    """Load a file; return (severe console messages, one dict per <img>)."""
    driver.get_log("browser")  # drop messages of earlier pages
    driver.get(path.resolve().as_uri())
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    images = driver.execute_script(
        "return Array.from(document.images).map(i => ({complete: i.complete, "
        "width: i.naturalWidth, alt: i.alt}))")
    return errors, images


def test_the_checks_catch_a_broken_page(browser, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<img src="missing.png" alt="x"><script>console.error("boom")</script>'
                    "</body></html>", encoding="utf-8")
    errors, images = open_page(browser, page)
    assert any("boom" in e for e in errors)
    assert images[0]["width"] == 0


def test_report_in_chromium(browser, tiny_runs: dict[str, Path], tmp_path: Path) -> None:
    out = write_report(list(tiny_runs.values()), tmp_path / "report.html", n_queries=2, k=3)
    errors, images = open_page(browser, out)
    assert errors == []
    # 4 figures (2 side by side, FNE, BCLS), then per run 2 × 3 result and 2 query pictures
    assert len(images) == 4 + 3 * (2 * 3 + 2)
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["alt"].strip(), image
    table = browser.find_element("css selector", "table").text
    for name, run_dir in tiny_runs.items():
        metrics = json.loads((run_dir / "final_metrics.json").read_text())["metrics"]
        row = next(line for line in table.splitlines() if line.startswith(f"{name} "))
        assert row.split()[1:] == [f"{metrics[k]:.1f}" for k in
                                   ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
                                    "rsum")]
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
