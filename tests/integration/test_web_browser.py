"""The web interface in a real browser: Debian's headless Chromium against the sandbox.

Selenium drives ``/usr/bin/chromium`` through ``/usr/bin/chromedriver`` (both
Debian packages, installed by bin/install-deps; nothing is downloaded at run
time).  The browser trusts exactly the sandbox's server key (its SPKI hash),
so TLS is verified, not switched off.  The story: a domain admin logs in,
creates a user with a password and a quota, and that user then logs in over
POP3S through the sandbox; the same admin typing a URL of another domain sees
a refusal; the new user sees their own quota in the browser.
"""

from __future__ import annotations

import os
import poplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser_support import account, chromium, needs_browser, sandbox_hub
from conftest import needs_root

PAGE_TIMEOUT = 30

pytestmark = [
    needs_root,
    needs_browser,
]


@pytest.fixture(scope="module")
def hub() -> Iterator[dict[str, Any]]:
    with sandbox_hub() as info:
        yield info


@pytest.fixture
def browser(hub: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    with chromium(hub, tmp_path / "profile", width=1200, page_timeout=PAGE_TIMEOUT) as driver:
        yield driver


def log_in(driver: Any, hub: dict[str, Any], login: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(hub["web_url"] + "login")
    driver.find_element(By.NAME, "login").send_keys(login)
    driver.find_element(By.NAME, "password").send_keys(password)
    submit_and_wait(driver, driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]"))


def submit_and_wait(driver: Any, button: Any) -> None:
    """Click a form's button and wait until the browser has loaded the answer
    (the old page's elements go stale), so assertions never see the old page."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    old = driver.find_element("tag name", "html")
    button.click()

    def gone(_driver: Any) -> bool:
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            # Mid-navigation chromedriver may answer for the old node with this
            # inspector error instead of "stale element": the same fact.
            return "does not belong to the document" in str(exc)
        return False

    WebDriverWait(driver, PAGE_TIMEOUT).until(gone)


def pop3_login(hub: dict[str, Any], address: str, password: str) -> int:
    """Messages in the mailbox after a POP3S login -- at once: the PAM helper writes a new
    user's record at login (the sandbox runs no refresher)."""
    context = ssl.create_default_context(cafile=hub["ca_cert"])
    session = poplib.POP3_SSL("127.0.0.1", hub["pop3s_port"], context=context, timeout=30)
    try:
        session.user(address)
        session.pass_(password)
        return int(session.stat()[0])
    finally:
        session.quit()


def test_domain_admin_creates_a_user_who_then_reads_mail(hub: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    postmaster = account(hub, "postmaster@example.com")
    log_in(browser, hub, postmaster["address"], postmaster["password"])
    assert browser.current_url.endswith("/domains/example.com"), browser.current_url
    assert browser.find_element(By.TAG_NAME, "h1").text == "example.com"
    screenshot = Path(os.environ.get("MAILROUTER_SCREENSHOT") or Path(hub["dir"]) / "web-domain.png")
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000

    form = browser.find_element(By.ID, "add-user")
    form.find_element(By.NAME, "local").send_keys("webuser")
    form.find_element(By.NAME, "password").send_keys("Web-User-Pass-1")
    form.find_element(By.NAME, "quota").send_keys("5M")
    submit_and_wait(browser, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    assert browser.current_url.endswith("/domains/example.com/users/webuser"), browser.current_url
    assert "added user webuser@example.com" in browser.find_element(By.CSS_SELECTOR, ".notice").text
    assert "5M" in browser.find_element(By.ID, "user").text

    assert pop3_login(hub, "webuser@example.com", "Web-User-Pass-1") == 0

    # Another tenant's page, typed by hand: slapd hides it, the page says so.
    browser.get(hub["web_url"] + "domains/example.org")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not found"
    assert "no such domain example.org" in browser.find_element(By.ID, "error").text


def test_user_sees_own_quota_and_cannot_administer(hub: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    alice = account(hub, "alice@example.com")
    log_in(browser, hub, alice["address"], alice["password"])
    assert browser.current_url.endswith("/me"), browser.current_url
    table = browser.find_element(By.ID, "me").text
    assert "alice@example.com" in table and "10M" in table
    # A forged form post from her own session: the page offered nothing, slapd refuses.
    browser.get(hub["web_url"] + "domains/example.com")
    form = browser.find_element(By.ID, "add-user")
    form.find_element(By.NAME, "local").send_keys("sneaky")
    form.find_element(By.NAME, "password").send_keys("Sneaky-Pass-1")
    submit_and_wait(browser, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not allowed"
    assert "not allowed to add users" in browser.find_element(By.ID, "error").text
