#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): mbox delivery through mailrouter-deliver and mailrouter-lmtpd vs Exim's appendfile.

Run as root, one command::

    /opt/mailrouter/venv/bin/python bench/bench_delivery.py [--messages 200] [--big-gb 1]

1. Throughput: N messages are queued (``exim -odq``) for a recipient routed to
   the pipe transport running mailrouter-deliver, then one ``exim -qf`` queue
   run delivers them all and is timed; the same for a recipient routed to the
   lmtp transport feeding a running mailrouter-lmtpd (which looks the user up
   in a private slapd, as in production), and for one routed to a stock
   appendfile transport into the same spool.  Same private Exim, same config,
   same message, same run -- see tests/deliver_support.py (MiniExim).  Then
   the same with 10 senders: the queued messages are split over 10 ``exim
   -M`` delivery processes running at once (lmtp vs appendfile).
2. Mailbox size: the median wall time of one mailrouter-deliver run into an
   empty mbox and into a real ~1 GB mbox (written first, real mbox entries),
   runs alternating between the two.

Prints the figures and the ratios.  Everything lives in a temp dir that is
removed at the end (``--keep`` to look at it).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from deliver_support import (  # noqa: E402 - the test helpers live in tests/
    MAIL_GID,
    MAIL_UID,
    Lmtpd,
    MiniExim,
    address_data,
    make_root,
    make_spool,
    run_deliver,
    write_config,
)
from mailrouter import entries  # noqa: E402
from mailrouter.mailbox import mbox  # noqa: E402
from mailrouter.sandbox import configs, demo  # noqa: E402
from mailrouter.sandbox.slapd import Slapd  # noqa: E402

SENDERS = 10  # the parallel case: delivery processes at once


def sample_message(n: int, size: int = 4000) -> bytes:
    body = ("The quick brown fox jumps over the lazy dog. " * 2 + "\n") * (size // 91)
    return f"Subject: bench {n}\nMessage-Id: <bench{n}@test>\n\n{body}From here\n".encode()


def throughput(exim: MiniExim, recipient: str, count: int, senders: int = 1) -> float:
    """Messages per second: ``count`` queued messages delivered by one ``exim -qf``
    (``senders`` = 1) or split over ``senders`` ``exim -M`` processes run at once.

    With several senders message n goes to ``recipient`` with ``n % senders``
    appended to its local part (``lmtp3@``): each sender mostly writes its own
    mailbox, as concurrent deliveries on a hub do (one shared mailbox would
    measure lock waits, where appendfile sleeps ``lock_interval``, 3 s).
    """
    local, _, domain = recipient.partition("@")
    for n in range(count):
        to = f"{local}{n % senders}@{domain}" if senders > 1 else recipient
        done = exim.run("-odq", "-oi", "-f", "bench@example.org", to, stdin=sample_message(n))
        if done.returncode != 0:
            raise SystemExit(f"queueing failed: {done}")
    if exim.queue_count() != count:
        raise SystemExit("messages did not all reach the queue")
    ids = re.findall(r"^\s*\S+\s+\S+\s+(\S{16,23}) <", exim.queue_list().stdout, re.MULTILINE)
    if len(ids) != count:
        raise SystemExit(f"found {len(ids)} of {count} queued message ids")
    start = time.perf_counter()
    if senders == 1:
        exim.queue_run()
    else:
        runs = [subprocess.Popen(exim.argv("-M", *ids[i::senders]), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for i in range(senders)]
        for run in runs:
            run.wait()
    elapsed = time.perf_counter() - start
    if exim.queue_count() != 0:
        raise SystemExit(f"queue not empty after the run:\n{exim.main_log()[-3000:]}")
    return count / elapsed


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _group_cpu(pgid: int) -> float:
    """CPU seconds of every live process in process group ``pgid`` (lmtpd and its workers)."""
    total = 0.0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getpgid(int(name)) == pgid:
                    total += _process_cpu(int(name))
            except OSError:
                continue
    return total


def cpu_per_message(rig: DeliveryRig, recipient: str, count: int) -> dict[str, float]:
    """CPU milliseconds per message of one ``exim -qf`` run, by who spent them: Exim (every
    process the run forked: routing, transports, mailrouter-deliver), lmtpd, slapd.

    Unlike msg/s this hardly depends on what else the machine runs: a wall-clock
    ratio on a busy machine mostly measures waits for a CPU at each hand-off.
    """
    assert rig.lmtpd.process is not None and rig.slapd.process is not None
    for n in range(count):
        rig.exim.run("-odq", "-oi", "-f", "bench@example.org", recipient, stdin=sample_message(n))
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = (_group_cpu(rig.lmtpd.process.pid), _process_cpu(rig.slapd.process.pid))
    rig.exim.queue_run()
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = (_group_cpu(rig.lmtpd.process.pid), _process_cpu(rig.slapd.process.pid))
    exim = (after_children.ru_utime + after_children.ru_stime
            - before_children.ru_utime - before_children.ru_stime)
    return {
        "exim": exim * 1000 / count,
        "lmtpd": (after[0] - before[0]) * 1000 / count,
        "slapd": (after[1] - before[1]) * 1000 / count,
    }


@dataclass
class DeliveryRig:
    """MiniExim with all three transports: ``ours@`` (pipe), ``lmtp@`` (mailrouter-lmtpd,
    users in a private slapd), ``stock@`` (appendfile), one spool."""

    exim: MiniExim
    slapd: Slapd
    lmtpd: Lmtpd
    spool: Path

    def close(self) -> None:
        try:
            self.exim.close()
        finally:
            self.lmtpd.stop()
            self.slapd.stop()


def delivery_rig(root: Path, data: demo.DemoDirectory | None = None) -> DeliveryRig:
    """Everything under ``root`` (world-traversable); ``data`` the directory (default: the demo,
    {SSHA} hashes: the service account's bind is not what is measured)."""
    data = data or demo.build(scheme="ssha")
    spool = make_spool(root / "spool")
    lmtp_users = [f"lmtp{n}" for n in range(SENDERS)] + ["lmtp"]
    users = [
        entries.user_entry(local, "example.com", data.base_dn, password_hash=None, uid_number=MAIL_UID,
                           gid_number=MAIL_GID, mailbox="/var/mail/x", quota="0")
        for local in lmtp_users
    ]
    slapd = Slapd(root / "slapd", ldif=[data.ldif, entries.to_ldif(users)], root=ROOT,
                  seed_passwords=data.seed_passwords).start()
    try:
        service = data.account("service")
        config = configs.write_config(
            root / "mailrouter.toml", uris=[slapd.uri], base_dn=data.base_dn, bind_dn=service.dn,
            password=service.password, mbox_template=f"{spool}/{{local}}@{{domain}}", storage_user="mail",
            lock_timeout=30.0,
        )
        lmtpd = Lmtpd(root / "lmtpd", config, workers=8).start()
    except BaseException:
        slapd.stop()
        raise
    exim = MiniExim(root / "exim", config,
                    hook_users={"ours": address_data(spool / "ours@example.com")},
                    file_users={f"stock{n}": address_data(spool / f"stock{n}@example.com")
                                for n in [*map(str, range(SENDERS)), ""]},
                    lmtp_users=lmtp_users, lmtp_socket=lmtpd.socket, add_headers=True)
    return DeliveryRig(exim, slapd, lmtpd, spool)


def fill_mbox(path: Path, gigabytes: float) -> None:
    """A real mbox of about ``gigabytes`` GB: many copies of one well-formed entry."""
    prefix = b"From filler@example.org Tue Nov 24 20:40:45 2026\n"
    block = b"".join(mbox.entry(prefix, sample_message(i, 8000)) for i in range(128))
    target = int(gigabytes * 1024**3)
    with path.open("wb") as handle:
        written = 0
        while written < target:
            handle.write(block)
            written += len(block)


def hook_times(config: Path, boxes: list[Path], runs: int) -> list[float]:
    """Median time of one hook run per mailbox; runs alternate so drift hits all alike."""
    times: list[list[float]] = [[] for _ in boxes]
    for n in range(runs):
        for box, bucket in zip(boxes, times, strict=True):
            start = time.perf_counter()
            done = run_deliver(config, address_data(box), sample_message(n))
            bucket.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"delivery failed: {done}")
    return [statistics.median(bucket) for bucket in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--big-gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=20, help="hook runs per mailbox size")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    root = make_root("mr-bench-")
    rig: DeliveryRig | None = None
    try:
        rig = delivery_rig(root / "rig")
        exim = rig.exim
        spool = make_spool(root / "spool")
        config = write_config(root / "mailrouter.toml", spool, lock_timeout=30.0)
        print(f"throughput: {args.messages} messages of ~4 KB per transport, one exim -qf each")
        ours = throughput(exim, "ours@example.com", args.messages)
        lmtp = throughput(exim, "lmtp@example.com", args.messages)
        stock = throughput(exim, "stock@example.com", args.messages)
        print(f"  pipe -> mailrouter-deliver : {ours:8.1f} msg/s")
        print(f"  lmtp -> mailrouter-lmtpd   : {lmtp:8.1f} msg/s")
        print(f"  appendfile (stock Exim)    : {stock:8.1f} msg/s")
        print(f"  ratio hook/appendfile      : {ours / stock:8.3f}")
        print(f"  ratio lmtp/appendfile      : {lmtp / stock:8.3f}")
        print(f"{SENDERS} senders: the same, split over {SENDERS} exim -M processes at once")
        lmtp_p = throughput(exim, "lmtp@example.com", args.messages, SENDERS)
        stock_p = throughput(exim, "stock@example.com", args.messages, SENDERS)
        print(f"  lmtp -> mailrouter-lmtpd   : {lmtp_p:8.1f} msg/s")
        print(f"  appendfile (stock Exim)    : {stock_p:8.1f} msg/s")
        print(f"  ratio lmtp/appendfile      : {lmtp_p / stock_p:8.3f}")
        print("CPU per message (ms; exim = every process the queue run forked):")
        for name, recipient in (("pipe", "ours@example.com"), ("lmtp", "lmtp@example.com"),
                                ("appendfile", "stock@example.com")):
            cpu = cpu_per_message(rig, recipient, args.messages)
            parts = "  ".join(f"{who} {ms:6.2f}" for who, ms in cpu.items())
            print(f"  {name:<10}: total {sum(cpu.values()):6.2f}  ({parts})")

        empty = spool / "empty@example.com"
        big = spool / "big@example.com"
        fill_mbox(big, args.big_gb)
        shutil.chown(big, "mail", "mail")
        big.chmod(0o600)
        size = big.stat().st_size
        t_empty, t_big = hook_times(config, [empty, big], args.runs)
        print(f"delivery time, median of {args.runs} mailrouter-deliver runs:")
        print(f"  into an empty mbox        : {t_empty * 1000:8.1f} ms")
        print(f"  into a {size / 1024**3:.2f} GB mbox        : {t_big * 1000:8.1f} ms")
        print(f"  ratio big/empty           : {t_big / t_empty:8.3f}")
    finally:
        if rig is not None:
            rig.close()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
