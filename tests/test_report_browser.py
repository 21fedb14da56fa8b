"""The drift report in a real headless browser (Debian chromium through selenium).

For a pass, a warn and a fail report: within the first 1,000 px of the rendered page the
verdict, both version references and both Dice values are visible; the page logs no console
error; a screenshot of each is saved under the test's temp folder (paths printed, run with
``-s`` to see them).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from drift.gate import report
from drift.gate.policy import drift_result

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FOLD = 1000  # px: what a reviewer sees without scrolling

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
        reason="Debian chromium + chromedriver not installed (.ci/run installs them)",
    ),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def tables(scale_c4: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """12 subjects x 3 contrasts x C2..T1 x 4 slices; candidate area C4 scaled; Dice."""
    rng = np.random.default_rng(0)
    rows = [
        (f"sub-{s:02d}", c, lev, (20 - lev) * 4 + k)
        for s in range(12)
        for c in ("T1w", "T2w", "T2star")
        for lev in range(2, 9)
        for k in range(4)
    ]
    base = pd.DataFrame(rows, columns=["subject", "contrast", "level", "slice"])
    size = np.exp(rng.normal(0, 0.1, 12))[base["subject"].str[4:].astype(int)]
    base["area"] = 75.0 * size * np.exp(rng.normal(0, 0.02, len(base)))
    base["diameter_AP"] = 8.0 * np.sqrt(size)
    base["diameter_RL"] = 12.0 * np.sqrt(size)
    cand = base.copy()
    cand["area"] *= np.exp(rng.normal(0, 0.002, len(base))) * np.where(
        base["level"] == 4, scale_c4, 1.0
    )
    dice = pd.DataFrame(
        [
            (s, c, v, 0.93 if v == "baseline" else 0.91)
            for s, c in base[["subject", "contrast"]].drop_duplicates().itertuples(index=False)
            for v in ("baseline", "candidate")
        ],
        columns=["subject", "contrast", "version", "dice"],
    )
    return base, cand, dice


CASES = {"pass": 1.0, "warn": 0.9935, "fail": 0.97}


@pytest.mark.parametrize("verdict", list(CASES))
def test_first_screen_in_chromium(browser: Any, verdict: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    base, cand, dice = tables(CASES[verdict])
    prov = {
        "baseline": {
            "ref": "cordseg/2",
            "sha256": "a1" * 32,
            "aliases": ["champion"],
            "registered_by": "alice",
            "created": "2026-12-01T10:00:00+00:00",
            "description": "demo-good: tiny nnU-Net v2",
        },
        "candidate": {
            "ref": "cordseg/4",
            "sha256": "b2" * 32,
            "aliases": ["candidate"],
            "registered_by": "bob",
            "created": "2026-12-02T09:30:00+00:00",
            "description": "demo-good-seed2: re-train with another seed <check>",
        },
        "cohort": {"cohort": "phantom", "cohort_manifest_sha256": "c3" * 32},
    }
    result = drift_result(base, cand, dice=dice, provenance=prov)
    assert result.verdict == verdict
    history = pd.DataFrame(
        {"version": [1, 2, 4] * 2, "level": [3] * 3 + [4] * 3, "area": [75.0, 75.1, 75.2] * 2}
    )
    paths = report.write_report(
        result, tmp_path / verdict, baseline_table=base, candidate_table=cand, history=history
    )
    browser.get(paths["html"].resolve().as_uri())
    browser.get_log("browser")  # (drains earlier pages' messages)
    browser.refresh()

    def bottom(element: Any) -> float:
        rect = browser.execute_script("return arguments[0].getBoundingClientRect();", element)
        assert rect["height"] > 0 and rect["width"] > 0, element.text
        return float(rect["bottom"]) + float(browser.execute_script("return window.scrollY;"))

    badge = browser.find_element(By.CSS_SELECTOR, "h1 .verdict")
    assert badge.text.lower() == verdict and bottom(badge) <= FOLD
    for ref in ("cordseg/4", "cordseg/2"):
        cells = browser.find_elements(By.XPATH, f"//table[@class='refs']//code[text()='{ref}']")
        assert cells and cells[0].is_displayed() and bottom(cells[0]) <= FOLD, ref
    dice_cells = browser.find_elements(By.CSS_SELECTOR, "table.dice td b")
    assert [c.text for c in dice_cells] == ["0.910", "0.930"]
    assert all(c.is_displayed() and bottom(c) <= FOLD for c in dice_cells)
    nxt = browser.find_element(By.ID, "next")
    assert bottom(nxt) <= FOLD
    assert ("not promotable" in nxt.text) == (verdict != "pass")
    # The user's "<check>" is text, not a tag.
    assert "re-train with another seed <check>" in browser.find_element(By.TAG_NAME, "header").text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    shot = tmp_path / f"report-{verdict}.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot ({verdict}): {shot}")


def screenshot_reports(reports: list[Path], out_dir: Path) -> list[Path]:
    """Screenshot the first 1,000 px of each report.html (e.g. the demo's pass/retrain/fail
    reports) into ``out_dir``; used by ``python tests/test_report_browser.py REPORT...``."""
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out_dir.mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    shots = []
    try:
        for page in reports:
            driver.get(page.resolve().as_uri())
            shot = out_dir / f"{page.parent.name}.png"
            driver.save_screenshot(str(shot))
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            print(f"{page}: {shot} ({len(errors)} console errors)")
            shots.append(shot)
    finally:
        driver.quit()
    return shots


if __name__ == "__main__":
    import sys
    import tempfile

    screenshot_reports(
        [Path(p) for p in sys.argv[1:]], Path(tempfile.mkdtemp(prefix="report-shots-"))
    )
