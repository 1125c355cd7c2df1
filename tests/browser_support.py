"""Test support for the browser tests: the sandbox hub and Debian's headless Chromium.

Selenium drives ``/usr/bin/chromium`` through ``/usr/bin/chromedriver`` (both
Debian packages, installed by bin/install-deps; nothing is downloaded at run
time).  The browser trusts exactly the sandbox's server key (its SPKI hash), so
TLS is verified, not switched off.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, VENV_ENV

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SANDBOX = str(ROOT / "bin" / "mailrouter-sandbox")

needs_browser = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs Debian's chromium and chromium-driver (bin/install-deps)",
)


def account(hub: dict[str, Any], address: str) -> dict[str, str]:
    return next(a for a in hub["accounts"] if a.get("address") == address)


@contextmanager
def sandbox_hub() -> Iterator[dict[str, Any]]:
    """``mailrouter-sandbox up`` (the venv under test), its JSON; ``down`` after."""
    env = {**os.environ, **VENV_ENV}  # the wrapper runs the venv under test
    done = subprocess.run([SANDBOX, "up"], capture_output=True, text=True, timeout=180, check=False, env=env)
    assert done.returncode == 0, done.stderr
    info: dict[str, Any] = json.loads(done.stdout)
    try:
        yield info
    finally:
        subprocess.run([SANDBOX, "down", "--dir", info["dir"]], capture_output=True, timeout=120, check=False,
                       env=env)


def spki_hash(certificate: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(certificate.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


@contextmanager
def chromium(hub: dict[str, Any], profile: Path, *, width: int, page_timeout: float) -> Iterator[Any]:
    """A headless Chromium that trusts only the sandbox's server key."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    pinned = spki_hash(Path(hub["dir"]) / "tls" / "server.pem")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     f"--window-size={width},1000", f"--user-data-dir={profile}",
                     f"--ignore-certificate-errors-spki-list={pinned}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(page_timeout)
    try:
        yield driver
    finally:
        driver.quit()
