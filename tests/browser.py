"""A real headless Chromium for the browser tests: Debian's ``chromium`` driven by Selenium
through ``chromedriver`` (both installed by .ci/run; never downloaded at run time)."""

from __future__ import annotations

import contextlib
import shutil


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(f"none of {', '.join(names)} is installed: apt-get install chromium chromium-driver "
                       f"(.ci/run does)")


@contextlib.contextmanager
def chromium(width: int = 1100, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = _binary("chromium", "chromium-browser", "google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(_binary("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
