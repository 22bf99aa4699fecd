"""Headless Chromium for the UI tests: Debian's ``chromium`` driven through Debian's ``chromium-driver``.

Nothing is downloaded by a Python package: when ``/usr/bin/chromium`` or ``/usr/bin/chromedriver`` is missing,
``ensure_chromium`` installs both with apt (the machines and CI run as root), once per machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PACKAGES = ("chromium", "chromium-driver")


def ensure_chromium(timeout: float = 900.0) -> None:
    """Install Debian's chromium and chromium-driver if absent; raise ``RuntimeError`` if that fails."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError(f"{CHROMIUM} is missing and there is no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:  # a stale or missing package list: refresh it once, then retry
        subprocess.run([apt, "update", "-q"], env=env, capture_output=True, text=True, timeout=timeout, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise RuntimeError(f"could not install {' '.join(PACKAGES)}: {done.stdout[-2000:]}{done.stderr[-2000:]}")


def headless_chrome(download_dir: Path | None = None):
    """A Selenium WebDriver on headless Debian chromium (1400×1000, no sandbox: tests run as root)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    if download_dir is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir)})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


if __name__ == "__main__":
    ensure_chromium()
    print(subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True).stdout.strip())
