"""A newcomer's path, from outside: `newsletter serve --port P` mails links that lead back to
it, `make run PORT=…` passes the port, the README's sample feed exists and its commands run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.config import ROOT
from tests.smtp_server import free_port

pytestmark = pytest.mark.slow


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_serve_on_another_port_mails_links_to_that_port(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SMTP_", "PUBLIC_URL", "APP_ENV", "LOG_"))
    }
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'newsletter.db'}",
        MAILDIR_PATH=str(tmp_path / "mail"),
        SIGNUP_MIN_ANSWER_MS="0",
        WORKER_POLL_SECONDS="0.1",
    )
    newsletter = [sys.executable, "-m", "app.cli"]
    # The working directory has no .env: the defaults a newcomer gets.
    subprocess.run([*newsletter, "migrate"], env=env, cwd=tmp_path, check=True, capture_output=True)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*newsletter, "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, 20), log.read_text()
        signup = httpx.post(f"{url}/api/v1/subscriptions", json={"email": "new@example.org"})
        assert signup.status_code == 202
        mail = tmp_path / "mail" / "new"
        assert wait_for(lambda: mail.is_dir() and any(mail.iterdir()), 20), log.read_text()
        [message] = [p.read_text() for p in mail.iterdir()]
        links = re.findall(r"http://[^/\s]+/confirm/", message)
        assert links
        assert set(links) == {f"{url}/confirm/"}
    finally:
        server.terminate()
        server.wait(timeout=20)
    # The log is plain text: no terminal colour codes, no uvicorn-only fields.
    text = log.read_text()
    assert "Uvicorn running on" in text
    assert "\x1b" not in text
    assert "color_message" not in text


def test_make_run_passes_the_port() -> None:
    dry = subprocess.run(
        ["make", "-n", "run", "PORT=8100"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "newsletter serve --host 127.0.0.1 --port 8100" in dry.stdout


def test_the_readme_sample_feed_exists_and_its_path_is_the_repos() -> None:
    readme = (ROOT / "README.md").read_text()
    paths = re.findall(r"newsletter import-feed (\S+\.xml)", readme)
    assert paths
    for path in paths:
        assert (ROOT / path).is_file(), path
        assert not path.startswith(("/", "..")), path
