"""Headless Chromium for tests, driven by Playwright, and a page that runs rawrt.js.

    async with chromium() as browser:               # Debian's /usr/bin/chromium; skips (fails
        page = await open_client(browser, url, ...)  # under RAWRT_REQUIRE_BROWSER=1) without it
        await page.wait_until("window.rt.transport === 'websocket'")
        await page.wait_for_count(3)
        await page.received()                        # [[data, id, timestamp], ...]

Playwright never downloads a browser here: it launches Debian's `chromium` by path with the
flags below (no sandbox, no GPU, nothing that would reach outside the machine). The page is
served by the rawrt under test (`/healthz`, then `import("/rawrt.js")` from the same origin),
because Chromium's Local Network Access checks block pages from elsewhere opening sockets to
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

__all__ = ["CHROMIUM", "ClientPage", "chromium", "open_client"]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_BOUND_MS = 15_000  # any condition a test waits for must hold within this

# Runs in the page: a client with the test's options, one subscription, everything recorded.
_HARNESS = """
async ({ options, channel, since }) => {
  const { Rawrt } = await import("/rawrt.js");
  window.got = [];
  window.resets = [];
  window.states = [];
  window.errors = [];
  if (options.getTokenFrom) options.getToken = () => window[options.getTokenFrom]();
  const rt = new Rawrt(location.origin, options);
  rt.on("state", (state, info) => window.states.push([state, info.transport, info.retryInMs]));
  rt.on("error", (error) => window.errors.push(String(error.message || error)));
  window.sub = rt.subscribe(channel, {
    since,
    onMessage: (data, meta) => window.got.push([data, meta.id, meta.timestamp ?? null]),
    onReset: (meta) => window.resets.push(meta.id),
  });
  window.rt = rt;
}
"""


def _skip_or_fail(message: str) -> None:
    if os.environ.get("RAWRT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{message}, and RAWRT_REQUIRE_BROWSER=1")
    pytest.skip(message)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium browser, closed afterwards."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _skip_or_fail("playwright is not installed (pip install playwright)")
    if shutil.which(CHROMIUM) is None:
        _skip_or_fail(f"{CHROMIUM} is missing (apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class ClientPage:
    """A page running one rawrt.js client subscribed to one channel."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.context = page.context

    async def wait_until(self, condition: str, timeout_ms: int = WAIT_BOUND_MS) -> None:
        await self.page.wait_for_function(condition, timeout=timeout_ms)

    async def wait_for_count(self, count: int, timeout_ms: int = WAIT_BOUND_MS) -> None:
        await self.wait_until(f"window.got.length >= {count}", timeout_ms)

    async def wait_for_transport(self, name: str, timeout_ms: int = WAIT_BOUND_MS) -> None:
        await self.wait_until(f"window.rt.transport === {name!r}", timeout_ms)

    async def received(self) -> list[list[Any]]:
        got: list[list[Any]] = await self.page.evaluate("window.got")
        return got

    async def value(self, expression: str) -> Any:
        return await self.page.evaluate(expression)


async def open_client(
    browser: Any,
    base_url: str,
    channel: str,
    *,
    since: str | None = None,
    context: Any = None,
    before: Any = None,
    **options: Any,
) -> ClientPage:
    """A new page on `base_url` whose rawrt.js client subscribes to `channel`.

    `before(page)` runs before the client starts (to install routes that block transports).
    `getTokenFrom="name"` makes the client's getToken call `window.name()` (a function the
    test exposed to the page).
    Fast timings suit tests; any option given overrides them.
    """
    context = context or await browser.new_context()
    page = await context.new_page()
    if before is not None:
        await before(page)
    await page.goto(base_url + "/healthz")
    timings = {
        "openTimeoutMs": 3000,
        "backoffMinMs": 100,
        "backoffMaxMs": 800,
        "upgradeMs": 1000,
        "pollTimeoutS": 5,
    }
    await page.evaluate(
        _HARNESS, {"options": {**timings, **options}, "channel": channel, "since": since}
    )
    return ClientPage(page)
