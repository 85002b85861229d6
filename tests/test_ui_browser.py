"""The package browser in a real browser: Debian's chromium, driven by Playwright for Python.

Against a live `cnr-oci serve` in front of an htpasswd registry (alice, bob): every page loads, search
finds, links lead from a namespace to a release, a copied pull command runs, a private package shows
only after logging in, and a chart README's <script> never runs. With UI_SCREENSHOTS=<dir>, the main
pages are saved there as PNG (docs/ holds the README's).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import tarball, unique

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
README = b"""# Web app

A small web application.

<script>window.pwned = 1</script>
<img src="x" onerror="window.pwned = 2">

[click me](javascript:window.pwned=3)

## Install

    helm install web ./web
"""


def _need_browser() -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing = "the playwright package (pip install '.[test]')"
    else:
        missing = "" if Path(CHROMIUM).exists() else f"{CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} is missing: CI installs it (make system-deps, .ci/run)")
        pytest.skip(f"{missing} is missing")


def _chart(name: str, version: str) -> bytes:
    yaml = (f"apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: '2.4'\n"
            f"description: A web application chart\nkeywords: [web, demo]\n").encode()
    return tarball({f"{name}/Chart.yaml": yaml, f"{name}/values.yaml": b"replicaCount: 2\nimage: nginx\n",
                    f"{name}/README.md": README})


def _api(live: Any, method: str, path: str, doc: Any = None, user: str = "alice") -> Any:
    auth = base64.b64encode(f"{user}:{live.users[user]}".encode()).decode()
    req = urllib.request.Request(f"{live.url}/cnr/api/v1/packages/{path}", method=method,
                                 data=json.dumps(doc).encode() if doc is not None else None,
                                 headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def site(live_server: Any) -> dict[str, Any]:
    """Two namespaces: a helm chart with two releases and a channel, and a kpm package."""
    ns, other = unique("web")[0], unique("ops")[0]
    blobs = {}
    for version in ("1.0.0", "1.1.0"):
        blobs[version] = _chart("webapp", version)
        _api(live_server, "POST", f"{ns}/webapp", {"blob": base64.b64encode(blobs[version]).decode(),
                                                  "release": version, "media_type": "helm",
                                                  "metadata": {"team": "web", "tier": "frontend"}})
    _api(live_server, "POST", f"{ns}/webapp/channels/stable/1.0.0")
    kpm = tarball({"manifest.yaml": b"package: tools\n"})
    _api(live_server, "POST", f"{other}/toolbox", {"blob": base64.b64encode(kpm).decode(), "release": "0.3.0",
                                                   "media_type": "kpm"})
    return {"live": live_server, "ns": ns, "other": other, "blobs": blobs}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh chromium profile (a temp user-data-dir): no cookies from another test."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=ARGS)
        ctx.set_default_timeout(20_000)
        try:
            yield ctx
        finally:
            ctx.close()


def _login(page: Any, live: Any, user: str = "alice") -> None:
    page.goto(f"{live.url}/ui/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(live.users[user])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    assert f"Signed in as {user}" in page.inner_text("header")


def _shoot(page: Any, name: str) -> None:
    where = os.environ.get("UI_SCREENSHOTS")
    if where:
        page.screenshot(path=str(Path(where) / f"ui-{name}.png"), full_page=True)


def test_each_page_loads_with_its_heading(site, browser):
    live, ns = site["live"], site["ns"]
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _login(page, live)
    pages = [("/", "Namespaces"), ("/ui/", "Namespaces"), (f"/ui/packages?namespace={ns}", f"Packages in {ns}"),
             (f"/ui/packages/{ns}/webapp", f"{ns}/webapp"), (f"/ui/packages/{ns}/webapp/1.1.0/helm",
                                                              f"{ns}/webapp 1.1.0"), ("/ui/login", "Log in")]
    for path, heading in pages:
        resp = page.goto(live.url + path)
        assert resp is not None and resp.status == 200, path
        assert resp.headers["cache-control"] == "private", path
        assert page.inner_text("h1") == heading, path
    assert not errors
    page.goto(f"{live.url}/ui/packages/{ns}/webapp")
    text = page.inner_text("main")
    assert "stable" in text and "sha256:" in text and "1.0.0" in text and "1.1.0" in text


def test_search_finds_by_name_and_leaves_the_rest_out(site, browser):
    live = site["live"]
    page = browser.new_page()
    _login(page, live)
    page.goto(f"{live.url}/ui/")
    page.get_by_label("Search packages").fill("toolb")
    page.get_by_label("Search packages").press("Enter")
    page.wait_for_load_state()
    links = page.locator("main table a").all_inner_texts()
    assert f"{site['other']}/toolbox" in links
    assert f"{site['ns']}/webapp" not in links
    _shoot(page, "search")


def test_links_lead_from_a_namespace_to_a_release(site, browser):
    live, ns = site["live"], site["ns"]
    page = browser.new_page()
    _login(page, live)
    page.goto(f"{live.url}/ui/")
    _shoot(page, "namespaces")
    page.get_by_role("link", name=ns, exact=True).click()
    assert page.inner_text("h1") == f"Packages in {ns}"
    _shoot(page, "packages")
    page.get_by_role("link", name=f"{ns}/webapp").click()
    assert page.inner_text("h1") == f"{ns}/webapp"
    _shoot(page, "package")
    page.get_by_role("link", name="1.0.0", exact=True).click()
    assert page.inner_text("h1") == f"{ns}/webapp 1.0.0"
    assert "stable" in page.inner_text("dl.facts")
    _shoot(page, "release")
    # Keyboard: the first Tab reaches the skip link, which leads to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"


def test_a_copied_pull_command_runs_and_fetches_the_release(site, browser, tmp_path):
    live, ns = site["live"], site["ns"]
    page = browser.new_page()
    _login(page, live)
    page.goto(f"{live.url}/ui/packages/{ns}/webapp/1.1.0/helm")
    command = page.get_by_label("curl").input_value()
    assert command.startswith("curl ") and " -u alice " in command
    # The page never holds the password: the user types it, here into curl's -u.
    argv = shlex.split(command.replace(" -u alice ", f" -u alice:{live.users['alice']} "))
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / argv[argv.index("-o") + 1]).read_bytes() == site["blobs"]["1.1.0"]
    for client in ("appr", "helm (OCI)", "helm (repository)", "oras"):
        assert page.get_by_label(client, exact=True).input_value()


def test_a_private_package_is_absent_anonymously_and_present_after_login(site, browser):
    live, ns = site["live"], site["ns"]
    page = browser.new_page()
    resp = page.goto(f"{live.url}/ui/packages?namespace={ns}")
    assert resp is not None and resp.status == 401
    assert f"{ns}/webapp" not in page.inner_text("main")
    assert page.goto(f"{live.url}/ui/packages/{ns}/webapp").status == 401  # type: ignore[union-attr]
    page.get_by_role("main").get_by_role("link", name="Log in").click()
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(live.users["alice"])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    assert page.inner_text("h1") == f"{ns}/webapp"  # back where the login started
    page.goto(f"{live.url}/ui/packages?namespace={ns}")
    assert f"{ns}/webapp" in page.locator("main table").inner_text()
    cookie = next(c for c in browser.cookies() if c["name"] == "cnroci_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie").find("cnroci_session") == -1  # HttpOnly: no script reads it
    page.get_by_role("button", name="Log out").click()
    page.wait_for_load_state()
    assert page.goto(f"{live.url}/ui/packages/{ns}/webapp").status == 401  # type: ignore[union-attr]


def test_a_chart_readme_script_does_not_run(site, tmp_path):
    """Even with the page's Content-Security-Policy bypassed, the README's <script>, onerror and
    javascript: link do nothing: the README is rendered without raw HTML."""
    _need_browser()
    from playwright.sync_api import sync_playwright

    live, ns = site["live"], site["ns"]
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=ARGS, bypass_csp=True)
        try:
            page = ctx.new_page()
            _login(page, live)
            page.goto(f"{live.url}/ui/packages/{ns}/webapp/1.0.0/helm")
            readme = page.locator("article.readme")
            assert readme.locator("h1").inner_text() == "Web app"
            assert "<script>window.pwned = 1</script>" in readme.inner_text()
            assert readme.locator("script, img").count() == 0
            links = readme.locator("a")
            assert all(not (links.nth(i).get_attribute("href") or "").startswith("javascript")
                       for i in range(links.count()))
            page.wait_for_timeout(200)
            assert page.evaluate("window.pwned") is None
            assert "replicaCount: 2" in page.inner_text("pre.values")
        finally:
            ctx.close()
