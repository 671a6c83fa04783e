"""The desktop assistant page in a real headless browser (Debian's chromium driven through chromedriver by
Selenium; scripts/setup installs both): load the page, send a message, flip the detox toggle, send again,
check the two replies ran under different settings, compare, and take a screenshot. Nothing is fetched from
outside the server: every asset the page loads is checked to come from it."""

from __future__ import annotations

import json
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from austeer_gguf import Profile, Unit
from austeer_gguf.formats.embedded import embed_profiles

from server_fixture import running_server

MOOD = Profile("mood", 4.0, [Unit(layer, "attn", dim, 0.8) for layer in range(3) for dim in (1, 5, 9, 13)])


@pytest.fixture
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are needed: scripts/setup installs them"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1100,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def replies(browser) -> list:
    return browser.find_elements(By.CSS_SELECTOR, "#log > .reply")


def send(browser, text: str, count: int):
    box = browser.find_element(By.ID, "message")
    box.send_keys(text)
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 120).until(lambda b: len(replies(b)) == count and replies(b)[-1].get_attribute(
        "data-steering"))
    return replies(browser)[-1]


def test_the_assistant_page_toggles_streams_and_compares(tiny_f32, tmp_path, browser):
    model = embed_profiles(tiny_f32, [MOOD], tmp_path / "tiny.gguf")
    with running_server(model, "--n-ctx", "1024") as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "profile").get_attribute("value") == "mood")
        assert browser.find_element(By.ID, "detox").is_selected()

        first = send(browser, "the cat is", 1)
        assert json.loads(first.get_attribute("data-steering"))["enabled"] is True
        assert "steered: mood" in first.find_element(By.CLASS_NAME, "setting").text

        browser.find_element(By.ID, "detox").click()  # the toggle: takes effect on the next reply
        second = send(browser, "the cat is", 2)
        assert json.loads(second.get_attribute("data-steering"))["enabled"] is False
        assert second.find_element(By.CLASS_NAME, "setting").text == "unsteered"

        browser.find_element(By.ID, "detox").click()
        browser.find_element(By.ID, "compare").click()
        WebDriverWait(browser, 120).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".compare .reply")) == 2)
        off, on = browser.find_elements(By.CSS_SELECTOR, ".compare .reply")
        assert json.loads(off.get_attribute("data-steering"))["enabled"] is False
        assert json.loads(on.get_attribute("data-steering"))["enabled"] is True
        assert off.text.split("\n")[0] != on.text.split("\n")[0]

        browser.save_screenshot(str(tmp_path / "assistant.png"))
        assert (tmp_path / "assistant.png").stat().st_size > 10_000
        requested = {json.loads(entry["message"])["message"].get("params", {}).get("request", {}).get("url", "")
                     for entry in browser.get_log("performance")}
        outside = {u for u in requested if u and not u.startswith(url) and not u.startswith("data:")}
        assert not outside, f"the page fetched from outside the server: {outside}"
