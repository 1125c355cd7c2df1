"""A throwaway certificate authority and server certificate, made with openssl.

The one certificate maker of the sandbox, the tests and the benchmarks.
Clients verify the server against ``ca.pem`` with host name ``localhost`` (or
IP 127.0.0.1), exactly as they would in production against a real CA.  Keys
are created mode 0600 (root); ``key_group`` makes the server key 0640
root:GROUP for a daemon that reads it as that group (Exim runs as Debian-exim).
"""

from __future__ import annotations

import grp
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mailrouter.errors import DaemonError

OPENSSL = "/usr/bin/openssl"
VALID_DAYS = "30"


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path
    cert: Path  # server certificate
    key: Path  # server private key
    combined: Path  # cert + key in one PEM (socat, stunnel)


def _openssl(*args: str) -> None:
    done = subprocess.run([OPENSSL, *args], capture_output=True, check=False)
    if done.returncode != 0:
        raise DaemonError(f"openssl {args[0]} failed: {done.stderr.decode('utf-8', 'replace')}")


def make_certificates(
    directory: Path, host: str = "localhost", key_group: str | None = None
) -> Certificates:
    """Create ``ca.pem`` and a ``server.pem``/``server.key`` for ``host`` and 127.0.0.1.

    ``server-combined.pem`` holds certificate and key in one file (socat,
    stunnel, Dovecot) and stays root's (0600).
    """
    directory.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
        key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
        extensions = directory / "server.ext"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", VALID_DAYS,
            "-subj", "/CN=mailrouter sandbox CA", "-keyout", str(ca_key), "-out", str(ca_cert),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
            "-keyout", str(key), "-out", str(csr),
        )
        extensions.write_text(
            f"subjectAltName=DNS:{host},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
            "basicConstraints=CA:FALSE\n"
        )
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", VALID_DAYS, "-out", str(cert), "-extfile", str(extensions),
        )
        combined = directory / "server-combined.pem"
        combined.write_bytes(cert.read_bytes() + key.read_bytes())
    finally:
        os.umask(old_umask)
    for public in (ca_cert, cert):
        public.chmod(0o644)
    if key_group is not None:
        os.chown(key, 0, grp.getgrnam(key_group).gr_gid)
        key.chmod(0o640)
    ca_key.unlink()  # nothing else is ever signed: the CA key need not survive
    csr.unlink()
    return Certificates(ca_cert=ca_cert, cert=cert, key=key, combined=combined)
