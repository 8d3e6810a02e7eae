"""A real headless Chromium (Debian's, driven by Selenium) on the demo page the server serves
and on the HTML player ``textdiffusion viz`` writes, opened with the network off."""

import json
import time

import pytest
from browser import chromium
from commands import in_process
from selenium.webdriver.common.keys import Keys
from serving import serving

from textdiffusion import Pipeline
from textdiffusion.tokenizers import MASK_GLYPH


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def _wait(driver, script: str, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.05)


def _fill(driver, element_id: str, value) -> None:
    el = driver.find_element("id", element_id)
    el.clear()
    el.send_keys(str(value))


def test_the_demo_page_shows_the_text_denoising_live(cycle_dir, browser, tmp_path):
    """Type a prompt, press Ctrl+Enter: the page draws at least three intermediate canvases (masks
    thinning out) from the server's frame events, then the final text, which is the greedy
    continuation of the cycle; fill a template's hole; rewrite a selected span (the text around
    it kept); a screenshot is saved. No request leaves for anywhere but the server. (Planted: a
    page that draws the frames without keeping them, or draws only the final text, fails.)"""
    with serving(Pipeline.from_pretrained(cycle_dir)) as url:
        browser.get(url + "/")
        assert "textdiffusion" in browser.title
        for element_id, value in (("steps", 12), ("length", 12), ("temperature", 0)):
            _fill(browser, element_id, value)
        browser.find_element("css selector", "#sampler option[value=confidence]").click()
        _fill(browser, "text", "abc")
        browser.find_element("id", "text").send_keys(Keys.CONTROL, Keys.ENTER)
        final = _wait(browser, "return window.demo.final")
        assert final == "abcdefghabcdefg"
        history = browser.execute_script("return window.demo.history")
        masked = [h for h in history if MASK_GLYPH in h]
        assert len(set(masked)) >= 3 and history[-1] == final
        counts = [h.count(MASK_GLYPH) for h in masked]
        assert counts == sorted(counts, reverse=True)  # the masks only thin out
        assert browser.find_element("id", "canvas").text == final
        assert "12 steps" in browser.find_element("id", "stats").text
        browser.save_screenshot(str(tmp_path / "demo.png"))
        assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"

        browser.find_element("id", "accept").click()  # the result goes back into the text
        assert browser.find_element("id", "text").get_attribute("value") == final
        _fill(browser, "text", "ab[MASK:3]fgh")
        browser.execute_script("window.demo.final = null")
        browser.find_element("id", "go").click()
        assert _wait(browser, "return window.demo.final") == "abcdefgh"

        _fill(browser, "text", "abcdefgh")
        browser.execute_script("const t = document.getElementById('text'); t.focus(); t.setSelectionRange(2, 5);"
                               "window.demo.final = null")
        browser.find_element("id", "rewrite").click()
        rewritten = _wait(browser, "return window.demo.final")
        assert rewritten[:2] == "ab" and rewritten[5:] == "fgh" and len(rewritten) == 8
        hosts = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(h.startswith(url) for h in hosts), hosts


def test_the_player_works_offline_and_its_slider_changes_the_text(cycle_dir, browser, tmp_path):
    """The exported player opened from disk with the browser offline: it loads nothing, step 1
    shows masks, the slider (and the End key) moves to the last step, which shows the final text
    and no mask. (Planted: a player that always renders step 1 fails.)"""
    out = tmp_path / "viz"
    r = in_process("viz", cycle_dir, "abc", "--steps", "8", "--length", "12", "--out", out, "--formats", "html",
                   "--temperature", "0", "--sampler", "confidence")
    assert r.returncode == 0, r.stderr
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.emulateNetworkConditions",
                            {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
    try:
        browser.get((out / "player.html").as_uri())
        text = browser.find_element("id", "text")
        first = text.text
        assert MASK_GLYPH in first and first.startswith("abc")
        assert browser.find_element("id", "label").text == "step 1 / 8"
        browser.execute_script("const s = document.getElementById('step'); s.value = 4;"
                               "s.dispatchEvent(new Event('input'))")
        middle = text.text
        assert browser.find_element("id", "label").text == "step 5 / 8" and middle != first
        assert middle.count(MASK_GLYPH) < first.count(MASK_GLYPH)
        browser.find_element("tag name", "body").send_keys(Keys.END)
        assert browser.find_element("id", "label").text == "step 8 / 8"
        final = json.loads((out / "trace.json").read_text())["texts"][0]
        assert text.text == final and MASK_GLYPH not in final
        browser.find_element("tag name", "body").send_keys(Keys.ARROW_LEFT)
        assert browser.find_element("id", "label").text == "step 7 / 8"
        assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
        assert len(browser.find_elements("css selector", "#heat div")) == 15
    finally:
        browser.execute_cdp_cmd("Network.emulateNetworkConditions",
                                {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
