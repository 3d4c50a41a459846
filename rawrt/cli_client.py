"""`rawrt sub` and `rawrt pub`: the Python client (rawrt.client) on the command line.

    rawrt sub CHANNEL... [--url URL] [--since ID]... [--token T] [--count N]
    rawrt pub CHANNEL [JSON] [--url URL] [--key KEY | --token T]

`sub` prints one JSON object a line, `{"channel","id","data","timestamp"}` for a message and
`{"type":"reset","channel","id"}` for a reset, reconnecting and resuming on its own, until
`--count` messages have been printed or Ctrl-C. `pub` publishes the JSON given, or each
line of standard input, and prints each message's id.

Exit status: 0 done (Ctrl-C included), 1 refused or unreachable (the server's error on
stderr), 2 usage. A Ctrl-C is handled by asyncio.Runner, which cancels the running command
(closing its connections) and raises KeyboardInterrupt, caught here: no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rawrt.client import Client, ClientError, Message, Subscription, connect
from rawrt.client.core import Endpoint
from rawrt.errors import BadMessage
from rawrt.wire.envelope import parse_data

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8000"
COMMANDS = ("sub", "pub")


def main(argv: Sequence[str]) -> int:
    """`argv` starts with the command name ("sub" or "pub"); returns the exit status."""
    command, rest = argv[0], list(argv[1:])
    try:
        if command == "sub":
            return _sub(_parse(_sub_parser(), rest))
        return _pub(_pub_parser(), _parse(_pub_parser(), rest))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # Whoever read our output has gone (`rawrt sub x | head -1`): done, quietly. Point
        # stdout at nothing so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("RAWRT_URL", DEFAULT_URL),
        help=f"the server, http(s)://HOST:PORT (default {DEFAULT_URL}; env RAWRT_URL)",
    )


def _token_option(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--token",
        default=os.environ.get("RAWRT_TOKEN"),
        help="a token for the server (env RAWRT_TOKEN, which keeps it out of `ps`)",
    )


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The arguments, or a usage message and exit status 2 (argparse's own way)."""
    args = parser.parse_args(argv)
    try:
        Endpoint.parse(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


# --- rawrt sub --------------------------------------------------------------------------------


def _sub_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rawrt sub",
        description="Print every message of the channels as one JSON object a line; "
        "reconnect and resume on its own.",
    )
    parser.add_argument("channels", nargs="+", metavar="CHANNEL")
    _common(parser)
    parser.add_argument(
        "--since",
        action="append",
        default=[],
        metavar="ID",
        help="start after this message id; once per channel, in the channels' order",
    )
    _token_option(parser)
    parser.add_argument(
        "--count", type=_positive, help="exit after printing this many messages (not resets)"
    )
    return parser


def _sub(args: argparse.Namespace) -> int:
    if len(args.since) > len(args.channels):
        _sub_parser().error("more --since than channels")
    if len(set(args.channels)) != len(args.channels):
        _sub_parser().error("a channel is named twice")
    with asyncio.Runner() as runner:
        return runner.run(_follow(args))


async def _follow(args: argparse.Namespace) -> int:
    try:
        async with connect(args.url, token=args.token) as client:
            await _print_events(client, args)
    except ClientError as exc:
        return _fail("sub", exc)
    return 0


async def _print_events(client: Client, args: argparse.Namespace) -> None:
    since = args.since + [None] * (len(args.channels) - len(args.since))
    subs = [client.subscribe(ch, s) for ch, s in zip(args.channels, since, strict=True)]
    done = asyncio.Event()
    left = [args.count]  # messages still to print; [None]: no bound

    async def pump(sub: Subscription) -> None:
        async for event in sub:
            if done.is_set():
                return
            sys.stdout.write(json.dumps(_line(event), ensure_ascii=False) + "\n")
            if not sub.pending:  # one flush per burst, not per line
                sys.stdout.flush()
            if isinstance(event, Message) and left[0] is not None:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

    pumps = [asyncio.create_task(pump(sub)) for sub in subs]
    ender = asyncio.create_task(done.wait())
    try:
        finished, _ = await asyncio.wait([*pumps, ender], return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            if task is not ender:
                task.result()  # a subscription refused: its ClientError
    finally:
        for task in [*pumps, ender]:
            task.cancel()
        await asyncio.gather(*pumps, ender, return_exceptions=True)


def _line(event: Any) -> dict[str, Any]:
    if isinstance(event, Message):
        return {
            "channel": event.channel,
            "id": event.id,
            "data": event.data,
            "timestamp": event.timestamp,
        }
    return {"type": "reset", "channel": event.channel, "id": event.id}


# --- rawrt pub --------------------------------------------------------------------------------


def _pub_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rawrt pub",
        description="Publish the JSON given, or each line of standard input, and print each "
        "message's id.",
    )
    parser.add_argument("channel", metavar="CHANNEL")
    parser.add_argument("json", nargs="?", metavar="JSON", help="the message data")
    _common(parser)
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--key", help="a publish key, sent as X-API-Key")
    _token_option(who)
    return parser


def _pub(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.key is not None:
        args.token = None  # --key wins over a RAWRT_TOKEN from the environment
    if args.json is not None:
        try:
            data = parse_data(args.json)
        except BadMessage as exc:
            parser.error(f"JSON argument: {exc.reason}")
    client = Client(args.url, token=args.token, key=args.key)
    # One loop for the whole run, so the publishes share one kept-alive connection; stdin is
    # read between them, outside the loop, where Ctrl-C is a plain KeyboardInterrupt.
    with asyncio.Runner() as runner:
        try:
            if args.json is not None:
                print(runner.run(client.publish(args.channel, data)), flush=True)
                return 0
            return _pub_lines(runner, client, args.channel)
        except ClientError as exc:
            return _fail("pub", exc)
        finally:
            runner.run(client.close())


def _pub_lines(runner: asyncio.Runner, client: Client, channel: str) -> int:
    for number, line in enumerate(sys.stdin.buffer, start=1):
        if not line.strip():
            continue
        try:
            data = parse_data(line)
        except BadMessage as exc:
            print(f"rawrt pub: line {number}: {exc.reason}", file=sys.stderr)
            return 1
        print(runner.run(client.publish(channel, data)), flush=True)
    return 0


def _fail(command: str, exc: ClientError) -> int:
    print(f"rawrt {command}: {exc}", file=sys.stderr)
    return 1
