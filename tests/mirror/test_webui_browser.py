"""The pages as a person uses them: headless Chromium (Debian's `chromium` + `chromium-driver`),
driven by Selenium, against a real `mirror serve` (gunicorn) started on a free 127.0.0.1 port
with a --token-file. Logs in through the form, filters and sorts the catalogue (also with
JavaScript off), opens a repo page, checks commit and digests, downloads the manifest, the
signature and files and compares their bytes, and checks that nothing a hostile card or file
name carries runs, styles the page or widens it.

`MIRROR_SCREENSHOTS=docs/screenshots` also saves the screenshots there (the ones in the README).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirror.pack import pack_folder
from mirror.bundle.codec import read_tail
from tests.fixtures.serve import serve_bundles
from tests.mirror.test_webui_pages import HOSTILE_FILE, TOKEN, build_estate

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.requires("chromium", "chromedriver")  # make test installs both with apt-get when it may

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1366,900")


@pytest.fixture
def served(tmp_path, tiny_bert_dir):
    """`mirror serve` (tests/fixtures/serve.py) over the pages test's estate plus a real tiny
    random-init model (trainer/tiny.py), with a token file."""
    estate = build_estate(tmp_path)
    estate["bert"] = pack_folder(tiny_bert_dir, repo_id="acme/tiny-bert", out_dir=estate["dir"])
    (tmp_path / "tokens").write_text(f"# test token\n{TOKEN}\n")
    with serve_bundles(estate["dir"], tmp_path / "state.json", "--token-file", str(tmp_path / "tokens"), "--rescan-interval", "0", "--threads", "4") as srv:
        srv.estate = estate
        yield srv


def _browser(tmp_path: Path, *, javascript: bool = True):
    downloads = tmp_path / "downloads"
    downloads.mkdir(exist_ok=True)
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / ('chrome' if javascript else 'chrome-nojs')}")
    prefs = {"download.default_directory": str(downloads), "download.prompt_for_download": False, "safebrowsing.enabled": False}
    if not javascript:
        prefs["profile.managed_default_content_settings.javascript"] = 2
    opts.add_experimental_option("prefs", prefs)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    env = {**os.environ, "SE_AVOID_STATS": "true", "SE_OFFLINE": "true"}
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(60)
    return driver, downloads


@pytest.fixture
def browser(tmp_path):
    driver, downloads = _browser(tmp_path)
    try:
        yield driver, downloads
    finally:
        driver.quit()


def _log_in(driver, url: str) -> None:
    driver.get(url + "/")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Log in"
    box = driver.find_element(By.NAME, "token")
    box.send_keys(TOKEN)
    box.submit()
    _wait(lambda: driver.find_elements(By.ID, "repos"), "the catalogue after logging in")


def _wait(check, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _download(driver, downloads: Path, link) -> bytes:
    before = set(downloads.iterdir())
    link.click()

    def done():
        new = [p for p in set(downloads.iterdir()) - before if not p.name.endswith((".crdownload", ".tmp"))]
        return new[0] if new else None

    path = _wait(done, f"the download of {link.get_attribute('href')}")
    time.sleep(0.2)  # Chrome renames the finished file into place; let it settle before reading
    return path.read_bytes()


def _run_snippet(driver, element_id: str, env: dict) -> subprocess.CompletedProcess:
    """Run a snippet exactly as the page shows it, the token placeholder filled in."""
    command = driver.find_element(By.ID, element_id).text.replace("<your token>", TOKEN)
    got = subprocess.run(["bash", "-c", command], check=False, env=env, capture_output=True, text=True, timeout=240)
    assert got.returncode == 0, f"{command}\n{got.stderr[-3000:]}"
    return got


def _rows(driver) -> list[str]:
    return [tr.get_attribute("data-repo") for tr in driver.find_elements(By.CSS_SELECTOR, "#repos tbody tr")]


def _screenshot(driver, tmp_path: Path, name: str, *, max_height: int = 2400) -> Path:
    """The whole page (up to `max_height` CSS pixels) at 1366 wide, through Chromium's own capture."""
    height = min(driver.execute_script("return document.documentElement.scrollHeight"), max_height)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": 1366, "height": height, "scale": 1},
    })
    out = tmp_path / f"{name}.png"
    out.write_bytes(base64.b64decode(shot["data"]))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    keep = os.environ.get("MIRROR_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, Path(keep) / out.name)
    return out


def _no_injection(driver) -> None:
    assert driver.execute_script("return typeof window.pwned") == "undefined"
    assert driver.execute_script(
        "return document.querySelectorAll('script, iframe, object, embed, [style], [onerror], [onload], style').length") == 0
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), "the page is wider than the window"
    refused = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"] or "Refused" in e["message"]]
    assert refused == []  # the sanitizer left nothing for the CSP to block


def test_a_person_logs_in_browses_filters_and_downloads_exact_bytes(served, browser, tmp_path):
    driver, downloads = browser
    url, estate = served.url, served.estate
    _log_in(driver, url)
    cookie = driver.get_cookie("mirror_token")
    assert cookie["value"] == TOKEN and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert driver.execute_script("return document.cookie") == ""  # HttpOnly: no script can read the token

    # the catalogue lists what is served, and the bundle that failed apart with its reason
    assert _rows(driver) == ["model:acme/eligibility-classifier", "model:acme/hostile", "dataset:acme/questions", "model:acme/tiny-bert", "model:acme/tiny-demo"]
    failed = driver.find_element(By.ID, "failed").text
    assert "acme--broken--damaged.tar" in failed and "mismatched" in failed
    for demo in ("acme/tiny-demo", "acme/tiny-bert"):  # the second carries trainer/tiny.py's own marker
        assert "random-init demo" in driver.find_element(By.CSS_SELECTOR, f'tr[data-repo="model:{demo}"]').text
    _no_injection(driver)
    _screenshot(driver, tmp_path, "catalogue")

    # the filter box and the sort
    box = driver.find_element(By.NAME, "q")
    box.send_keys("classifier")
    box.submit()
    _wait(lambda: "q=classifier" in driver.current_url, "the filtered catalogue")
    assert _rows(driver) == ["model:acme/eligibility-classifier"]
    driver.find_element(By.LINK_TEXT, "clear").click()
    _wait(lambda: len(_rows(driver)) == 5, "the whole catalogue again")
    Select(driver.find_element(By.NAME, "sort")).select_by_value("-size")
    driver.find_element(By.CSS_SELECTOR, "form.filter button").click()
    _wait(lambda: "sort=-size" in driver.current_url, "the sorted catalogue")
    sizes = {f"{estate[k].manifest.repo_type}:{estate[k].manifest.repo_id}": estate[k].manifest.total_size for k in ("hostile", "demo", "trained", "dataset", "bert")}
    assert _rows(driver) == sorted(sizes, key=sizes.get, reverse=True)

    # the hostile repo's page: right commit and digests, nothing injected runs
    driver.find_element(By.LINK_TEXT, "acme/hostile").click()
    _wait(lambda: driver.find_elements(By.ID, "commit"), "the repo page")
    hostile = estate["hostile"]
    m = hostile.manifest
    assert driver.find_element(By.ID, "commit").text == m.commit
    shown = {tr.find_element(By.CSS_SELECTOR, "td:first-child").text: tr.find_element(By.CSS_SELECTOR, "td.digest").text
             for tr in driver.find_elements(By.CSS_SELECTOR, "#files tbody tr")}
    assert shown == {f.path: f.sha256 for f in m.files}
    _no_injection(driver)
    assert "<script>window.pwned = 1</script>" in driver.find_element(By.ID, "card").text  # shown as text
    assert driver.find_element(By.CSS_SELECTOR, "#card-meta dd").text == "<script>window.pwned=1</script>"  # the licence, as text
    _screenshot(driver, tmp_path, "repo-hostile")

    # downloads give the exact bytes
    tail = read_tail(hostile.path)
    assert _download(driver, downloads, driver.find_element(By.ID, "dl-manifest")) == tail.manifest_bytes.rstrip(b" ")
    assert _download(driver, downloads, driver.find_element(By.ID, "dl-signature")) == tail.signature
    weights = driver.find_element(By.LINK_TEXT, "model.safetensors")
    assert _download(driver, downloads, weights) == b"\x01" * 3000
    assert _download(driver, downloads, driver.find_element(By.LINK_TEXT, HOSTILE_FILE)) == b"hi\n"
    bom = _download(driver, downloads, driver.find_element(By.ID, "dl-bom"))
    assert m.commit.encode() in bom and b'"machine-learning-model"' in bom

    # a trained model's page: lineage; the demo model's page: labelled
    driver.get(url + "/acme/eligibility-classifier")
    assert "sentence-transformers/all-MiniLM-L6-v2" in driver.find_element(By.ID, "lineage").text
    _no_injection(driver)
    _screenshot(driver, tmp_path, "repo")
    driver.get(url + "/acme/tiny-demo")
    assert driver.find_element(By.ID, "demo").text.startswith("RANDOM-INITIALISED demo model")


def test_with_javascript_off_login_filter_and_sort_still_work(served, tmp_path):
    driver, _ = _browser(tmp_path, javascript=False)
    try:
        driver.get(served.url + "/acme/hostile")  # a deep link: the form brings the person back here
        assert driver.find_element(By.TAG_NAME, "h1").text == "Log in"
        box = driver.find_element(By.NAME, "token")
        box.send_keys("not-the-token-at-all")
        box.submit()
        _wait(lambda: driver.find_elements(By.ID, "login-error"), "the refusal")
        assert "token not accepted" in driver.find_element(By.ID, "login-error").text
        assert "not-the-token-at-all" not in driver.page_source
        box = driver.find_element(By.NAME, "token")
        box.send_keys(TOKEN)
        box.submit()
        _wait(lambda: driver.find_elements(By.ID, "commit"), "the repo page after logging in")
        assert driver.current_url == served.url + "/acme/hostile"
        driver.get(served.url + "/")
        box = driver.find_element(By.NAME, "q")
        box.send_keys("questions")
        Select(driver.find_element(By.NAME, "sort")).select_by_value("-files")
        box.submit()
        _wait(lambda: "q=questions" in driver.current_url, "the filtered catalogue")
        assert "sort=-files" in driver.current_url and _rows(driver) == ["dataset:acme/questions"]
        # the copy-paste snippet, as shown, downloads the commit shown
        driver.find_element(By.LINK_TEXT, "acme/questions").click()
        _wait(lambda: driver.find_elements(By.ID, "snippet-cli"), "the dataset page")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HF_HOME": str(tmp_path / "client-hf")}
        env.pop("HF_HUB_CACHE", None)
        got = _run_snippet(driver, "snippet-cli", env)
        ds = served.estate["dataset"].manifest
        snapshot = tmp_path / "client-hf" / "hub" / "datasets--acme--questions" / "snapshots" / ds.commit
        assert str(snapshot) in got.stdout
        assert {f.path: hashlib.sha256((snapshot / f.path).read_bytes()).hexdigest() for f in ds.files} == {f.path: f.sha256 for f in ds.files}
        loaded = _run_snippet(driver, "snippet-python", env)
        assert "num_rows: 50" in loaded.stdout, loaded.stdout[-2000:]
        driver.get(served.url + "/acme/tiny-bert")
        assert driver.find_element(By.ID, "demo").text.startswith("RANDOM-INITIALISED demo model")
        model = _run_snippet(driver, "snippet-python", env)
        assert model.stdout.strip().splitlines()[-1] == "DistilBertModel"
    finally:
        driver.quit()
