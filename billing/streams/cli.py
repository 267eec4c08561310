"""`streams` sub-commands: info, pending, dead, replay.

The application's CLI adds them with `register_commands(subparsers)` and calls `args.func(args)`;
`python -m billing.streams.cli streams info` runs them alone.
"""

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import redis.asyncio as aioredis

from . import admin


def register_commands(subparsers: argparse._SubParsersAction, *, default_prefix: str = "") -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    common.add_argument("--prefix", default=default_prefix, help="streams whose name starts with this (info)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    streams = subparsers.add_parser("streams", help="inspect Redis streams, pending entries and dead letters")
    commands = streams.add_subparsers(dest="streams_command", required=True)
    commands.add_parser("info", parents=[common], help="streams, groups, pending, lag, delayed, dead")
    pending = commands.add_parser("pending", parents=[common], help="unacknowledged entries")
    pending.add_argument("stream")
    pending.add_argument("--group")
    pending.add_argument("--count", type=int, default=100)
    dead = commands.add_parser("dead", parents=[common], help="newest dead letters")
    dead.add_argument("stream")
    dead.add_argument("--count", type=int, default=20)
    replay = commands.add_parser("replay", parents=[common], help="move dead letters back onto the stream")
    replay.add_argument("stream")
    replay.add_argument("ids", nargs="*", metavar="ID", help="dead-letter entry ids")
    replay.add_argument("--all", action="store_true")
    streams.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    redis = aioredis.from_url(args.redis_url, decode_responses=True)
    try:
        match args.streams_command:
            case "info":
                rows = await admin.info(redis, args.prefix)
                table = [
                    {k: v for k, v in row.items() if k != "groups"} | group
                    for row in rows
                    for group in row["groups"] or [{"group": "-"}]
                ]
                columns = ["stream", "length", "group", "consumers", "pending", "lag", "delayed", "dead"]
                _print(args, rows, table, columns)
            case "pending":
                rows = await admin.pending(redis, args.stream, args.group, args.count)
                _print(args, rows, rows, ["group", "message_id", "consumer", "idle_ms", "deliveries"])
            case "dead":
                rows = await admin.dead(redis, args.stream, args.count)
                _print(args, rows, rows, ["dead_id", "action", "id", "attempts", "error_type", "error", "failed_at"])
            case "replay":
                if not args.ids and not args.all:
                    print("give dead-letter IDs or --all", file=sys.stderr)
                    return 2
                count = await admin.replay(redis, args.stream, None if args.all else args.ids)
                _print(args, {"replayed": count}, [{"replayed": count}], ["replayed"])
    finally:
        await redis.aclose()
    return 0


def _print(args: argparse.Namespace, data: Any, rows: list[dict], columns: list[str]) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else format_table(rows, columns))


def format_table(rows: list[dict], columns: list[str]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [[c.upper() for c in columns], *cells]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="billing")
    register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
