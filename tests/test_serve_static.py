"""The web page's folder (`serve --static DIR`, as Kyutai's server takes it): ours by default,
another client's built folder in its place, or none; its files at `/`, after the API routes,
never a file from outside the folder; a bad DIR is a one-line error before anything loads."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from moshi_mlx.serve.app import build_app
from moshi_mlx.serve.services import OUR_PAGE, ServeOptions, Services

REPO = Path(__file__).resolve().parents[1]
JAVASCRIPT = ("text/javascript", "application/javascript")  # (as the system's mime.types says)


def fetch(page: Path | None, *paths: str, key: str | None = None) -> list[tuple[int, bytes, str]]:
    """(status, body, content type) of GET `paths` on the app serving `page` (no models), with
    `--api-key key`."""

    async def main():
        services = Services(thread=None, options=ServeOptions(page=page, api_key=key))
        async with TestClient(TestServer(build_app(services))) as client:
            answers = []
            for path in paths:
                async with client.get(URL(path, encoded=True)) as r:
                    answers.append((r.status, await r.read(), r.content_type))
            return answers

    return asyncio.run(main())


@pytest.fixture
def web(tmp_path: Path) -> Path:
    """A client's built folder, beside a secret it must not serve (reached by `..` or a link)."""
    (tmp_path / "secret.txt").write_text("secret")
    folder = tmp_path / "web"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text("<p>their page</p>")
    (folder / "assets" / "app.js").write_text("console.log(1)")
    (folder / "assets" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    return folder


def test_another_client_replaces_our_page(web: Path):
    (index, js, info, ours) = fetch(web, "/", "/assets/app.js", "/api/info", "/app.js")
    assert index[:2] == (200, b"<p>their page</p>")
    assert js[:2] == (200, b"console.log(1)") and js[2] in JAVASCRIPT
    assert info[0] == 200 and info[2] == "application/json"  # the API, unchanged
    assert ours[0] == 404


def test_no_file_from_outside_the_folder(web: Path):
    for path in (
        "/assets/leak.txt",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/..%2f..%2fsecret.txt",
    ):
        ((status, body, _),) = fetch(web, path)
        assert status in (403, 404) and b"secret" not in body, path


def test_our_page_by_default_and_none_with_static_none():
    (index, app_js) = fetch(OUR_PAGE, "/", "/app.js")
    assert index[:2] == (200, (OUR_PAGE / "index.html").read_bytes())
    assert app_js[0] == 200 and app_js[2] in JAVASCRIPT
    (index, info) = fetch(None, "/", "/api/info")
    assert index[0] == 404 and info[0] == 200


def test_the_page_needs_no_key_the_api_does(web: Path):
    # a browser loads the page's scripts without the key the page's URL carries (`auth_id`)
    for page, files in (
        (OUR_PAGE, ["/app.js", "/style.css", "/worklet.js"]),
        (web, ["/assets/app.js"]),
    ):
        answers = fetch(page, "/?auth_id=k", *files, "/api/info", "/api/info?auth_id=k", key="k")
        assert [status for status, _, _ in answers] == [200] * (len(files) + 1) + [401, 200]
    ((status, body, _),) = fetch(web, "/assets/leak.txt", key="k")
    assert status in (403, 404) and b"secret" not in body


@pytest.mark.parametrize("case", ["missing", "no index"])
def test_a_bad_static_folder_is_one_line(tmp_path: Path, case: str):
    folder = tmp_path / "dist"
    if case == "no index":
        folder.mkdir()
        (folder / "app.js").write_text("")
    r = subprocess.run(
        [sys.executable, "-m", "moshi_mlx", "serve", "--static", str(folder), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"--static {folder}" in lines[0]
    assert ("no such folder" if case == "missing" else "no index.html") in lines[0]
