"""The Prefect UI's "Custom run" form for our deployments, as a person sees it.

Headless Chromium (Debian's `chromium`) opens `/v2/deployments/deployment/<id>/run` on the
test server (the route the V2 UI's "Run > Custom run" menu links to; V2 is the default UI
of Prefect 3.8), renders the page and dumps the DOM; every parameter's name and its
description from the deployment's schema must be on the page, enums must show their
default choice, and a screenshot is saved beside the test's temp files.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import deploy_support as ds
import infra
import pytest
from cdp import HEADLESS_FLAGS

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    *HEADLESS_FLAGS,
    "--hide-scrollbars",
    "--window-size=1280,3600",
    "--virtual-time-budget=20000",
]


def _chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and there is no apt-get to install it")
    install = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    found = shutil.which("chromium")
    if found is None:
        pytest.skip(f"apt-get could not install chromium:\n{install.stdout[-2000:]}")
    return found


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _page_text(dom: str) -> str:
    parser = _Text()
    parser.feed(dom)
    return _norm(" ".join(parser.parts))


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


@pytest.fixture(scope="module")
def chromium(shared_dir: Path) -> str:
    ds.deploy()
    return _chromium()


def _render(chromium: str, url: str, out: Path) -> str:
    shot = out / "form.png"
    result = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={out / 'profile'}",
            f"--screenshot={shot}",
            "--dump-dom",
            url,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert shot.is_file() and shot.stat().st_size > 10_000, "no screenshot"
    (out / "form.html").write_text(result.stdout)
    return result.stdout


@pytest.mark.parametrize(
    "deployment",
    [
        "archive-backfill/archive-backfill",
        "watch-arrivals/watch-arrivals",
        "upscale-video/upscale-video",
        "upscale-images/upscale-images",
    ],
)
def test_custom_run_form_shows_every_parameter_with_its_description(
    chromium: str, deployment: str, tmp_path: Path
) -> None:
    with ds.api() as client:
        found = client.read_deployment_by_name(deployment)
    schema = found.parameter_openapi_schema
    base = infra.ensure_prefect()["PREFECT_API_URL"].removesuffix("/api")
    url = f"{base}/v2/deployments/deployment/{found.id}/run"
    text = _page_text(_render(chromium, url, tmp_path))
    assert "Parameters" in text and deployment.split("/")[1] in text, text[:2000]
    missing_names, missing_descriptions = [], []
    for name, prop in schema["properties"].items():
        if name not in text:
            missing_names.append(name)
        description = prop.get("description")
        if not description or _norm(description) not in text:
            missing_descriptions.append(name)
        if "enum" in prop and "default" in prop:
            assert str(prop["default"]) in text, f"{name}: enum default not shown"
    assert not missing_names, f"parameters not in the form: {missing_names}"
    assert not missing_descriptions, (
        f"{deployment}: parameters without a description in the form: {missing_descriptions} "
        f"(screenshot: {tmp_path / 'form.png'})"
    )


def _form_url(deployment: str) -> str:
    with ds.api() as client:
        found = client.read_deployment_by_name(deployment)
    base = infra.ensure_prefect()["PREFECT_API_URL"].removesuffix("/api")
    return f"{base}/v2/deployments/deployment/{found.id}/run"


def _button_showing(text: str) -> str:
    return f"[...document.querySelectorAll('button')].find(b => b.innerText.trim() === {text!r})"


def test_the_settings_form_reads_as_words_and_the_model_is_a_registry_dropdown(
    chromium: str, tmp_path: Path
) -> None:
    from cdp import Browser

    from vsrflow.settings import DEFAULT_MODEL, REGISTRY_NAMES

    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(_form_url("upscale-video/upscale-video"), until_text=DEFAULT_MODEL)
        text = _norm(browser.text())
        browser.screenshot(tmp_path / "form.png")
        assert "Property is type" not in text
        # Groups titled in words, bounds visible in the descriptions.
        for words in ("Model", "Output size", "Engine", "Encoder", "Batches", "(0-63;", "(1-64)"):
            assert words in text, words
        browser.click(_button_showing(DEFAULT_MODEL))
        browser.wait_for("document.querySelectorAll('[role=option]').length > 0")
        options = browser.evaluate(
            "[...document.querySelectorAll('[role=option]')].map(o => o.innerText.trim())"
        )
        time.sleep(0.5)  # let the opening animation finish before the screenshot
        shot = browser.screenshot(tmp_path / "model-dropdown.png")
        assert shot.stat().st_size > 10_000
        assert options == list(REGISTRY_NAMES), options
    finally:
        browser.close()


def test_the_form_refuses_a_malformed_s3_uri_in_words_before_a_run_exists(
    chromium: str, tmp_path: Path
) -> None:
    from cdp import Browser

    deployment = "upscale-video/upscale-video"
    before = len(ds.runs_of(deployment, ""))
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(_form_url(deployment), until_text="input_path")
        for index, value in ((0, "/data/in.mp4"), (1, "s3:/bucket/out.mp4")):
            browser.click(f"document.querySelectorAll('textarea')[{index}]")
            browser.call("Input.insertText", text=value)
        browser.click(_button_showing("Submit"))
        browser.wait_for("document.body.innerText.includes('two slashes after s3:')")
        browser.evaluate("window.scrollTo(0, 0)")
        browser.screenshot(tmp_path / "refused.png")
        text = _norm(browser.text())
        assert "does not match" not in text  # words, not a regular expression
    finally:
        browser.close()
    assert len(ds.runs_of(deployment, "")) == before  # nothing was created
