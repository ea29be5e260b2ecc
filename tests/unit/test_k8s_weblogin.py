"""The web UI's login (``xmpp_user/deploy/weblogin.py``, opened by ``k8s/overlays/web-ui``): without it every page
and action sends to the login page, a wrong password is refused, the right one opens the UI; a master told
``--web-login`` without a password does not start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from locust import User, task
from locust.env import Environment

from xmpp_user.deploy import weblogin

REPO = Path(__file__).resolve().parents[2]


class IdleUser(User):
    @task
    def idle(self) -> None:
        pass


def _web_ui(monkeypatch: pytest.MonkeyPatch, password: str = "right") -> object:
    monkeypatch.setattr("sys.argv", ["locust"])  # Locust's pages parse the command line for their form
    environment = Environment(user_classes=[IdleUser])
    environment.create_local_runner()
    web_ui = environment.create_web_ui("127.0.0.1", 0, web_login=True)
    weblogin.install(web_ui, "locust", password)
    return web_ui


def test_nothing_is_served_or_started_before_the_login(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _web_ui(monkeypatch).app.test_client()  # type: ignore[attr-defined]
    for method, path in (("get", "/"), ("post", "/swarm"), ("get", "/stats/requests"), ("post", "/stop")):
        response = getattr(client, method)(path, data={"user_count": "1", "spawn_rate": "1"})
        assert response.status_code == 302 and "/login" in response.headers["Location"], (method, path)
    page = client.get("/login")
    assert page.status_code == 200 and weblogin.ROUTE.encode() in page.data


def test_a_wrong_login_is_refused_and_the_right_one_opens_the_ui(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _web_ui(monkeypatch).app.test_client()  # type: ignore[attr-defined]
    for user, password in (("locust", "wrong"), ("admin", "right"), ("locust", ""), ("", "")):
        response = client.post(weblogin.ROUTE, data={"username": user, "password": password})
        assert response.headers["Location"].endswith("/login"), (user, password)
        assert client.get("/").status_code == 302
    response = client.post(weblogin.ROUTE, data={"username": "locust", "password": "right"})
    assert response.status_code == 302 and not response.headers["Location"].endswith("/login")
    assert client.get("/").status_code == 200


def test_the_check_needs_a_password() -> None:
    assert weblogin.check("locust", "pw", "locust", "pw")
    assert not weblogin.check("locust", "", "locust", "")
    assert not weblogin.check("locust", "pw", "other", "pw")


def test_a_master_with_web_login_and_no_password_does_not_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != weblogin.PASSWORD_ENV}
    result = subprocess.run([sys.executable, "-m", "xmpp_user.deploy.weblogin", "-f",
                             str(REPO / "locustfiles" / "quickstart.py"), "--web-login", "--web-host", "127.0.0.1",
                             "--web-port", "0", "--host", "ws://127.0.0.1:9/xmpp-websocket"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert result.returncode == 2
    assert f"--web-login needs the web UI's password in ${weblogin.PASSWORD_ENV}" in result.stderr
