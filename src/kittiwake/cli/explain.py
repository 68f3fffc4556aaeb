"""`kittiwake explain`: how the configuration routes one envelope (docs/cli.md).

The configuration is built as `config check` builds it (nothing bound,
nothing written); the chosen endpoint's pipeline is then walked by
`pipeline/explain.py` with the server's own matching rules and modifiers.
Checks are named, not run; targets are named, not started.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from kittiwake.cli.common import EXIT_OK, build, config_error
from kittiwake.errors import ConfigError, SMTPError
from kittiwake.message import ConnInfo
from kittiwake.pipeline.explain import (
    BlockInfo,
    PipelineExplanation,
    RecipientExplanation,
    ReplyInfo,
    Rewrite,
    clean,
    explain_pipeline,
    new_meta,
)
from kittiwake.server.endpoint import SMTPEndpoint

__all__ = ["add_explain_command", "choose_endpoint"]

_HOW = {
    "table": "the key is in {table}",
    "address": "address rule {key}",
    "domain": "domain rule {domain}",
    "default": "no rule matched {key}",
}


def add_explain_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = commands.add_parser(
        "explain",
        help="show how the configuration would route a sender and its recipients",
        description="Show which endpoint, source and destination blocks, rewrites, "
        "checks and targets one envelope meets. Nothing is sent or written; checks "
        "are listed, not run.",
    )
    config_option(p)
    p.add_argument("--from", dest="sender", metavar="ADDR", required=True, help="MAIL FROM")
    p.add_argument(
        "--to", dest="rcpts", metavar="ADDR", action="append", required=True, help="RCPT TO"
    )
    p.add_argument("--ip", metavar="IP", type=_ip, help="the client's address")
    p.add_argument("--helo", metavar="NAME", default="", help="the client's EHLO name")
    p.add_argument("--auth", metavar="USER", help="the authenticated user")
    p.add_argument(
        "--endpoint",
        metavar="NAME",
        help="endpoint by module name (smtp, submission, lmtp) or listen address "
        "(default: the first smtp endpoint)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_explain)


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid IP address {text!r}") from None


def choose_endpoint(endpoints: list[SMTPEndpoint], wanted: str | None) -> tuple[SMTPEndpoint, str]:
    """The endpoint asked for, and how it was chosen (said in the output)."""
    if not endpoints:
        raise ConfigError("no smtp, submission or lmtp endpoint in the configuration")
    if wanted is None:
        for endpoint in endpoints:
            if endpoint.module_name == "smtp":
                return endpoint, "the first smtp endpoint; choose another with --endpoint"
        return endpoints[0], "the first endpoint (there is no smtp one)"
    for endpoint in endpoints:
        if wanted in endpoint.inline_args:
            return endpoint, "as --endpoint asked"
    for endpoint in endpoints:
        if endpoint.module_name == wanted:
            return endpoint, f"the first {wanted} endpoint, as --endpoint asked"
    known = ", ".join(" ".join([e.module_name, *e.inline_args]) for e in endpoints)
    raise ConfigError(f"--endpoint {wanted}: no such endpoint; there are: {known}")


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        container, _ = build(args)
        endpoints = [e for e in container.endpoints if isinstance(e, SMTPEndpoint)]
        endpoint, chosen = choose_endpoint(endpoints, args.endpoint)
    except ConfigError as exc:
        return config_error(exc)
    report, explanation = asyncio.run(_explain(endpoint, chosen, args))
    if args.json:
        report["pipeline"] = asdict(explanation) if explanation is not None else None
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print("\n".join(render(report, explanation)))
    return EXIT_OK


async def _explain(
    endpoint: SMTPEndpoint, chosen: str, args: argparse.Namespace
) -> tuple[dict[str, Any], PipelineExplanation | None]:
    """The facts about the endpoint and client, and the pipeline's explanation."""
    node = endpoint._node
    conn = ConnInfo(
        remote_ip=args.ip,
        helo=args.helo,
        auth_user=args.auth,
        endpoint=endpoint.module_name,
        proto="LMTP" if endpoint.module_name == "lmtp" else "ESMTP",
    )
    report: dict[str, Any] = {
        "endpoint": {
            "module": endpoint.module_name,
            "addresses": list(endpoint.inline_args),
            "file": node.file,
            "line": node.line,
            "chosen": chosen,
        },
        "client": {"ip": args.ip, "helo": args.helo, "auth": args.auth},
        "notes": [],
        "refused": None,
    }
    notes: list[str] = report["notes"]
    if endpoint.module_name == "submission" and args.auth is None:
        notes.append(
            "submission requires authentication: without --auth the client would get "
            "530 5.7.0 Authentication required at MAIL FROM"
        )
    if endpoint.authenticator is None and args.auth is not None:
        notes.append(f"{endpoint.module_name} has no auth provider: --auth cannot happen here")
    try:
        sender = clean(args.sender, "sender")
    except SMTPError as exc:
        report["refused"] = asdict(ReplyInfo.of(exc))
        notes.append("the endpoint refuses this sender before the pipeline sees it")
        return report, None
    refused: dict[int, ReplyInfo] = {}
    rcpts: list[str] = []
    for i, rcpt in enumerate(args.rcpts):
        try:
            rcpts.append(clean(rcpt, "recipient"))
        except SMTPError as exc:
            refused[i] = ReplyInfo.of(exc)
    explanation = await explain_pipeline(endpoint.pipeline, new_meta(conn), sender, rcpts)
    if refused and explanation.reply is None:
        # The endpoint answers these itself; the pipeline never sees them.
        explained = iter(explanation.recipients)
        explanation.recipients = [
            RecipientExplanation(rcpt, reply=refused[i]) if i in refused else next(explained)
            for i, rcpt in enumerate(args.rcpts)
        ]
    return report, explanation


# -- text ------------------------------------------------------------------------


def render(report: dict[str, Any], explanation: PipelineExplanation | None) -> list[str]:
    """The readable form: one fact a line, nested pipelines indented."""
    ep = report["endpoint"]
    lines = [
        f"endpoint: {ep['module']} {' '.join(ep['addresses'])} at {ep['file']}:{ep['line']} "
        f"({ep['chosen']})"
    ]
    client = report["client"]
    lines.append(
        f"client: ip {client['ip'] or '-'}, helo {client['helo'] or '-'}, "
        + (f"authenticated as {client['auth']}" if client["auth"] else "not authenticated")
    )
    lines += [f"note: {note}" for note in report["notes"]]
    if report["refused"] is not None or explanation is None:
        lines.append(f"refused: {_reply(report['refused'])}")
        return lines
    lines += _pipeline(explanation, "")
    return lines


def _reply(reply: dict[str, Any] | ReplyInfo) -> str:
    info = reply if isinstance(reply, ReplyInfo) else ReplyInfo(**reply)
    text = str(info)
    return f"{text} (reason: {info.reason})" if info.reason else text


def _list(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _block(kind: str, info: BlockInfo, pad: str) -> list[str]:
    domain = info.key.rpartition("@")[2] if "@" in info.key else info.key
    why = _HOW[info.how].format(table=info.table, key=info.key or "<>", domain=domain)
    where = f"{info.file}:{info.line}" if info.file else "?"
    lines = [f"{pad}{kind}: {info.label} at {where} ({why})"]
    lines += [f"{pad}  skipped table: {s}" for s in info.skipped]
    if info.checks:
        lines.append(f"{pad}  checks (would run): {_list(info.checks)}")
    if info.modifiers:
        lines.append(f"{pad}  modifiers: {_list(info.modifiers)}")
    return lines


def _rewrite(r: Rewrite, pad: str) -> str:
    return f"{pad}rewrite ({r.level}) {r.modifier}: {r.given or '<>'} -> {', '.join(r.result)}"


def _pipeline(p: PipelineExplanation, pad: str) -> list[str]:
    lines = [f"{pad}sender: {p.sender or '<>'}"]
    lines.append(f"{pad}  checks (would run): {_list(p.checks)}")
    lines.append(f"{pad}  modifiers: {_list(p.modifiers)}")
    dmarc = "would run" if p.dmarc else "does not run (needs it on, an SPF and a DKIM check)"
    lines.append(f"{pad}  dmarc: {dmarc}")
    lines += [_rewrite(r, pad + "  ") for r in p.sender_rewrites]
    if p.source is not None:
        lines += _block("source", p.source, pad + "  ")
    if p.reply is not None:
        lines.append(f"{pad}  sender refused, every recipient gets: {_reply(p.reply)}")
        return lines
    if p.final_sender != p.sender:
        lines.append(f"{pad}  envelope sender for targets: {p.final_sender or '<>'}")
    for r in p.recipients:
        lines += _recipient(r, pad)
    return lines


def _recipient(r: RecipientExplanation, pad: str) -> list[str]:
    lines = [f"{pad}recipient: {r.rcpt}"]
    inner = pad + "  "
    lines += [_rewrite(w, inner) for w in r.rewrites]
    for routed in r.routed:
        if routed.address != r.rcpt:
            lines.append(f"{inner}address: {routed.address}")
        if routed.destination is not None:
            lines += _block("destination", routed.destination, inner)
        lines += [_rewrite(w, inner + "  ") for w in routed.rewrites]
        if routed.reject is not None:
            lines.append(f"{inner}  reject: {_reply(routed.reject)}")
        for t in routed.targets:
            shown = t.name if t.name.split(" ", 1)[0] == t.kind else f"{t.name} ({t.kind})"
            lines.append(f"{inner}  {t.address} -> {shown}")
            if t.nested is not None:
                lines += _pipeline(t.nested, inner + "      ")
    result = "accepted" if r.reply is None else str(r.reply)
    lines.append(f"{inner}result: {result}")
    return lines
