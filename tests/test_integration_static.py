"""The files rawrt serves itself: /rawrt.js always, the demo page at / when it is on.

Real server, raw HTTP/1.1 requests: the content types a browser needs for a module script and
a page, an ETag honoured with 304 (so a reload costs a round trip, not the file), and the demo
page present or absent as configured.
"""

from __future__ import annotations

import pytest
from conftest import StartServer
from support.clients import request

import rawrt


async def test_rawrt_js_is_a_javascript_module_with_an_etag(server: rawrt.Server) -> None:
    answer = await request(server.port, "GET", "/rawrt.js")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert b"export class Rawrt" in answer.body
    assert answer.headers["cache-control"] == "no-cache"
    etag = answer.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10


@pytest.mark.parametrize("form", ["{}", "W/{}", '"other", {}', "*"])
async def test_a_matching_if_none_match_gets_304_without_a_body(
    server: rawrt.Server, form: str
) -> None:
    etag = (await request(server.port, "GET", "/rawrt.js")).headers["etag"]
    answer = await request(
        server.port, "GET", "/rawrt.js", headers=[("If-None-Match", form.format(etag))]
    )
    assert (answer.status, answer.body, answer.headers["etag"]) == (304, b"", etag)


async def test_a_stale_if_none_match_gets_the_file(server: rawrt.Server) -> None:
    answer = await request(server.port, "GET", "/rawrt.js", headers=[("If-None-Match", '"old"')])
    assert answer.status == 200 and b"export class Rawrt" in answer.body


async def test_an_open_server_shows_the_demo_page(server: rawrt.Server) -> None:
    answer = await request(server.port, "GET", "/")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert b'import { Rawrt } from "/rawrt.js"' in answer.body
    again = await request(
        server.port, "GET", "/", headers=[("If-None-Match", answer.headers["etag"])]
    )
    assert again.status == 304


async def test_no_demo_means_404_at_the_root_but_still_serves_the_client(
    start_server: StartServer,
) -> None:
    server = await start_server(demo=False)
    answer = await request(server.port, "GET", "/")
    assert (answer.status, answer.json()["status"]) == (404, 404)
    assert (await request(server.port, "GET", "/rawrt.js")).status == 200


async def test_the_static_routes_refuse_other_methods(server: rawrt.Server) -> None:
    answer = await request(server.port, "POST", "/rawrt.js", "x")
    assert answer.status == 405 and "GET" in answer.headers["allow"]
