#!/opt/mailrouter/venv/bin/python
"""Benchmark (not a test): mbox delivery through mailrouter-deliver vs Exim's appendfile.

Run as root, one command::

    /opt/mailrouter/venv/bin/python bench/bench_delivery.py [--messages 200] [--big-gb 1]

1. Throughput: N messages are queued (``exim -odq``) for a recipient routed to
   the pipe transport running mailrouter-deliver, then one ``exim -qf`` queue
   run delivers them all and is timed; the same for a recipient routed to a
   stock appendfile transport into the same spool.  Same private Exim, same
   config, same message, same run -- see tests/deliver_support.py (MiniExim).
2. Mailbox size: the median wall time of one mailrouter-deliver run into an
   empty mbox and into a real ~1 GB mbox (written first, real mbox entries),
   runs alternating between the two.

Prints the figures and the ratios.  Everything lives in a temp dir that is
removed at the end (``--keep`` to look at it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from deliver_support import (  # noqa: E402 - the test helpers live in tests/
    MiniExim,
    address_data,
    make_root,
    make_spool,
    run_deliver,
    write_config,
)
from mailrouter.mailbox import mbox  # noqa: E402


def sample_message(n: int, size: int = 4000) -> bytes:
    body = ("The quick brown fox jumps over the lazy dog. " * 2 + "\n") * (size // 91)
    return f"Subject: bench {n}\nMessage-Id: <bench{n}@test>\n\n{body}From here\n".encode()


def throughput(exim: MiniExim, recipient: str, count: int) -> float:
    for n in range(count):
        done = exim.run("-odq", "-oi", "-f", "bench@example.org", recipient, stdin=sample_message(n))
        if done.returncode != 0:
            raise SystemExit(f"queueing failed: {done}")
    if exim.queue_count() != count:
        raise SystemExit("messages did not all reach the queue")
    start = time.perf_counter()
    exim.queue_run()
    elapsed = time.perf_counter() - start
    if exim.queue_count() != 0:
        raise SystemExit(f"queue not empty after the run:\n{exim.main_log()[-3000:]}")
    return count / elapsed


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
    try:
        spool = make_spool(root / "spool")
        config = write_config(root / "mailrouter.toml", spool, lock_timeout=30.0)
        exim = MiniExim(root / "exim", config,
                        hook_users={"ours": address_data(spool / "ours@example.com")},
                        file_users={"stock": address_data(spool / "stock@example.com")},
                        add_headers=True)
        print(f"throughput: {args.messages} messages of ~4 KB per transport, one exim -qf each")
        ours = throughput(exim, "ours@example.com", args.messages)
        stock = throughput(exim, "stock@example.com", args.messages)
        print(f"  pipe -> mailrouter-deliver : {ours:8.1f} msg/s")
        print(f"  appendfile (stock Exim)    : {stock:8.1f} msg/s")
        print(f"  ratio hook/appendfile      : {ours / stock:8.3f}")

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
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
