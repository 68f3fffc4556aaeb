"""What the check path costs per message, in one process, without sockets.

Usage: python bench/checks_profile.py [--messages 3000] [--profile FILE]

`bench/checks.py` measures whole servers under load; this drives the same
two pipelines directly, for quick and steady figures while working on the
check path. Each is built from the configuration `bench/checks.py` gives
its server (with and without `check { spf dkim }` and DMARC), asks
`peers/dns_zone.py` on loopback, and gets the same 10 KiB message,
DKIM-signed by `bench.test`, through `start`, `add_rcpt`, `body` and
`commit`, the calls a session makes. The figure is CPU time per message
(`time.process_time`, so other processes on the machine count little);
the difference between the two is what the checks cost. `--profile`
writes cProfile statistics of the checked pipeline to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from checks import CHECKS, dns_zone, signed_message, zone  # noqa: E402
from smtp_load import RECIPIENT, SENDER  # noqa: E402
from smtp_servers import HOSTNAME, kittiwake_config  # noqa: E402

import kittiwake.modules  # noqa: E402, F401  (registers every built-in module)
from kittiwake.cli.common import load_config  # noqa: E402
from kittiwake.cli.run import _loop_factory  # noqa: E402
from kittiwake.container import Container, DebugFlags  # noqa: E402
from kittiwake.message import ConnInfo, MsgMeta  # noqa: E402
from kittiwake.message.buffer import Buffer  # noqa: E402
from kittiwake.message.header import Header  # noqa: E402
from kittiwake.pipeline.pipeline import Pipeline  # noqa: E402
from kittiwake.server.endpoint import SMTPEndpoint  # noqa: E402

#: Messages timed together; the best batch is the figure.
BATCH = 200


def pipeline(work: Path, dns: str, extra: str) -> Pipeline:
    """The endpoint pipeline of the benchmark server's configuration."""
    conf, _ = kittiwake_config(work, 25, durable=False, endpoint_extra=extra)
    container = Container(
        load_config(str(conf)), config_file=str(conf), debug_flags=DebugFlags(dns_override=dns)
    )
    container.build()
    endpoint = container.endpoints[0]
    assert isinstance(endpoint, SMTPEndpoint)
    return endpoint.pipeline


async def one(pipe: Pipeline, number: int, header: bytes, body: bytes) -> None:
    meta = MsgMeta(
        id=f"{number:08x}",
        conn=ConnInfo(remote_ip="127.0.0.1", remote_port=40000, helo=HOSTNAME, proto="ESMTP"),
        original_from=SENDER,
    )
    delivery = await pipe.start(meta, SENDER)
    await delivery.add_rcpt(RECIPIENT)
    buffer = Buffer.ram()
    await buffer.write(body)
    await buffer.finish()
    await delivery.body(Header.parse(header), buffer)
    await delivery.commit()
    buffer.remove()


async def run(pipe: Pipeline, count: int, message: bytes, profile: str | None) -> float:
    """CPU seconds per message: the best batch of `BATCH`, after a warm-up.

    The best batch, not the mean: on a shared machine, a batch that ran
    while another process had the core counts cache misses that are not
    ours.
    """
    header, _, body = message.partition(b"\r\n\r\n")
    header += b"\r\n"
    for i in range(50):  # fills every cache: DNS, SPF results, keys, policies
        await one(pipe, i, header, body)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    best = float("inf")
    for first in range(0, count, BATCH):
        start = time.process_time()
        for i in range(first, min(count, first + BATCH)):
            await one(pipe, i, header, body)
        best = min(best, (time.process_time() - start) / (min(count, first + BATCH) - first))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; the best counts")
    parser.add_argument("--profile", help="cProfile statistics of the checked pipeline")
    args = parser.parse_args(argv)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = signed_message(key, args.size)
    best = {"off": float("inf"), "on": float("inf")}
    with tempfile.TemporaryDirectory(prefix="kittiwake-bench-checks-profile-") as tmp:
        work = Path(tmp)
        with dns_zone(work, zone(key)) as dns:
            pipes = {
                label: pipeline(work / label, dns, extra)
                for label, extra in (("off", ""), ("on", CHECKS))
            }
            for round_ in range(args.rounds):
                for label, pipe in pipes.items():
                    profile = args.profile if label == "on" and round_ == 0 else None
                    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                        cost = runner.run(run(pipe, args.messages, message, profile))
                    best[label] = min(best[label], cost)
                    print(f"{label:>3}: {cost * 1e6:7.1f} µs CPU per message")
    checks = best["on"] - best["off"]
    print(f"no checks:      {best['off'] * 1e6:7.1f} µs per message (best of {args.rounds})")
    print(f"spf+dkim+dmarc: {best['on'] * 1e6:7.1f} µs per message")
    print(f"the checks:     {checks * 1e6:7.1f} µs per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
