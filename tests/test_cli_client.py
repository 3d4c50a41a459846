"""`rawrt sub`, `rawrt pub` and `rawrt serve` as real processes against a real server.

The server runs in the test's loop; the commands are `python -m rawrt ...` children, run
with asyncio's subprocess support so the loop keeps serving while they talk to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import pytest
from support.clients import HttpClient, request

import rawrt

STEP_S = 10.0  # bound on one command's run (an interpreter start included)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAWRT_")}


async def start(*args: str, stdin: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rawrt",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )


async def run(*args: str, input: bytes | None = None) -> tuple[int, str, str]:
    proc = await start(*args, stdin=input is not None)
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), STEP_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"rawrt {' '.join(args)} did not finish in {STEP_S} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def publish_http(port: int, channel: str, data: object) -> str:
    async with HttpClient(port) as http:
        reply = await http.post_json(f"/api/broadcast/{channel}", data)
    return str(reply["id"])


async def subscribers(server: rawrt.Server, channel: str, count: int) -> None:
    """Wait (bounded) until `channel` has `count` subscribers on the server."""
    async with asyncio.timeout(STEP_S):
        while not (server.hub.has(channel) and server.hub.channel(channel).subscribers >= count):
            await asyncio.sleep(0.01)


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


async def test_sub_prints_count_messages_as_json_lines_and_exits_0(
    server: rawrt.Server,
) -> None:
    old = [await publish_http(server.port, "news", {"n": n}) for n in range(2)]
    epoch = old[0].rpartition("-")[0]
    proc = await start("sub", "news", "sport", "--url", server.url, "--since", f"{epoch}-0",
                       "--count", "4")  # fmt: skip
    await subscribers(server, "sport", 1)  # both subscribed: the order of frames is kept
    live = [
        await publish_http(server.port, "sport", "s"),
        await publish_http(server.port, "news", 2),
    ]
    out, err = await asyncio.wait_for(proc.communicate(), STEP_S)
    assert proc.returncode == 0, err
    got = lines(out.decode())
    news = [line for line in got if line["channel"] == "news"]
    assert [(line["id"], line["data"]) for line in news] == [(old[0], {"n": 0}), (old[1], {"n": 1}),
                                                             (live[1], 2)]  # fmt: skip
    assert [line["id"] for line in got if line["channel"] == "sport"] == [live[0]]
    assert all(set(line) == {"channel", "id", "data", "timestamp"} for line in got)
    assert all(isinstance(line["timestamp"], int) for line in got)


@pytest.mark.parametrize("server", [{"history_size": 2}], indirect=True)
async def test_sub_prints_a_reset_line_for_a_lost_position(server: rawrt.Server) -> None:
    ids = [await publish_http(server.port, "news", n) for n in range(5)]
    proc = await start("sub", "news", "--url", server.url, "--since", ids[0], "--count", "1")
    await subscribers(server, "news", 1)
    later = await publish_http(server.port, "news", 5)
    out, err = await asyncio.wait_for(proc.communicate(), STEP_S)
    assert proc.returncode == 0, err
    assert lines(out.decode()) == [
        {"type": "reset", "channel": "news", "id": ids[-1]},
        {
            "channel": "news",
            "id": later,
            "data": 5,
            "timestamp": lines(out.decode())[1]["timestamp"],
        },
    ]


async def test_pub_publishes_each_stdin_line_and_prints_each_id(server: rawrt.Server) -> None:
    code, out, err = await run("pub", "news", "--url", server.url,
                               input=b'{"a":1}\n\n[2, 3]\n"four"\n')  # fmt: skip
    assert code == 0, err
    ids = out.split()
    assert len(ids) == 3
    epoch = ids[0].rpartition("-")[0]
    response = await request(server.port, "GET", f"/api/poll/news?since={epoch}-0&timeout=0")
    assert response.status == 200
    assert response.json() == {
        "messages": [{"a": 1}, [2, 3], "four"],
        "ids": ids,  # each printed id is the id of the line published
        "cursor": ids[-1],
    }


async def test_pub_publishes_its_json_argument(server: rawrt.Server) -> None:
    code, out, err = await run("pub", "news", '{"title": "hello"}', "--url", server.url)
    assert code == 0, err
    (message_id,) = out.split()
    assert server.hub.head_id("news") == message_id


async def test_unreachable_is_status_1_with_the_reason(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}"
    for args in (("sub", "news", "--url", url), ("pub", "news", "1", "--url", url)):
        code, out, err = await run(*args)
        assert (code, out) == (1, ""), err
        assert "cannot reach" in err and "Traceback" not in err


async def test_refused_is_status_1_with_the_servers_error(server: rawrt.Server) -> None:
    code, _, err = await run("pub", "x" * 300, "1", "--url", server.url)
    assert code == 1 and "400" in err and "longer than 256 bytes" in err
    code, _, err = await run("sub", "news", "--url", server.url + "/nowhere")
    assert code == 1 and "404 no such route" in err
    code, out, err = await run("sub", "x" * 300, "--url", server.url)
    assert code == 1 and "longer than 256 bytes" in err and out == ""


@pytest.mark.parametrize("server", [{"max_body_bytes": 64}], indirect=True)
async def test_pub_stops_at_the_first_refused_line(server: rawrt.Server) -> None:
    code, out, err = await run("pub", "news", "--url", server.url,
                               input=b'1\n"' + b"x" * 100 + b'"\n3\n')  # fmt: skip
    assert code == 1 and "413" in err
    assert len(out.split()) == 1  # the first one went out; the third was never sent
    code, out, err = await run("pub", "news", "--url", server.url, input=b"4\n{oops\n")
    assert code == 1 and "line 2" in err and len(out.split()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("sub",),
        ("sub", "news", "--count", "0"),
        ("sub", "news", "--count", "many"),
        ("sub", "news", "--since", "a-1", "--since", "a-2"),
        ("sub", "news", "news"),
        ("sub", "news", "--url", "ftp://nowhere"),
        ("pub",),
        ("pub", "news", "{not json"),
        ("pub", "news", "1", "--key", "k" * 16, "--token", "t"),
        ("pub", "news", "1", "2"),
    ],
)
async def test_usage_errors_are_status_2(args: tuple[str, ...]) -> None:
    code, out, err = await run(*args)
    assert code == 2 and out == "" and "usage: rawrt" in err and "Traceback" not in err


async def test_ctrl_c_ends_sub_with_status_0_and_no_traceback(server: rawrt.Server) -> None:
    proc = await start("sub", "news", "--url", server.url)
    await subscribers(server, "news", 1)
    sent = await publish_http(server.port, "news", "before")
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), STEP_S)
    assert json.loads(line)["id"] == sent
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), STEP_S)
    assert (proc.returncode, out, err) == (0, b"", b"")
    async with asyncio.timeout(STEP_S):  # it said goodbye: the server forgets it
        while server._sockets:
            await asyncio.sleep(0.01)


async def test_ctrl_c_ends_pub_waiting_on_stdin_with_status_0(server: rawrt.Server) -> None:
    proc = await start("pub", "news", "--url", server.url, stdin=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b'"one"\n')
    await proc.stdin.drain()
    first = await asyncio.wait_for(proc.stdout.readline(), STEP_S)  # now it waits on stdin
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), STEP_S)
    assert (proc.returncode, out, err) == (0, b"", b"")
    assert first.decode().strip() == server.hub.head_id("news")


async def test_serve_subcommand_runs_the_server(spawn_rawrt: Any) -> None:
    child = spawn_rawrt("serve", "--port", "0", "--history-size", "7")
    response = await request(child.port, "GET", "/healthz")
    assert response.status == 200 and response.json() == {"status": "ok"}
    assert await child.stopped() == 0
