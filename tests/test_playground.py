"""The server's playground page at /, in Debian's chromium through Playwright.

The served model is written here by transformers' save_pretrained with a context of 1,024
tokens, so that a long continuation takes a second or more and Stop lands in the middle of it.
"""
import json
import os
import shutil

import pytest

import reference
from api_server import ServerProcess
from browser_page import browser  # noqa: F401 (a fixture)

pytest.importorskip("fastapi", reason="--serve needs requirements-serve.txt")


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="the playground's model is written by transformers (torch==2.13.0)")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf-long")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_positions=1024, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(reference.fixture_dir("hf-a"), name), folder)
    return folder


@pytest.fixture(scope="module")
def server(long_context_model):
    process = ServerProcess(long_context_model)
    yield process
    process.stop()


def open_playground(browser, server):  # noqa: F811
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors, requests = [], []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(server.url + "/")
    return page, errors, requests


def test_it_streams_colours_tokens_and_shows_alternatives_and_calls_only_its_own_server(browser, server):  # noqa: F811
    page, errors, requests = open_playground(browser, server)
    page.fill("#prompt", "Hello, my name is")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "12")
    page.click("#generate")
    page.wait_for_selector("#status:has-text('finished')", timeout=30_000)
    tokens = page.locator("#output .tok")
    assert tokens.count() >= 6
    colours = [tokens.nth(i).evaluate("e => e.style.background") for i in range(tokens.count())]
    assert all(colour.startswith("rgb") or colour.startswith("hsl") for colour in colours), colours
    tokens.nth(0).hover()
    tip = page.locator("#tip")
    assert tip.is_visible()
    alternatives = tip.locator(".alt")
    assert alternatives.count() >= 5 and "%" in alternatives.nth(0).inner_text()
    choice = alternatives.nth(1)
    chosen = choice.locator("span").nth(0).inner_text()
    choice.click()
    page.wait_for_selector("#status:has-text('finished')", timeout=30_000)
    assert page.input_value("#prompt").endswith(json.loads(chosen)), "the text goes on from the chosen alternative"
    assert errors == [], errors
    assert all(url.startswith(server.url + "/") for url in requests), requests
    page.close()


def test_stop_cancels_the_request_and_the_server_frees_its_row(browser, server):  # noqa: F811
    page, errors, _ = open_playground(browser, server)
    page.fill("#prompt", "Once")
    page.fill("#temperature", "1")
    page.fill("#max_tokens", "1000")
    page.click("#generate")
    page.wait_for_selector("#output .tok", timeout=30_000)
    page.click("#stop_button")
    page.wait_for_selector("#status:has-text('stopped')", timeout=10_000)
    shown = page.locator("#output .tok").count()
    assert shown < 1000 and page.is_enabled("#generate")
    page.wait_for_function("() => true", timeout=1000)
    for _ in range(50):
        if server.metric("gpt2_rows_in_flight") == 0:
            break
        page.wait_for_timeout(100)
    assert server.metric("gpt2_rows_in_flight") == 0
    assert page.locator("#output .tok").count() == shown, "nothing more arrives after Stop"
    assert errors == [], errors
    page.close()
