"""The web UI's pages as the server sends them: public shells with no data in them, scripts and
styles from this origin only (a strict CSP, the charting library vendored at the version its README
pins), every page a client of the /v1 API (the browser tests in test_browser.py drive them)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from app import auth

UI = Path(__file__).resolve().parents[2] / "app" / "ui"


@pytest.fixture
def keyed_client(embedded_client):
    """The embedded app with keys on (one key exists)."""
    c = embedded_client
    _, token = auth.create_key(c.app.state.db, c.settings, project="p", scope="write")
    c.app.state.auth.forget()
    c.token = token
    return c


def test_pages_need_no_key_and_hold_no_data(keyed_client):
    c = keyed_client
    assert c.get("/v1/models").status_code == 401  # keys are on
    for path in ("/ui", "/ui/models/0123456789abcdef0123456789abcdef"):
        r = c.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
        assert "<script>" not in r.text and " on" + "click=" not in r.text  # no inline script: the CSP forbids it
        assert 'id="signin-form"' in r.text and 'type="password"' in r.text
    page = c.get("/ui/models/0123456789abcdef0123456789abcdef").text
    assert 'data-model-id="0123456789abcdef0123456789abcdef"' in page
    assert "/ui/static/vendor/chart.js/chart.umd.min.js?v=" in page and "/ui/static/js/model.js?v=" in page
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui"


def test_a_strange_model_id_gets_a_404_page_with_it_escaped(embedded_client):
    r = embedded_client.get("/ui/models/%3Cimg%20src=x%20onerror=alert(1)%3E")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "<img src=x" not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text


def test_the_pages_are_not_api_routes(embedded_client):
    paths = embedded_client.app.openapi()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_static_files_are_served_with_their_types(embedded_client):
    c = embedded_client
    for path, ctype in (("/ui/static/js/model.js", "text/javascript"), ("/ui/static/ui.css", "text/css"),
                        ("/ui/static/vendor/chart.js/chart.umd.min.js", "text/javascript"),
                        ("/ui/static/favicon.svg", "image/svg+xml")):
        r = c.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), (path, r.headers)
    assert c.get("/ui/static/../__init__.py").status_code == 404


def test_the_charting_library_is_vendored_as_its_readme_says():
    readme = (UI / "static" / "vendor" / "README.md").read_text()
    row = re.search(r"\| 4\.\d+\.\d+ \| `chart\.js/chart\.umd\.min\.js`.*`([0-9a-f]{64})` \|", readme)
    assert row, "the vendor README's table names the file and its digest"
    lib = UI / "static" / "vendor" / "chart.js" / "chart.umd.min.js"
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == row.group(1)
    version = re.search(r"\| (4\.\d+\.\d+) \|", readme).group(1)
    assert lib.read_text()[:200].find(f"Chart.js v{version}") > 0
    assert "MIT License" in (UI / "static" / "vendor" / "chart.js" / "LICENSE.md").read_text()
    assert "MIT License" in (UI / "static" / "vendor" / "chart.js" / "LICENSE-kurkle-color.md").read_text()


def test_nothing_is_loaded_from_another_origin():
    """No CDN at run time: no template or script of ours names another host to load from."""
    for path in [*(UI / "templates").glob("*.html"), *(UI / "static" / "js").glob("*.js"), UI / "static" / "ui.css"]:
        text = path.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path
        assert not re.search(r"""(fetch|open)\(\s*["'`]https?://""", text), path
        assert "@import" not in text and "url(http" not in text, path


def test_the_key_never_goes_into_a_url_or_storage_that_outlives_the_tab():
    api_js = (UI / "static" / "js" / "api.js").read_text()
    assert "sessionStorage" in api_js and "localStorage" not in api_js and "document.cookie" not in api_js
    every = "".join(p.read_text() for p in (UI / "static" / "js").glob("*.js"))
    assert "localStorage" not in every and "api_key=" not in every and "?key=" not in every
    assert 'setRequestHeader("Authorization", `Bearer ${k}`)' in api_js  # the upload's XMLHttpRequest too
    # the sign-in input has no name: without JavaScript the form cannot send the key anywhere
    base = (UI / "templates" / "base.html").read_text()
    field = re.search(r"<input id=\"signin-key\"[^>]*>", base, re.S).group(0)
    assert " name=" not in field and 'method="post"' in base
