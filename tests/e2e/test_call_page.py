"""The call page at ``/`` in real headless Chromium, against a real ``callray up``: a call is
placed and its analyser hears the agent's greeting, hang-up ends it on the server, a second
caller is told the agents are busy, a closed tab ends its call at once, and the page's traffic
stays on the gateway and never carries a server secret. See conftest.py for the browser."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import TIMEOUT_FACTOR
from tests.e2e.conftest import ARTIFACTS, CHROMIUM, Deployment

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Request, Response

if not CHROMIUM.exists():
    pytest.skip(f"e2e needs {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
playwright = pytest.importorskip(
    "playwright.async_api", reason="e2e needs playwright (pip install -e '.[dev]')"
)
expect = playwright.expect

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

CONNECT_MS = 20_000 * TIMEOUT_FACTOR  # token, offer, ICE and DTLS on loopback
HEAR_MS = 20_000 * TIMEOUT_FACTOR  # the greeting, after the call connects
AGENT_LEVEL = 0.05  # the page's meter value (4 x RMS, 0..1); silence reads 0
MIC_LEVEL = 0.01
BUSY = "All our agents are busy"


async def calls(base: str) -> int:
    """The gateway's live call count (``/healthz``)."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as reply:
        assert reply.status == 200
        return int((await reply.json())["calls"])


async def until_calls(up: Deployment, want: int, within_s: float) -> float:
    """Wait until the gateway has ``want`` calls; how long that took."""
    started = time.monotonic()
    deadline = started + within_s * TIMEOUT_FACTOR
    while (now := await calls(up.base)) != want:
        assert time.monotonic() < deadline, (
            f"/healthz says {now} calls, not {want}, after {within_s} s:\n{up.log_tail()}"
        )
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(autouse=True)
async def no_calls_before_or_after(deployment: Deployment) -> AsyncIterator[None]:
    """One call fills the deployment: each test starts and leaves it empty."""
    await until_calls(deployment, 0, 30)
    yield
    await until_calls(deployment, 0, 30)


async def open_page(browser: Browser, up: Deployment) -> tuple[Page, list[str]]:
    """A fresh context (its own tab and profile) on the call page; the page's script errors."""
    context = await browser.new_context(viewport={"width": 900, "height": 600})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{up.base}/")
    await expect(page.locator("#state")).to_have_text("Ready")
    return page, errors


async def place_call(page: Page, up: Deployment) -> str:
    """Click Call; once the page says it is in the call and the server has it, its call id."""
    async with page.expect_response(lambda r: urlsplit(r.url).path == "/webrtc/calls") as offer:
        await page.click("#call")
    answer = await offer.value
    assert answer.status == 201, await answer.text()
    try:
        await expect(page.locator("#state")).to_have_text("In call", timeout=CONNECT_MS)
    except AssertionError as exc:
        state = await page.locator("#state").text_content()
        raise AssertionError(f"page state {state!r}:\n{up.log_tail()}") from exc
    assert await calls(up.base) == 1
    return str(await answer.header_value("location")).rsplit("/", 1)[-1]


async def level_above(page: Page, meter: str, level: float, timeout_ms: float) -> float:
    """Wait until the page's analyser ``meter`` (``mic``: the microphone, ``agent``: the
    remote track) reads over ``level``; the reading."""
    try:
        await page.wait_for_function(
            "([meter, level]) => ((window.callrayLevels || {})[meter] || 0) > level",
            arg=[meter, level],
            timeout=timeout_ms,
            polling=20,
        )
    except playwright.TimeoutError as exc:
        levels = await page.evaluate("() => window.callrayLevels")
        raise AssertionError(f"{meter} never over {level}: levels {levels}") from exc
    return float(await page.evaluate("(meter) => window.callrayLevels[meter]", meter))


async def hear_agent(page: Page) -> float:
    return await level_above(page, "agent", AGENT_LEVEL, HEAR_MS)


async def test_the_page_places_a_call_hears_the_agent_and_hangs_up(
    deployment: Deployment, browser: Browser
) -> None:
    page, errors = await open_page(browser, deployment)
    call_id = await place_call(page, deployment)
    assert 0 < await hear_agent(page) <= 1
    # The fake microphone's tone reaches the page's own meter (noise suppression then fades it).
    await level_above(page, "mic", MIC_LEVEL, 5000)
    # The greeting plays out whole (the tone is under the model's speech threshold) and its
    # transcript reaches the page over the call's event feed.
    agent_line = page.locator("#transcript p.assistant")
    await expect(agent_line).to_have_count(1, timeout=HEAR_MS)
    await expect(agent_line).to_contain_text("Agent: ")
    assert await page.locator("#transcript p.note").count() == 0  # not "(interrupted)"
    await expect(page.locator("#hangup")).to_be_enabled()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "call_page.png"), full_page=True)

    await page.click("#hangup")
    await expect(page.locator("#state")).to_have_text("You hung up.")
    await expect(page.locator("#call")).to_be_enabled()
    await until_calls(deployment, 0, 5)
    assert await deployment.ended(call_id) == "caller_hangup"
    assert await page.locator("#agent").evaluate("meter => meter.value") == 0
    assert await page.locator("#mic").evaluate("meter => meter.value") == 0
    assert errors == []


async def test_a_second_caller_hears_the_agents_are_busy(
    deployment: Deployment, browser: Browser
) -> None:
    first, _ = await open_page(browser, deployment)
    await place_call(first, deployment)

    second, errors = await open_page(browser, deployment)
    await second.click("#call")
    state = second.locator("#state")
    await expect(state).to_have_attribute("data-kind", "busy", timeout=CONNECT_MS)
    await expect(state).to_contain_text(BUSY)
    await expect(second.locator("#call")).to_be_enabled()  # free to try again
    assert await calls(deployment.base) == 1
    await expect(first.locator("#state")).to_have_text("In call")  # the first call goes on

    await first.click("#hangup")
    await until_calls(deployment, 0, 5)
    await place_call(second, deployment)  # the line is free again
    await second.click("#hangup")
    await until_calls(deployment, 0, 5)
    assert errors == []


async def test_closing_the_tab_ends_the_call_at_once(
    deployment: Deployment, browser: Browser
) -> None:
    page, _ = await open_page(browser, deployment)
    context = page.context
    call_id = await place_call(page, deployment)
    await hear_agent(page)

    await page.close(run_before_unload=True)
    took = await until_calls(deployment, 0, 5)
    # Sooner than the server's silence deadline (3 s): the page said it was leaving.
    assert took < 2.5 * TIMEOUT_FACTOR, took
    assert await deployment.ended(call_id) == "caller_hangup"
    await context.close()


async def test_the_page_talks_only_to_the_gateway_and_never_sees_a_server_secret(
    deployment: Deployment, browser: Browser
) -> None:
    page, _ = await open_page(browser, deployment)
    context = page.context
    requests: list[Request] = []
    responses: list[Response] = []
    context.on("request", lambda r: requests.append(r))
    context.on("response", lambda r: responses.append(r))
    await page.reload()  # the page itself, recorded too
    await place_call(page, deployment)
    await hear_agent(page)
    await page.click("#hangup")
    await until_calls(deployment, 0, 5)

    origin = urlsplit(deployment.base)
    for request in requests:
        url = urlsplit(request.url)
        assert (url.scheme, url.hostname, url.port) == ("http", "127.0.0.1", origin.port), url
    seen = {(r.method, urlsplit(r.url).path) for r in requests}
    assert {("GET", "/"), ("POST", "/webrtc/token"), ("POST", "/webrtc/calls")} <= seen, seen

    texts: list[str] = []
    for request in requests:
        texts += [request.url, json.dumps(await request.all_headers()), request.post_data or ""]
    for response in responses:
        texts.append(json.dumps(await response.all_headers()))
        if "text/event-stream" not in (await response.header_value("content-type") or ""):
            texts.append(await _body(response))
    assert any("callray" in t for t in texts)  # the page's own body was read
    for secret in deployment.secrets:
        assert not [t for t in texts if secret in t], "a server secret reached the page"

    token = next(r for r in responses if urlsplit(r.url).path == "/webrtc/token")
    assert set(await token.json()) == {"token", "call_id", "expires_in"}
    answer = next(r for r in responses if urlsplit(r.url).path == "/webrtc/calls")
    assert answer.status == 201
    candidates = [ln for ln in (await answer.text()).splitlines() if ln.startswith("a=candidate")]
    assert candidates and all(c.split()[4] == "127.0.0.1" for c in candidates), candidates


async def _body(response: Response) -> str:
    """A response's body as text, or "" where the browser no longer has it."""
    try:
        return (await response.body()).decode(errors="replace")
    except playwright.Error:
        return ""


async def test_a_direct_call_to_the_model_is_attached_and_heard(
    deployment: Deployment, browser: Browser
) -> None:
    """The page with "call the model directly": a key minted for the call, the offer to the
    local model itself, our session attached by call id; the page hears the agent's greeting,
    and our key (none here: a server secret stands for it) never shows in the page's traffic."""
    page, errors = await open_page(browser, deployment)
    seen: list[str] = []
    page.on("response", lambda r: seen.append(f"{r.status} {urlsplit(r.url).path}"))
    await page.check("#direct")
    async with (
        page.expect_response(lambda r: urlsplit(r.url).path == "/webrtc/client-secret") as minted,
        page.expect_response(lambda r: urlsplit(r.url).path == "/webrtc/attach") as att,
    ):
        await page.click("#call")
    attached = await att.value
    assert attached.status == 201, (await attached.text(), seen)
    call_id = json.loads(await attached.text())["call_id"]
    await expect(page.locator("#state")).to_have_text("In call", timeout=CONNECT_MS)
    assert await calls(deployment.base) == 1  # the attached session holds a seat
    assert 0 < await hear_agent(page) <= 1
    assert "201 /v1/realtime/calls" in seen and "200 /webrtc/client-secret" in seen
    key = json.loads(await (await minted.value).text())
    assert set(key) == {"value", "expires_at", "attach_token", "calls_url"}
    assert key["value"].startswith("ek_")
    assert not any(s in json.dumps(key) for s in deployment.secrets)
    await page.click("#hangup")
    await until_calls(deployment, 0, 10)
    assert await deployment.ended(call_id) == "call_ended"
    assert errors == []


async def test_talking_over_the_agent_interrupts_it(
    deployment: Deployment, barge_in_browser: Browser
) -> None:
    """The caller talks over the greeting: the session marks the turn interrupted (the page's
    transcript shows it) and the agent's audio stops at once, while the caller goes on."""
    page, errors = await open_page(barge_in_browser, deployment)
    call_id = await place_call(page, deployment)
    await expect(page.locator("#transcript p.note")).to_have_text("(interrupted)", timeout=HEAR_MS)
    # Within a second of the barge-in the agent's meter reads silence (the model's remaining
    # greeting was cleared from the track), while the caller's tone goes on.
    # "Silence" means quiet for 600 ms running: a pause between two words is shorter.
    await page.evaluate(
        """() => { window.quietSince = performance.now();
                   setInterval(() => { if (((window.callrayLevels || {}).agent || 0) >= 0.01)
                                         window.quietSince = performance.now(); }, 10); }"""
    )
    await page.wait_for_function(
        "() => performance.now() - window.quietSince > 600", timeout=1500, polling=20
    )
    await page.click("#hangup")
    await until_calls(deployment, 0, 5)
    assert await deployment.ended(call_id) == "caller_hangup"
    assert errors == []
