"""The volunteer's controls on the contributor dashboard, in real (headless, Debian) Chromium
against the live registry (contributor/static/js/controls.js, wired by app.js): a daily
compute limit pauses the node once reached, the threads setting reaches the engine (on a
restart, and after a reload), and a hidden tab or a battery pauses it while the option is
on and resumes it after. The registry's own view of the node (its status JSON, is_online)
confirms each pause and resume."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.browser.conftest import sign_up, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

PASSWORD = "contributing from a browser 42"
SUBNET = "minilm-embed"
READY = f"window.bim.phase === 'ready on {SUBNET}'"
# A battery the test plugs and unplugs: navigator.getBattery answers with it.
FAKE_BATTERY = """
(() => {
  const battery = new EventTarget();
  battery.charging = true;
  battery.level = 0.42;
  navigator.getBattery = () => Promise.resolve(battery);
  window.fakeBattery = (charging) => { battery.charging = charging; battery.dispatchEvent(new Event("chargingchange")); };
})();
"""
NO_BATTERY_API = "delete Navigator.prototype.getBattery;"
# The Page Visibility API as a backgrounded tab reports it.
SET_VISIBILITY = """(state) => {
  Object.defineProperty(document, "visibilityState", { value: state, configurable: true });
  Object.defineProperty(document, "hidden", { value: state === "hidden", configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def _sign_up(page, url: str, prefix: str) -> None:
    sign_up(page, url, f"{prefix}-{uuid.uuid4().hex[:8]}", PASSWORD)
    wait_for(page, "window.bim && window.bim.phase === 'no subnet'")


def _online(page) -> bool:
    """Whether the registry has this browser's node online, from the dashboard's status JSON."""
    return page.evaluate(
        """async () => {
          const response = await fetch(`/contribute/api/status/?node=${bim.nodeId}`, {headers: {Accept: "application/json"}});
          return (await response.json()).node.is_online;
        }"""
    )


def _wait_online(page, online: bool, timeout: float = 30_000) -> None:
    deadline = page.evaluate("performance.now()") + timeout
    while _online(page) is not online:
        if page.evaluate("performance.now()") > deadline:
            raise TimeoutError(f"the registry never saw the node {'online' if online else 'offline'}")
        page.wait_for_timeout(200)


def test_the_controls_limit_pause_and_resume_the_node_and_set_the_engines_threads(live_registry, browser):
    url = live_registry.url
    context = browser.new_context()
    context.add_init_script(FAKE_BATTERY)
    page = context.new_page()
    page.set_default_timeout(30_000)
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    try:
        _sign_up(page, url, "controls")
        cores = page.evaluate("navigator.hardwareConcurrency")
        default = min(4, -(-cores // 2))
        assert page.evaluate("bim.controls") == {
            "threads": default, "pauseWhenHidden": False, "pauseOnBattery": True, "dailyCapMinutes": 0,
        }
        assert page.locator("[data-testid=ctl-battery-state]").inner_text() == "on mains power"

        # A one-minute limit with 59.99 s already computed today (stored as an earlier visit
        # left it): the first benchmark run reaches it, and the node pauses.
        page.fill("[data-testid=ctl-cap]", "1")
        page.press("[data-testid=ctl-cap]", "Enter")
        wait_for(page, "bim.controls.dailyCapMinutes === 1")
        page.evaluate(
            """() => {
              const d = new Date(), pad = (n) => String(n).padStart(2, "0");
              const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
              localStorage.setItem("bim.compute-today.v1", JSON.stringify({day, ms: 59_990}));
            }"""
        )
        page.click(f"[data-testid=opt-in-{SUBNET}]")
        page.check("#id_accept")
        page.click("[data-testid=accept-license]")
        page.wait_for_url(f"{url}/contribute/")
        wait_for(page, "window.bim && window.bim.computedTodayMs === 59990")
        assert page.evaluate("bim.pauseReasons") == []
        wait_for(page, "bim.pauseReasons.includes('cap')", timeout=240_000)  # model download, benchmark
        wait_for(page, "bim.phase === 'paused'")
        assert page.evaluate("bim.pauseReasons") == ["cap"]
        assert page.evaluate("bim.computedTodayMs") >= 60_000
        assert "limit is reached" in page.locator("[data-testid=ctl-reasons]").inner_text()
        _wait_online(page, False)
        # Lifting the limit (0: none) resumes the node.
        page.fill("[data-testid=ctl-cap]", "0")
        page.press("[data-testid=ctl-cap]", "Enter")
        wait_for(page, READY, timeout=60_000)
        assert page.evaluate("bim.pauseReasons") == []
        _wait_online(page, True)

        # Threads: the chosen figure reaches the engine when it restarts (the page says so).
        target = 1 if default != 1 else min(2, cores)
        assert page.evaluate("bim.engine.threads") == default
        assert f"runs with {default} thread" in page.locator("[data-testid=ctl-threads-note]").inner_text()
        if target != default:
            page.fill("[data-testid=ctl-threads]", str(target))
            page.press("[data-testid=ctl-threads]", "Enter")
            wait_for(page, f"bim.controls.threads === {target}")
            assert page.locator("[data-testid=ctl-restart]").is_enabled()
            page.click("[data-testid=ctl-restart]")
            wait_for(page, f"bim.engine && bim.engine.threads === {target} && {READY}", timeout=60_000)
            assert page.evaluate("bim.pauseReasons") == []
            assert page.locator("[data-testid=ctl-restart]").is_disabled()
        # A hostile figure typed in is clamped to the cores there are.
        page.fill("[data-testid=ctl-threads]", "999")
        page.press("[data-testid=ctl-threads]", "Enter")
        wait_for(page, f"bim.controls.threads === {cores}")
        assert page.locator("[data-testid=ctl-threads]").input_value() == str(cores)
        page.fill("[data-testid=ctl-threads]", str(target))
        page.press("[data-testid=ctl-threads]", "Enter")
        wait_for(page, f"bim.controls.threads === {target}")

        # Hidden: nothing happens while the option is off; turning it on pauses the hidden
        # tab at once, and showing the tab resumes.
        page.evaluate(SET_VISIBILITY, "hidden")
        page.wait_for_timeout(300)
        assert page.evaluate("[bim.pauseReasons, bim.phase]") == [[], f"ready on {SUBNET}"]
        page.check("[data-testid=ctl-hidden]")
        wait_for(page, "bim.phase === 'paused'")
        assert page.evaluate("bim.pauseReasons") == ["hidden"]
        _wait_online(page, False)
        page.evaluate(SET_VISIBILITY, "visible")
        wait_for(page, READY, timeout=60_000)
        _wait_online(page, True)
        # The person's own Pause outlasts the tab being shown again.
        page.click("[data-testid=pause]")
        page.evaluate(SET_VISIBILITY, "hidden")
        page.evaluate(SET_VISIBILITY, "visible")
        wait_for(page, "bim.phase === 'paused'")
        assert page.evaluate("bim.pauseReasons") == ["user"]
        assert page.locator("[data-testid=pause]").inner_text() == "Resume"
        page.click("[data-testid=pause]")
        wait_for(page, READY, timeout=60_000)

        # Battery: unplugged pauses (pause on battery is the default), plugged in resumes.
        page.evaluate("fakeBattery(false)")
        wait_for(page, "bim.phase === 'paused'")
        assert page.evaluate("bim.pauseReasons") == ["battery"]
        assert page.locator("[data-testid=ctl-battery-state]").inner_text() == "on battery, 42 %"
        page.evaluate("fakeBattery(true)")
        wait_for(page, READY, timeout=60_000)

        # The settings live in this browser: after a reload the engine starts with them.
        page.reload()
        wait_for(page, f"window.bim && window.bim.engine && {READY}", timeout=120_000)
        assert page.evaluate("bim.engine.threads") == target
        assert page.evaluate("bim.controls") == {
            "threads": target, "pauseWhenHidden": True, "pauseOnBattery": True, "dailyCapMinutes": 0,
        }
        assert page.locator("[data-testid=ctl-hidden]").is_checked()
        print(json.dumps({"cores": cores, "default_threads": default, "threads": target, "log": page.evaluate("bim.log.slice(-8)")}))
    except Exception:
        print("\n".join(console[-60:]))
        raise
    finally:
        context.close()


def test_a_browser_without_the_battery_api_says_the_option_cannot_work(live_registry, browser):
    context = browser.new_context()
    context.add_init_script(NO_BATTERY_API)
    try:
        page = context.new_page()
        _sign_up(page, live_registry.url, "no-battery")
        wait_for(page, "document.getElementById('ctl-battery-state').textContent !== 'checking…'")
        assert "not reported by this browser" in page.locator("[data-testid=ctl-battery-state]").inner_text()
        assert page.locator("[data-testid=ctl-battery]").is_disabled()
    finally:
        context.close()
