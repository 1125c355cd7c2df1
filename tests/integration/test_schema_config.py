"""The cn=config variant of the deployment works (the schema's two forms: tests/unit/test_schema.py)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import ldap3
import pytest

from conftest import ROOT
from mailrouter import passwords
from mailrouter.sandbox.slapd import SLAPADD, SLAPD, SLAPTEST, free_port, render_slapd_conf, wait_for_port

SCHEMA_DIR = Path("/etc/ldap/schema")


def run(argv: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv[0]} failed: {done.stderr}{done.stdout}"


def test_slapd_conf_converts_to_cn_config_and_serves(tmp_path: Path) -> None:
    """The README's cn=config route: slaptest -f slapd.conf -F DIR, then slapd -F DIR."""
    template = (ROOT / "ldap" / "slapd.conf").read_text(encoding="utf-8")
    conf = tmp_path / "slapd.conf"
    conf.write_text(render_slapd_conf(template, ROOT, tmp_path), encoding="utf-8")
    (tmp_path / "db").mkdir()
    (tmp_path / "accesslog").mkdir()
    config_dir = tmp_path / "slapd.d"
    config_dir.mkdir()
    # slaptest opens the mdb read-only: load the seed first, then convert.
    run([SLAPADD, "-q", "-f", str(conf)], (ROOT / "ldap" / "seed.ldif").read_text())
    run([SLAPADD, "-q", "-f", str(conf), "-b", "cn=accesslog"], "")  # creates the empty audit log
    run([SLAPTEST, "-f", str(conf), "-F", str(config_dir)])
    port = free_port()
    process = subprocess.Popen([SLAPD, "-d", "0", "-F", str(config_dir), "-h", f"ldap://127.0.0.1:{port}/"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port(port, 10, process)
        connection = ldap3.Connection(ldap3.Server(f"ldap://127.0.0.1:{port}", get_info=ldap3.NONE),
                                      raise_exceptions=False)
        connection.open()
        connection.search("o=top", "(objectClass=*)", ldap3.SUBTREE)
        assert connection.result["result"] == 32  # the ACLs came along: anonymous sees nothing
        connection.unbind()
        olc = (config_dir / "cn=config" / "olcDatabase={1}mdb.ldif").read_text().replace("\n ", "")
        assert 'member.expand="cn=admin,dc=$2,o=top" =wx' in olc
        # The password settings came along too: the project's Argon2 strength and ppolicy.
        modules = (config_dir / "cn=config" / "cn=module{0}.ldif").read_text().replace("\n ", "")
        assert f"olcModuleLoad: {{1}}{passwords.slapd_moduleload()}\n" in modules
        assert "olcModuleLoad: {2}ppolicy\n" in modules
        overlay = (config_dir / "cn=config" / "olcDatabase={1}mdb" / "olcOverlay={0}ppolicy.ldif").read_text()
        assert "olcPPolicyHashCleartext: TRUE" in overlay and "olcPPolicyUseLockout: FALSE" in overlay
        assert "olcPPolicyDefault: cn=default,ou=policies,o=top" in overlay
        # The audit log and the integrity overlays came along (issue 17).
        for module in ("accesslog", "/usr/local/lib/ldap/logscrub.so", "unique", "refint"):
            assert f"}}{module}\n" in modules
        mail_db = config_dir / "cn=config" / "olcDatabase={1}mdb"
        overlays = {path.name for path in mail_db.glob("olcOverlay=*.ldif")}
        assert overlays == {"olcOverlay={0}ppolicy.ldif", "olcOverlay={1}unique.ldif",
                            "olcOverlay={2}refint.ldif", "olcOverlay={3}accesslog.ldif"}
        log_db = (config_dir / "cn=config" / "olcDatabase={2}mdb.ldif").read_text().replace("\n ", "")
        assert "olcSuffix: cn=accesslog" in log_db and "this/reqDN/-*" in log_db
        assert (config_dir / "cn=config" / "olcDatabase={2}mdb" / "olcOverlay={0}logscrub.ldif").exists()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_schema_ldif_loads_into_a_cn_config_tree(tmp_path: Path) -> None:
    """ldap/mailrouter.ldif is valid cn=config input next to Debian's own schema LDIFs."""
    if not (SCHEMA_DIR / "nis.ldif").exists():
        pytest.fail("Debian's schema LDIFs are missing: is slapd installed?")
    parts = [
        "dn: cn=config\nobjectClass: olcGlobal\ncn: config\n",
        "dn: cn=module{0},cn=config\nobjectClass: olcModuleList\ncn: module{0}\n"
        "olcModulePath: /usr/lib/ldap\nolcModuleLoad: back_mdb\nolcModuleLoad: ppolicy\n",  # seed: policies
        "dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n",
    ]
    for name in ("core", "cosine", "inetorgperson", "nis"):
        parts.append((SCHEMA_DIR / f"{name}.ldif").read_text())
    parts.append((ROOT / "ldap" / "mailrouter.ldif").read_text())
    parts.append(
        f"dn: olcDatabase=mdb,cn=config\nobjectClass: olcDatabaseConfig\nobjectClass: olcMdbConfig\n"
        f"olcDatabase: mdb\nolcSuffix: o=top\nolcDbDirectory: {tmp_path / 'db'}\n"
    )
    (tmp_path / "db").mkdir()
    config_dir = tmp_path / "slapd.d"
    config_dir.mkdir()
    run([SLAPADD, "-n0", "-F", str(config_dir)], "\n".join(parts))
    run([SLAPADD, "-q", "-F", str(config_dir), "-b", "o=top"], (ROOT / "ldap" / "seed.ldif").read_text())
    run([SLAPTEST, "-F", str(config_dir)])


# -- issue 17: ldap/audit.ldif, the audit log and integrity overlays for an existing cn=config -----------
def ldif_entries(text: str) -> dict[str, dict[str, list[str]]]:
    """DN -> attribute -> values of a plain LDIF (no base64, folded lines joined)."""
    found: dict[str, dict[str, list[str]]] = {}
    for block in text.replace("\n ", "").split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith("#")]
        if not lines:
            continue
        dn = lines[0].split(": ", 1)[1]
        attributes: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, value = line.split(": ", 1)
            attributes.setdefault(name, []).append(" ".join(value.split()))
        found[dn] = attributes
    return found


def test_audit_ldif_says_what_slapd_conf_says(tmp_path: Path) -> None:
    """Every value of ldap/audit.ldif is what slaptest makes of ldap/slapd.conf."""
    template = (ROOT / "ldap" / "slapd.conf").read_text(encoding="utf-8")
    conf = tmp_path / "slapd.conf"
    conf.write_text(render_slapd_conf(template, ROOT, tmp_path), encoding="utf-8")
    for name in ("db", "accesslog", "slapd.d"):
        (tmp_path / name).mkdir()
    run([SLAPADD, "-q", "-f", str(conf)], (ROOT / "ldap" / "seed.ldif").read_text())
    run([SLAPADD, "-q", "-f", str(conf), "-b", "cn=accesslog"], "")
    run([SLAPTEST, "-f", str(conf), "-F", str(tmp_path / "slapd.d")])
    ours = ldif_entries((ROOT / "ldap" / "audit.ldif").read_text(encoding="utf-8"))
    converted: dict[str, dict[str, list[str]]] = {}
    for path in (tmp_path / "slapd.d").rglob("*.ldif"):
        relative = path.relative_to(tmp_path / "slapd.d").with_suffix("")
        dn = ",".join(reversed(relative.parts))
        converted[dn] = next(iter(ldif_entries(path.read_text(encoding="utf-8")).values()))
    for dn, attributes in ours.items():
        if dn.startswith("cn=module"):  # slaptest puts every module in one list
            loaded = [v.split("}", 1)[1] for v in converted["cn=module{0},cn=config"]["olcModuleLoad"]]
            wanted = [v.split("}", 1)[1] for v in attributes["olcModuleLoad"]]
            assert loaded[-len(wanted):] == wanted
            continue
        assert dn in converted, dn
        for name, values in attributes.items():
            if name == "olcDbDirectory":
                continue
            assert sorted(converted[dn][name]) == sorted(values), (dn, name)


def test_audit_ldif_loads_into_a_cn_config_tree_and_keeps_passwords_out(tmp_path: Path) -> None:
    """A cn=config deployment with ldap/audit.ldif added: slapd logs a root password
    change, without the password."""
    short = Path(tempfile.mkdtemp(prefix="ldapi-"))  # a Unix socket's path has 108 bytes at most
    socket = short / "ldapi"
    parts = [
        "dn: cn=config\nobjectClass: olcGlobal\ncn: config\n",
        "dn: cn=module{0},cn=config\nobjectClass: olcModuleList\ncn: module{0}\n"
        "olcModulePath: /usr/lib/ldap\nolcModuleLoad: back_mdb\nolcModuleLoad: ppolicy\n",
        "dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n",
    ]
    for name in ("core", "cosine", "inetorgperson", "nis"):
        parts.append((SCHEMA_DIR / f"{name}.ldif").read_text())
    parts.append((ROOT / "ldap" / "mailrouter.ldif").read_text())
    parts.append(
        f"dn: olcDatabase={{1}}mdb,cn=config\nobjectClass: olcDatabaseConfig\nobjectClass: olcMdbConfig\n"
        f"olcDatabase: {{1}}mdb\nolcSuffix: o=top\nolcDbDirectory: {tmp_path / 'db'}\n"
        "olcRootDN: gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth\n"
    )
    parts.append("dn: olcOverlay={0}ppolicy,olcDatabase={1}mdb,cn=config\nobjectClass: olcOverlayConfig\n"
                 "objectClass: olcPPolicyConfig\nolcOverlay: {0}ppolicy\nolcPPolicyHashCleartext: TRUE\n")
    audit = (ROOT / "ldap" / "audit.ldif").read_text(encoding="utf-8")
    parts.append(audit.replace("/var/lib/ldap/accesslog", str(tmp_path / "accesslog")))
    for name in ("db", "accesslog", "slapd.d"):
        (tmp_path / name).mkdir()
    config_dir = tmp_path / "slapd.d"
    run([SLAPADD, "-n0", "-F", str(config_dir)], "\n".join(parts))
    run([SLAPADD, "-q", "-F", str(config_dir), "-b", "o=top"], (ROOT / "ldap" / "seed.ldif").read_text())
    run([SLAPADD, "-q", "-F", str(config_dir), "-b", "cn=accesslog"], "")
    run([SLAPTEST, "-F", str(config_dir)])
    ldapi = "ldapi://" + str(socket).replace("/", "%2F")
    log = tmp_path / "slapd.log"
    with log.open("wb") as output:
        process = subprocess.Popen([SLAPD, "-d", "0", "-F", str(config_dir), "-h", ldapi],
                                   stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            probe = subprocess.run(["ldapwhoami", "-Q", "-Y", "EXTERNAL", "-H", ldapi], capture_output=True,
                                   check=False)
            if probe.returncode == 0:
                break
            time.sleep(0.05)
        assert process.poll() is None, log.read_text("utf-8", "replace")
        secret = "Cleartext-In-Config-Test"
        run(["ldapmodify", "-Q", "-Y", "EXTERNAL", "-H", ldapi],
            f"dn: uid=admin,o=top\nchangetype: modify\nreplace: userPassword\nuserPassword: {secret}\n")
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(short, ignore_errors=True)
    done = subprocess.run(["slapcat", "-F", str(config_dir), "-b", "cn=accesslog"],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.replace("\n ", "").splitlines()
    values = [base64.b64decode(line.split(":: ", 1)[1]).decode("utf-8", "replace") if ":: " in line
              else line.split(": ", 1)[-1] for line in lines]
    assert "reqMod: userPassword:= <withheld>" in lines
    assert "reqDN: uid=admin,o=top" in lines
    assert not [v for v in values if secret in v or "{ARGON2}" in v or "{SSHA}" in v]
