"""Hostile input to the package browser: copy-ready commands, redirects, cookies, chart bombs."""

from __future__ import annotations

import html
import re
import shlex
import urllib.parse

from cnr_oci.settings import Settings
from cnr_oci.uisession import SESSION_COOKIE
from tests.helpers import body, tarball, unique
from tests.test_ui import HTML, USERS, _csrf

API = "/cnr/api/v1/packages"


def _commands(text: str) -> dict[str, str]:
    return {m.group(1): html.unescape(m.group(2)) for m in
            re.finditer(r'data-client="([^"]+)" type="text" readonly value="([^"]*)"', text)}


async def test_a_chart_name_with_shell_syntax_is_quoted_in_the_copy_ready_commands(client):
    ns, name = unique()
    evil = "x$(id);touch pwned"
    yaml = f"apiVersion: v2\nname: '{evil}'\nversion: 1.0.0\n".encode()
    pushed = await client.post(f"{API}/{ns}/{name}", json=body(tarball({"x/Chart.yaml": yaml}), media_type="helm"))
    assert pushed.status == 200, await pushed.text()
    text = await (await client.get(f"/ui/packages/{ns}/{name}/1.0.0/helm", headers=HTML)).text()
    cmds = _commands(text)
    assert cmds, text[:2000]
    assert "helm (repository)" in cmds
    for label, cmd in cmds.items():
        # What a shell makes of the pasted line: plain words, no command substitution, no second command.
        stripped = cmd
        for quoted in (shlex.quote(f"{ns}/{evil}"), shlex.quote(evil)):
            stripped = stripped.replace(quoted, "ARG")
        assert "$(" not in stripped and ";" not in stripped, (label, cmd)
        assert shlex.split(cmd.split(" && ")[-1])[0] in ("curl", "appr", "helm", "oras"), (label, cmd)


async def _login(c, next_: str):
    token = _csrf(await (await c.get("/ui/login", headers=HTML)).text())
    return await c.post("/ui/login", data={"csrf": token, "username": "alice", "password": USERS["alice"],
                                           "next": next_}, allow_redirects=False)


async def test_next_never_leaves_the_site_even_with_tabs_or_newlines(auth_client):
    for next_ in ("/\t/evil.example/", "/\n/evil.example/", "/\r/evil.example", "/ /evil.example",
                  "/%09/evil.example", "/\x0b/evil.example"):
        resp = await _login(auth_client, next_)
        assert resp.status == 303, (next_, resp.status)
        loc = resp.headers["Location"]
        cleaned = loc.replace("\t", "").replace("\n", "").replace("\r", "")
        assert urllib.parse.urlsplit(cleaned).netloc == "" and not cleaned.startswith("//"), (next_, loc)


async def test_a_release_page_renders_a_chart_once_however_often_it_is_viewed(client, monkeypatch):
    """A README of 256 KiB of '![' costs seconds of markdown-it in a thread: views after the first reuse it."""
    from cnr_oci import ui
    ns, name = unique()
    blob = tarball({f"{name}/Chart.yaml": f"apiVersion: v2\nname: {name}\nversion: 1.0.0\n".encode(),
                    f"{name}/README.md": b"![" * 2000})
    assert (await client.post(f"{API}/{ns}/{name}", json=body(blob, media_type="helm"))).status == 200
    calls = []
    real = ui.read_chart
    monkeypatch.setattr(ui, "read_chart", lambda data: calls.append(1) or real(data))
    for _ in range(3):
        resp = await client.get(f"/ui/packages/{ns}/{name}/1.0.0/helm", headers=HTML)
        assert resp.status == 200 and "README" in await resp.text()
    assert len(calls) == 1


async def test_a_dead_cookie_does_not_show_the_service_account_as_the_signed_in_user(make_client, htpasswd_registry):
    """With --anonymous-read, a tampered or expired cookie reads as the service account: the page must not
    say 'Signed in as' that account, nor put its name in the copy-ready commands."""
    c = await make_client(Settings(upstream=htpasswd_registry.url, registry_username="bob",
                                   registry_password=USERS["bob"], anonymous_read=True))
    c.session.cookie_jar.update_cookies({SESSION_COOKIE: "cnroci1.garbage"}, c.make_url("/"))
    text = await (await c.get("/ui/", headers=HTML)).text()
    assert "Signed in as" not in text and "<strong>bob</strong>" not in text


async def test_the_root_says_it_varies_by_accept(client):
    """/ is the home page for browsers and the discovery page for clients: a cache must key it by Accept, or
    a shared cache hands the discovery page it stored to a browser (and the other way round)."""
    for headers in (HTML, {}):
        resp = await client.get("/", headers=headers)
        assert "accept" in [v.strip().lower() for v in resp.headers.get("Vary", "").split(",")], headers
