"""The web page in a real browser (headless Chromium) against a running engine (tiny model, 64x64).

A person's view of it: moving a slider changes the value in the engine, a value changed over
OSC moves the slider, the preset list switches presets, preview pictures arrive, and a broken
preset shows its error. CI installs Debian's chromium (.ci/run); elsewhere, without a browser,
these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import REPO
from tests.waiting import wait_for

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
# The flags a root CI machine with no network needs: no sandbox (root), no GPU, no calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if CHROMIUM is None:
        return "no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
    return None


MISSING = _missing()
if MISSING and os.environ.get("CI"):
    raise RuntimeError(f"the browser tests must run in CI: {MISSING}")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

PRESET = """\
name: {name}
load: {{model: tiny, width: 64, height: 64, acceleration: none, device: cpu, source: pattern, sinks: ["null"]}}
live: {{prompt: "{prompt}", guidance_scale: 1.2, t_index_list: {steps}}}
"""

class Engine:
    def __init__(self, presets: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "run_engine.py"), "run", "--preset", "tiny", "--presets-dir", str(presets),
             "--osc-port", "0", "--web-port", "0", "--mdns"],  # --mdns: announced on loopback only
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._drain, daemon=True).start()  # a full pipe would stall the engine

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def line(self, pattern: str) -> re.Match:
        def found() -> re.Match | None:
            assert self.proc.poll() is None, "the engine exited:\n" + "".join(self.lines)
            return next((m for m in map(re.compile(pattern).search, list(self.lines)) if m), None)

        return wait_for(found, f"a log line matching {pattern!r}", timeout=120)  # type: ignore[return-value]

    def value(self, path: str) -> list:
        """A value as the engine holds it (its OSCQuery answer)."""
        with urllib.request.urlopen(f"{self.base}{path}?VALUE", timeout=10) as response:
            return json.load(response)["VALUE"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    presets = tmp_path_factory.mktemp("presets")
    (presets / "tiny.yaml").write_text(PRESET.format(name="tiny", prompt="a jellyfish", steps=[32, 45]))
    (presets / "warm.yaml").write_text(PRESET.format(name="warm", prompt="a warm sunset", steps=[32, 45]))
    (presets / "onestep.yaml").write_text(PRESET.format(name="onestep", prompt="one step", steps=[30]))
    (presets / "guided.yaml").write_text(PRESET.format(name="guided", prompt="guided", steps=[32, 45]).replace(
        'sinks: ["null"]', 'sinks: ["null"], controlnets: [{model: random, source: [input, "shm:svj_web_depth"], '
        'preprocessor: [canny, passthrough]}]'))
    (presets / "broken.yaml").write_text(
        PRESET.format(name="broken", prompt="x", steps=[32, 45]).replace("width: 64", "width: 100"))
    engine = Engine(presets)
    try:
        engine.url = engine.line(r"web page on (http://\S+)").group(1)
        engine.base = engine.url.split("/ui/")[0]
        osc = engine.line(r"OSC on udp://([\d.]+):(\d+)")
        engine.osc = (osc.group(1), int(osc.group(2)))
        engine.line(r"running: source")
        yield engine
    finally:
        engine.stop()
    assert engine.proc.returncode == 0, "".join(engine.lines)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(engine: Engine, browser: object) -> Iterator[object]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.goto(engine.base + "/")  # the server's root sends a browser to the page
    page.wait_for_selector("#controls:not([disabled])")  # connected, controls built, writable
    yield page
    page.close()
    assert problems == []


def test_a_slider_changes_the_value_in_the_engine(engine: Engine, page: object) -> None:
    slider = page.locator('input[type=range][data-path="/streamvj/guidance_scale"]')
    slider.focus()
    page.keyboard.press("End")  # what a person does: the slider to its top
    wait_for(lambda: engine.value("/streamvj/guidance_scale") == [20.0], "guidance_scale 20 in the engine")
    page.keyboard.press("Home")
    wait_for(lambda: engine.value("/streamvj/guidance_scale") == [0.0], "guidance_scale 0 in the engine")


def test_a_change_over_osc_moves_the_slider(engine: Engine, page: object) -> None:
    from pythonosc.udp_client import SimpleUDPClient

    SimpleUDPClient(*engine.osc).send_message("/streamvj/fx_hue", 90.0)
    slider = page.locator('input[type=range][data-path="/streamvj/fx_hue"]')
    wait_for(lambda: slider.input_value() == "90", "the fx_hue slider at 90")


def test_preview_pictures_arrive(page: object) -> None:
    count = page.locator("#preview-output-count")
    wait_for(lambda: int(count.text_content()) >= 3, "three output pictures")
    wait_for(lambda: int(page.locator("#preview-input-count").text_content()) >= 1, "an input picture")
    width = page.eval_on_selector("#preview-output", "img => img.naturalWidth")
    assert width == 64  # the engine's 64x64 output, as a JPEG


def test_the_preset_list_switches_presets(engine: Engine, page: object) -> None:
    page.click('#preset-list button[data-preset="warm"]')
    wait_for(lambda: engine.value("/streamvj/prompt") == ["a warm sunset"], "the warm preset's prompt in the engine")
    current = page.locator("#preset-list button.current")
    wait_for(lambda: current.text_content() == "warm", "warm marked on air")
    assert page.locator("#preset-name").text_content() == "warm"
    page.click('#preset-list button[data-preset="tiny"]')
    wait_for(lambda: engine.value("/streamvj/prompt") == ["a jellyfish"], "back to tiny")


def test_a_preset_with_another_step_count_reshapes_t_index_list(engine: Engine, page: object) -> None:
    sliders = page.locator('input[type=range][data-path="/streamvj/t_index_list"]')
    assert sliders.count() == 2
    page.click('#preset-list button[data-preset="onestep"]')  # a rebuild, in the background
    wait_for(lambda: engine.value("/streamvj/t_index_list") == [30], "the one-step pipeline on air")
    wait_for(lambda: sliders.count() == 1, "one t_index_list slider")
    sliders.first.focus()
    page.keyboard.press("ArrowRight")
    wait_for(lambda: engine.value("/streamvj/t_index_list") == [31], "t_index_list [31] in the engine")
    page.click('#preset-list button[data-preset="tiny"]')
    wait_for(lambda: engine.value("/streamvj/t_index_list") == [32, 45] and sliders.count() == 2, "back to two steps")


def test_a_presets_controlnet_choices_become_its_menus(engine: Engine, page: object) -> None:
    """The menus of a ControlNet's source and preprocessor offer what the preset on air lists, after each switch."""
    def options(param: str) -> list[str]:
        return page.locator(f'select[data-path="/streamvj/{param}"] option').all_text_contents()

    assert options("controlnet_0_preprocessor") == ["canny", "depth", "passthrough"]  # no ControlNet on air
    page.click('#preset-list button[data-preset="guided"]')  # a rebuild, in the background
    wait_for(lambda: engine.value("/streamvj/prompt") == ["guided"], "the guided preset on air")
    wait_for(lambda: options("controlnet_0_preprocessor") == ["canny", "passthrough"], "its preprocessors as the menu")
    wait_for(lambda: options("controlnet_0_source") == ["input", "shm:svj_web_depth"], "its sources as the menu")
    page.locator('select[data-path="/streamvj/controlnet_0_preprocessor"]').select_option("passthrough")
    wait_for(lambda: engine.value("/streamvj/controlnet_0_preprocessor") == ["passthrough"], "the pick in the engine")
    page.click('#preset-list button[data-preset="tiny"]')
    wait_for(lambda: engine.value("/streamvj/prompt") == ["a jellyfish"], "back to tiny")
    wait_for(lambda: options("controlnet_0_preprocessor") == ["canny", "depth", "passthrough"], "the full menu again")


def test_a_broken_preset_shows_its_error(engine: Engine, page: object) -> None:
    page.click('#preset-list button[data-preset="broken"]')
    error = page.locator("#error-list li", has_text="preset 'broken' not loaded")
    error.first.wait_for(timeout=30_000)
    assert "width" in error.first.text_content()
    banner = page.locator("#status-error")
    banner.wait_for(state="visible", timeout=30_000)
    assert "broken" in banner.text_content()
    assert engine.value("/streamvj/prompt") == ["a jellyfish"]  # the show played on


def test_the_engine_announces_itself_over_mdns(engine: Engine) -> None:
    from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

    from bridges.control.discovery import OSC_TYPE, OSCQUERY_TYPE

    web_port, osc_port = int(engine.base.rsplit(":", 1)[1]), engine.osc[1]
    found: set[tuple[str, int]] = set()

    def browse() -> None:
        # On a thread of its own: this thread has Playwright's event loop set, which zeroconf
        # would take for its own and never run.
        zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        seen: list[tuple[str, str]] = []

        def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
            if state_change is ServiceStateChange.Added:
                seen.append((service_type, name))

        browser = ServiceBrowser(zc, [OSC_TYPE, OSCQUERY_TYPE], handlers=[on_change])
        try:
            deadline = time.monotonic() + 30
            while not {(OSCQUERY_TYPE, web_port), (OSC_TYPE, osc_port)} <= found and time.monotonic() < deadline:
                for kind, name in list(seen):
                    info = zc.get_service_info(kind, name, timeout=3000)
                    if info is not None:
                        found.add((kind, info.port))
                time.sleep(0.05)
        finally:
            browser.cancel()
            zc.close()

    thread = threading.Thread(target=browse)
    thread.start()
    thread.join()
    assert {(OSCQUERY_TYPE, web_port), (OSC_TYPE, osc_port)} <= found
