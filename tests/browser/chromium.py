"""The system Chromium driven through the system chromedriver (Selenium, no downloads)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = (
    "apt-get install -y --no-install-recommends chromium chromium-driver "
    "(scripts/test installs them when run as root)"
)


def missing() -> list[str]:
    return [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]


def start(
    *, lang: str = "en-US", downloads: Path | None = None, width: int = 1200, height: int = 900
):  # type: ignore[no-untyped-def]
    """A headless Chromium; `lang` sets its Accept-Language."""
    # Selenium Manager must not try to fetch a driver or a browser: both are given.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--lang={lang}",
    ):
        options.add_argument(argument)
    prefs: dict[str, object] = {"intl.accept_languages": lang}
    if downloads is not None:
        prefs.update(
            {
                "download.default_directory": str(downloads),
                "download.prompt_for_download": False,
                "safebrowsing.enabled": False,
            }
        )
    options.add_experimental_option("prefs", prefs)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
