"""`kittiwake tls-report`: print the RFC 8460 reports of one UTC day (docs/tls-report.md).

The command reads the day file the server writes under
`STATE_DIR/tls_reports/` (the configuration names state_dir, so it takes
`-c FILE` like the other commands), and prints one JSON report per policy
domain, one per line (JSON Lines): a script can send each line as it is.
It only reads, so it works while the server runs (the file is replaced
whole, never written in place) and after it stopped; counts of the last
few seconds may still be in the running server's memory.

Exit status: 0 reports printed, or none for a day without attempts; 1 no
attempts to `--domain` that day, or the file cannot be read; 2
configuration or command-line problem.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable

from kittiwake.cli.common import (
    EMBEDDED_NAME,
    EXIT_FAILURE,
    EXIT_OK,
    config_error,
    load_config,
    machine_fqdn,
    read_places,
    resolve_config,
)
from kittiwake.errors import ConfigError
from kittiwake.tlsrpt.report import build_report
from kittiwake.tlsrpt.store import DIRECTORY, day_path, read_day

__all__ = ["add_tls_report_command"]


def _day(text: str) -> dt.date:
    try:
        if len(text) != 10:
            raise ValueError
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid day {text!r}: expected YYYY-MM-DD") from None


def add_tls_report_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = commands.add_parser(
        "tls-report", help="print the TLS reports (RFC 8460) of one day, one JSON per line"
    )
    config_option(p)
    p.add_argument(
        "--day", metavar="YYYY-MM-DD", type=_day, help="the UTC day (default: yesterday)"
    )
    p.add_argument("--domain", metavar="D", help="only the report for this policy domain")
    p.add_argument(
        "--organization",
        metavar="NAME",
        help="organization-name (default: the configuration's hostname)",
    )
    p.add_argument("--contact", metavar="ADDR", help="contact-info (default: postmaster@HOSTNAME)")
    p.set_defaults(handler=cmd_tls_report)


def cmd_tls_report(args: argparse.Namespace) -> int:
    try:
        path = resolve_config(args.config)
        places = read_places(load_config(path), path or EMBEDDED_NAME)
    except ConfigError as exc:
        return config_error(exc)
    day: dt.date = args.day or dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    hostname = places.hostname or machine_fqdn()
    organization: str = args.organization or hostname
    contact: str = args.contact or f"postmaster@{hostname}"
    file = day_path(os.path.join(places.state_dir, DIRECTORY), day)
    try:
        counts = read_day(file)
    except (OSError, ValueError) as exc:
        print(f"kittiwake tls-report: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    domains = counts.domains if counts is not None else {}
    if args.domain is not None:
        wanted = args.domain.strip().rstrip(".").lower()
        if wanted not in domains:
            print(
                f"kittiwake tls-report: no TLS attempts to {wanted} recorded on {day} ({file})",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_FAILURE
        domains = {wanted: domains[wanted]}
    elif not domains:
        print(f"kittiwake tls-report: no TLS attempts recorded on {day} ({file})", file=sys.stderr)
    for name, domain in domains.items():
        report = build_report(day, name, domain, organization=organization, contact=contact)
        sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
        if domain.truncated or domain.dropped:
            print(
                f"kittiwake tls-report: {name}: {domain.truncated} failed sessions not itemised"
                f" in failure-details, {domain.dropped} attempts not counted (limits)",
                file=sys.stderr,
            )
    if counts is not None and counts.dropped:
        print(
            f"kittiwake tls-report: {counts.dropped} attempts to further domains not counted"
            " (limit of domains per day)",
            file=sys.stderr,
        )
    return EXIT_OK
