"""Webmail in a real browser (issue 19 item 3): Debian's Roundcube on the sandbox, in headless Chromium.

``bin/mailrouter-sandbox up`` starts Roundcube (``php -S`` as www-data, the
project's ``webmail/config.inc.php``) against the sandbox's IMAPS port (Dovecot,
logins through mailrouter-checkpassword) and submission port (Exim, STARTTLS +
AUTH through mailrouter-authd).  Selenium drives Debian's chromium through
chromedriver, as ``test_web_browser.py`` does; the admin pages' TLS is
verified by pinning the sandbox's server key.

The issue's "done when", as one story: a domain admin creates a user with
Maildir in the web admin, Exim delivers a message to them, and they read it in
Roundcube.  And the mbox side: a demo user reads a message delivered by Exim
and sends one that another user fetches over POP3.
"""

from __future__ import annotations

import os
import poplib
import smtplib
import ssl
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from browser_support import account, chromium, needs_browser, sandbox_hub
from conftest import needs_root
from mailrouter.sandbox.dovecot import is_24

WAIT = 60

pytestmark = [
    needs_root,
    pytest.mark.slow,
    needs_browser,
    pytest.mark.skipif(not os.path.exists("/var/lib/roundcube/public_html"),
                       reason="needs Debian's roundcube (bin/install-deps)"),
]


@pytest.fixture(scope="module")
def hub() -> Iterator[dict[str, Any]]:
    with sandbox_hub() as info:
        yield info


@pytest.fixture
def browser(hub: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    with chromium(hub, tmp_path / "profile", width=1400, page_timeout=WAIT) as driver:
        yield driver


def wait(driver: Any) -> Any:
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(driver, WAIT)


def deliver(hub: dict[str, Any], to: str, subject: str, body: str) -> None:
    """A message from outside, over SMTP to Exim (routed and delivered by the hooks)."""
    message = EmailMessage()
    message["From"] = "friend@client.example"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", hub["smtp_port"], local_hostname="client.example", timeout=60) as smtp:
        smtp.send_message(message)


def roundcube_login(driver: Any, hub: dict[str, Any], address: str, password: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(hub["webmail_url"])
    wait(driver).until(ec.presence_of_element_located((By.ID, "rcmloginuser"))).send_keys(address)
    driver.find_element(By.ID, "rcmloginpwd").send_keys(password)
    driver.find_element(By.ID, "rcmloginsubmit").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "messagelist")))


def read_in_roundcube(driver: Any, hub: dict[str, Any], subject: str) -> str:
    """Find ``subject`` in the INBOX list (reloading while Exim delivers), open it, return the body."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    deadline = time.monotonic() + WAIT
    link = None
    while link is None:
        driver.get(hub["webmail_url"] + "?_task=mail&_mbox=INBOX")
        try:
            link = wait(driver).until(ec.presence_of_element_located(
                (By.XPATH, f"//table[@id='messagelist']//a[contains(., '{subject}')]")))
        except TimeoutException:
            if time.monotonic() > deadline:
                raise
    driver.get(link.get_attribute("href").replace("_action=preview", "_action=show"))
    return str(wait(driver).until(ec.presence_of_element_located((By.ID, "messagebody"))).text)


def pop3_subjects(hub: dict[str, Any], address: str, password: str) -> list[str]:
    context = ssl.create_default_context(cafile=hub["ca_cert"])
    session = poplib.POP3_SSL(hub["tls_host"], hub["pop3s_port"], context=context, timeout=30)
    try:
        session.user(address)
        session.pass_(password)
        found = []
        for number in range(1, int(session.stat()[0]) + 1):
            for line in session.retr(number)[1]:
                if line.startswith(b"Subject: "):
                    found.append(line[len(b"Subject: "):].decode())
        return found
    finally:
        session.quit()


@pytest.mark.skipif(is_24(), reason="Dovecot 2.4: mailrouter-2.4.conf serves mbox, no per-user Maildir")
def test_maildir_user_from_the_web_admin_reads_mail_in_roundcube(hub: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    # A domain admin creates the user with Maildir in the web admin ...
    postmaster = account(hub, "postmaster@example.com")
    browser.get(hub["web_url"] + "login")
    browser.find_element(By.NAME, "login").send_keys(postmaster["address"])
    browser.find_element(By.NAME, "password").send_keys(postmaster["password"])
    browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    form = wait(browser).until(lambda d: d.find_element(By.ID, "add-user"))
    form.find_element(By.NAME, "local").send_keys("wendy")
    form.find_element(By.NAME, "password").send_keys("Wendy-Webmail-1")
    Select(form.find_element(By.NAME, "format")).select_by_value("maildir")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser).until(lambda d: d.current_url.endswith("/domains/example.com/users/wendy"))
    assert browser.find_element(By.ID, "format").text == "maildir"

    # ... Exim delivers to her Maildir ...
    subject = f"for wendy {uuid.uuid4().hex[:8]}"
    deliver(hub, "wendy@example.com", subject, "Hello Wendy, this came through Exim.\n")
    maildir = Path(hub["spool_dir"]) / "example.com" / "wendy" / "Maildir"
    deadline = time.monotonic() + WAIT
    while not any(subject.encode() in p.read_bytes() for sub in ("new", "cur") if (maildir / sub).is_dir()
                  for p in (maildir / sub).iterdir()):
        assert time.monotonic() < deadline, "not delivered to the Maildir"
        time.sleep(0.3)
    assert not (Path(hub["spool_dir"]) / "wendy@example.com").exists()  # no mbox

    # ... and she reads it in Roundcube.
    browser.delete_all_cookies()
    roundcube_login(browser, hub, "wendy@example.com", "Wendy-Webmail-1")
    assert "Hello Wendy, this came through Exim." in read_in_roundcube(browser, hub, subject)


def test_mbox_user_reads_and_sends_in_roundcube(hub: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    alice, bob = account(hub, "alice@example.com"), account(hub, "bob@example.com")
    incoming = f"to alice {uuid.uuid4().hex[:8]}"
    deliver(hub, alice["address"], incoming, "Hello Alice, from outside.\n")
    roundcube_login(browser, hub, alice["address"], alice["password"])
    assert "Hello Alice, from outside." in read_in_roundcube(browser, hub, incoming)

    outgoing = f"from alice {uuid.uuid4().hex[:8]}"
    browser.get(hub["webmail_url"] + f"?_task=mail&_action=compose&_to={bob['address']}")
    wait(browser).until(ec.presence_of_element_located((By.NAME, "_subject"))).send_keys(outgoing)
    browser.find_element(By.NAME, "_message").send_keys("Hello Bob, sent from Roundcube.")
    browser.execute_script("rcmail.command('send', {})")
    wait(browser).until(lambda d: "_action=compose" not in d.current_url)  # back to the list: sent

    deadline = time.monotonic() + WAIT
    while outgoing not in pop3_subjects(hub, bob["address"], bob["password"]):
        assert time.monotonic() < deadline, "bob never got it over POP3"
        time.sleep(0.5)
