"""A DNS server for a network namespace without a network: NXDOMAIN for every name.

.ci/trixie runs the demo and the tests in a network namespace with only
loopback.  There the host's resolver is unreachable, and every DNS lookup
fails *temporarily* (Exim: "host lookup did not complete", a defer), whereas on
a connected machine the reserved names the tests use (``remote.example``,
RFC 2606) do not exist: a definite NXDOMAIN (Exim: "Unrouteable address").
This server gives that definite answer for every question, on 127.0.0.1:53
(UDP and TCP), so that the tests see what they see on a connected machine and
nothing ever leaves the namespace.  Names in /etc/hosts (localhost) never ask.

Usage: python3 nxdomain.py   (runs until killed; the namespace's end kills it)
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

NXDOMAIN = 3


def answer(query: bytes) -> bytes | None:
    """The NXDOMAIN reply to ``query`` (its header and question echoed), None for garbage."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000:  # a response, not a question
        return None
    opcode_rd = flags & 0x7900  # opcode and RD, copied
    reply_flags = 0x8000 | opcode_rd | 0x0080 | NXDOMAIN  # QR, RA, RCODE
    end = 12
    for _ in range(qdcount):  # skip each question: labels, then type and class
        while end < len(query) and query[end] != 0:
            end += 1 + query[end]
        end += 5
    if end > len(query):
        return None
    return struct.pack("!HHHHHH", ident, reply_flags, qdcount, 0, 0, 0) + query[12:end]


class Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        reply = answer(data)
        if reply is not None:
            sock.sendto(reply, self.client_address)


class Tcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = self.request.recv(2)
        if len(head) == 2:
            (length,) = struct.unpack("!H", head)
            reply = answer(self.request.recv(length))
            if reply is not None:
                self.request.sendall(struct.pack("!H", len(reply)) + reply)


class UdpServer(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    address_family = socket.AF_INET


class TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> None:
    tcp = TcpServer(("127.0.0.1", 53), Tcp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    UdpServer(("127.0.0.1", 53), Udp).serve_forever()


if __name__ == "__main__":
    main()
