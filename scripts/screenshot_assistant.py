#!/usr/bin/env python3
"""The README's screenshot of the assistant page: SmolLM2-135M-Instruct Q4_1 with the `polite` profile localized
from the shipped pairs (as scripts/demo does), served by `serve`, driven in headless chromium: one provocative
message steered, the same unsteered, then compare.

    .venv/bin/python scripts/screenshot_assistant.py          # writes docs/assistant.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from austeer_gguf import datasets, models  # noqa: E402
from austeer_gguf.formats.embedded import embed_profiles  # noqa: E402
from austeer_gguf.localization.localize import localize  # noqa: E402

from server_fixture import running_server  # noqa: E402

MESSAGE = "You are useless. Why can't you answer a simple question?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", default="docs/assistant.png")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="austeer-shot-"))
    profile = localize(models.float_copy("smollm2"), datasets.pairs_path("polite", "train"), sites="attn", k=20,
                       alpha=10.0, name="polite", progress=False).profile
    model = embed_profiles(models.fetch("smollm2"), [profile], scratch / "SmolLM2-135M-Instruct.Q4_1.gguf")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,820"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        with running_server(model) as url:
            browser.get(url + "/")
            WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "profile").get_attribute("value"))
            for count in (1, 2):
                if count == 2:
                    browser.find_element(By.ID, "detox").click()
                browser.find_element(By.ID, "message").send_keys(MESSAGE)
                browser.find_element(By.ID, "send").click()
                WebDriverWait(browser, 120).until(lambda b, n=count: len(
                    [r for r in b.find_elements(By.CSS_SELECTOR, "#log > .reply") if r.get_attribute("data-steering")])
                    == n)
            browser.find_element(By.ID, "detox").click()
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(args.output)
    finally:
        browser.quit()
        shutil.rmtree(scratch, ignore_errors=True)
    print(args.output)


if __name__ == "__main__":
    main()
