"""A real headless browser for tests: Debian's chromium driven by selenium + chromedriver.

    with chromium() as browser:
        browser.open("http://127.0.0.1:8050/")
        browser.screenshot("index")          # PNG under browser.shots (a temp folder)
        assert browser.console_errors() == []

Screenshots go to ``$CORDWATCH_SCREENSHOTS`` when set (CI uploads that folder as artifacts),
else to a fresh temporary folder; the path is printed. Nothing is written into the checkout.
Without chromium/chromedriver the test skips, except under CI (CI=true), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


class Browser:
    """A selenium driver plus the console messages and screenshots of one test."""

    def __init__(self, driver: Any, shots: Path) -> None:
        self.driver = driver
        self.shots = shots
        self.messages: list[dict[str, Any]] = []

    def _collect(self) -> None:
        with contextlib.suppress(Exception):  # get_log empties the browser's buffer
            self.messages.extend(self.driver.get_log("browser"))

    def open(self, url: str, timeout: float = 30) -> None:
        """Load ``url`` and wait until the document is complete."""
        self.driver.get(url)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.driver.execute_script("return document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise AssertionError(f"page not loaded: {self.driver.current_url}")
            time.sleep(0.1)
        self._collect()

    def wait_for_path(self, path: str, timeout: float = 30) -> None:
        """Wait until the current URL's path is ``path`` (after a click) and it has loaded."""
        from urllib.parse import unquote, urlsplit

        deadline = time.monotonic() + timeout
        while unquote(urlsplit(self.driver.current_url).path) != path:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {path}, at {self.driver.current_url}")
            time.sleep(0.1)
        self.wait_ready(timeout)

    def image_loaded(self, element: Any) -> bool:
        """True when an <img> decoded (natural width > 0)."""
        return bool(
            self.driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", element
            )
        )

    def has_alert(self) -> bool:
        """True when a JavaScript alert is open (an injected script would open one)."""
        from selenium.common.exceptions import NoAlertPresentException

        try:
            self.driver.switch_to.alert  # noqa: B018
        except NoAlertPresentException:
            return False
        return True

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{len(list(self.shots.glob('*.png'))):02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console_errors(self) -> list[dict[str, Any]]:
        """Console messages of level SEVERE seen so far (JS errors, failed loads)."""
        self._collect()
        return [m for m in self.messages if m.get("level") == "SEVERE"]


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing under CI (.ci/run installs it)")
    pytest.skip(f"{what} not installed")


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[Browser]:
    """A headless chromium; quits it and keeps the screenshots (path printed) afterwards."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            _missing(path)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium")
    env_dir = os.environ.get("CORDWATCH_SCREENSHOTS")
    if env_dir:
        Path(env_dir).mkdir(parents=True, exist_ok=True)
    shots = Path(tempfile.mkdtemp(prefix="cordwatch-screenshots-", dir=env_dir or None))
    profile = tempfile.mkdtemp(prefix="cordwatch-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield Browser(driver, shots)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        print(f"screenshots: {shots}")
