"""CI's DNS stand-in (.ci/nxdomain.py): a definite NXDOMAIN for every question, nothing else."""

from __future__ import annotations

import importlib.util
import socket
import struct
import threading
from types import ModuleType

from conftest import ROOT


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nxdomain", ROOT / ".ci" / "nxdomain.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def query(name: str, ident: int = 0x1234, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def test_every_question_gets_nxdomain_with_its_id_and_question() -> None:
    nxdomain = load()
    for name, qtype in (("remote.example", 1), ("mx.example.net", 15), ("a.b.c.d.example", 28)):
        asked = query(name, qtype=qtype)
        reply = nxdomain.answer(asked)
        ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply[:12])
        assert ident == 0x1234 and (qd, an, ns, ar) == (1, 0, 0, 0)
        assert flags & 0x8000 and flags & 0x0100  # a response; recursion desired copied
        assert flags & 0x000F == 3  # NXDOMAIN
        assert reply[12:] == asked[12:]  # the question, echoed


def test_garbage_and_responses_get_no_answer() -> None:
    nxdomain = load()
    assert nxdomain.answer(b"") is None
    assert nxdomain.answer(b"\x00" * 11) is None
    assert nxdomain.answer(query("x.example")[:-3]) is None  # truncated question
    response = bytearray(query("x.example"))
    response[2] |= 0x80
    assert nxdomain.answer(bytes(response)) is None


def test_the_resolver_sees_a_definite_no_over_udp() -> None:
    """A real socket round trip on a free loopback port (CI runs it on port 53)."""
    nxdomain = load()
    server = nxdomain.UdpServer(("127.0.0.1", 0), nxdomain.Udp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(query("remote.example", ident=7), server.server_address)
            reply, _ = client.recvfrom(512)
        assert struct.unpack("!H", reply[:2]) == (7,) and reply[3] & 0x0F == 3
    finally:
        server.shutdown()
        server.server_close()
