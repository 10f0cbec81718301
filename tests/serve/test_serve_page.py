"""The page (`GET /`) and `riselm view`, in a real headless Chromium driven by Selenium; the page's HTML alone
without a browser."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from riselm.cli import app as cli
from riselm.generation.fake import ScriptedGenerator
from riselm.rollout.episode import read_episodes
from riselm.serve import ServeSettings
from riselm.serve.view import render_episodes
from tests.serve.conftest import by_turn, create_app, needs_serve_extra, running


def turn(answer, reward, text=None):
    return {"response": text or f"so \\boxed{{{answer}}}", "pred": None if answer is None else str(answer), "reward": reward}


EPISODES = [  # gsm8k compares numbers by value: "4.0" votes with "4"
    {
        "id": "fixed",
        "task": "gsm8k",
        "mode": "sequential",
        "prompt": "What is 2+2?",
        "answer": "4",
        "turns": [turn(5, 0), turn(4, 1), turn("4.0", 1)],
    },
    {
        "id": "broken",
        "task": "gsm8k",
        "mode": "sequential",
        "prompt": "What is 3+3?",
        "answer": "6",
        "turns": [turn(6, 1), turn(6, 1), turn(7, 0)],
    },
    {
        "id": "stuck",
        "task": "other-tool",
        "mode": "sequential",
        "prompt": "<script>alert(1)</script>",
        "answer": "1",
        "turns": [turn(None, 0, "no idea </script><b>bold</b>"), turn(2, 0)],
    },
]


@pytest.fixture
def episodes_file(tmp_path):
    path = tmp_path / "episodes.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EPISODES))
    return path


def embedded(page: str) -> list[dict]:
    return json.loads(re.search(r"const EPISODES=(.*?);\nconst list", page, re.S).group(1))


def test_riselm_view_writes_one_self_contained_page_with_the_vote_and_filters(episodes_file, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["view", str(episodes_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 episodes (1 wrong→right, 1 right→wrong, 1 unsolved)" in result.output
    page = out.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page) and "http" not in page  # nothing to fetch
    assert "</script><b>" not in page  # model text never closes the script
    fixed, broken, stuck = embedded(page)
    assert fixed["vote"] == {"answer": "4.0", "turn": 3, "votes": 2, "of": 3, "groups": [[1], [2, 3]], "correct": True}
    assert [t["agrees"] for t in fixed["turns"]] == [False, True, True] and fixed["tags"] == ["wrong→right"]
    assert broken["vote"]["answer"] == "6" and broken["vote"]["correct"] is True and broken["tags"] == ["right→wrong"]
    assert stuck["vote"]["answer"] == "2" and stuck["vote"]["correct"] is False
    assert stuck["tags"] == ["unsolved"] and stuck["turns"][0]["answer"] is None and stuck["question"] == "<script>alert(1)</script>"


def test_riselm_view_of_a_bad_file_is_one_clean_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "task": "x", "mode": "sequential"}\n')
    result = CliRunner().invoke(cli, ["view", str(bad), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output and "'turns'" in result.output


def test_the_live_page_is_self_contained():
    needs_serve_extra()
    app = create_app(ScriptedGenerator(["\\boxed{1}"]), ServeSettings(turns=4), model_name="m</script>")
    with running(app) as url:
        import urllib.request

        page = urllib.request.urlopen(url).read().decode()
    assert "http" not in page and not re.search(r"<(script|link|img)[^>]+(src|href)=", page)
    assert 'const MODEL="m\\u003c/script\\u003e"' in page and "value=4" in page


# ---- in a real browser ----------------------------------------------------------------------------
def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium): the browser tests need it")
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("no system Chromium and chromedriver (apt-get install chromium chromium-driver): the browser tests need them")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,1400"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


def test_the_page_shows_each_turn_which_agreed_and_the_vote(browser, tmp_path):
    needs_serve_extra()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    gen = ScriptedGenerator(by_turn({1: 4, 2: 5, 3: 4}))
    with running(create_app(gen, ServeSettings(turns=3), model_name="m")) as url:
        browser.get(url)
        browser.find_element(By.ID, "question").send_keys("What is 2+2? <b>not bold</b>")
        browser.find_element(By.ID, "send").click()
        answer = WebDriverWait(browser, 20).until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".vote-answer")))
        assert answer.text == "4"
        turns = browser.find_elements(By.CSS_SELECTOR, "#out .turn")
        assert [t.get_attribute("data-turn") for t in turns] == ["1", "2", "3"]
        assert [t.find_element(By.CSS_SELECTOR, ".turn-answer").text for t in turns] == ["answer: 4", "answer: 5", "answer: 4"]
        assert [t.get_attribute("data-turn") for t in browser.find_elements(By.CSS_SELECTOR, "#out .turn.agrees")] == ["1", "3"]
        assert browser.find_element(By.CSS_SELECTOR, "#out .turn.voted").get_attribute("data-turn") == "3"
        assert "2 of 3 turns agree" in browser.find_element(By.CSS_SELECTOR, "#out .vote").text
        assert browser.find_element(By.CSS_SELECTOR, "#out .question").text == "What is 2+2? <b>not bold</b>"
        browser.save_screenshot(str(tmp_path / "page.png"))
    assert gen.calls[0].conversations[0][0]["content"] == "What is 2+2? <b>not bold</b>"


def test_the_report_filters_episodes_in_the_browser(browser, episodes_file, tmp_path):
    from selenium.webdriver.common.by import By

    out = tmp_path / "report.html"
    out.write_text(render_episodes(read_episodes(episodes_file)))
    browser.get(out.as_uri())
    shown = {}
    for name in ("wrong→right", "right→wrong", "unsolved", "all"):
        browser.find_element(By.CSS_SELECTOR, f"button.filter[data-filter='{name}']").click()
        shown[name] = [
            e.find_element(By.CSS_SELECTOR, ".question").text for e in browser.find_elements(By.CSS_SELECTOR, "#episodes .episode")
        ]
    assert shown == {
        "wrong→right": ["What is 2+2?"],
        "right→wrong": ["What is 3+3?"],
        "unsolved": ["<script>alert(1)</script>"],
        "all": ["What is 2+2?", "What is 3+3?", "<script>alert(1)</script>"],
    }
    assert browser.find_element(By.ID, "shown").text == "3 of 3 episodes"
    browser.save_screenshot(str(tmp_path / "report.png"))
