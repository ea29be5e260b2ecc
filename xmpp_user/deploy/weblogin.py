"""A password for the master's web UI: Locust's ``--web-login`` with one account whose password comes from a
Kubernetes Secret (``k8s/overlays/web-ui``), so that whoever reaches port 8089 still cannot start a load test.

Locust's ``--web-login`` only shows a login page; what it checks is left to a plugin. This is that plugin: the user
``locust`` (or $LOCUST_XMPP_WEB_USER) with the password in $LOCUST_XMPP_WEB_PASSWORD, compared in constant time; the
session cookie is signed with a key made at start (a restarted master logs everyone out). A master told
``--web-login`` without a password refuses to start rather than serve an open UI.

``locust-xmpp k8s master`` runs the interactive master through this module when its arguments hold ``--web-login``:

    python -m xmpp_user.deploy.weblogin --master --web-login ...   # Locust's own command line, with the login
"""

from __future__ import annotations

import hmac
import os
import secrets
import sys
from typing import Any

from locust import events

PASSWORD_ENV = "LOCUST_XMPP_WEB_PASSWORD"
USER_ENV = "LOCUST_XMPP_WEB_USER"
DEFAULT_USER = "locust"
ROUTE = "/xmpp/login"
"""Where the login page's form posts its username and password."""


class WebUser:
    """The one account flask-login knows."""

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, name: str) -> None:
        self.name = name

    def get_id(self) -> str:
        return self.name


def check(user: str, password: str, expected_user: str, expected_password: str) -> bool:
    """Whether the login matches, in time that does not depend on where it differs."""
    ok_user = hmac.compare_digest(user.encode(), expected_user.encode())
    ok_password = hmac.compare_digest(password.encode(), expected_password.encode())
    return ok_user and ok_password and bool(expected_password)


@events.init.add_listener
def _on_init(environment: Any, web_ui: Any = None, **_kw: Any) -> None:
    if web_ui is None or not getattr(web_ui, "web_login", False):
        return
    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        sys.stderr.write(f"locust-xmpp: error: --web-login needs the web UI's password in ${PASSWORD_ENV} "
                         f"(k8s/overlays/web-ui takes it from the Secret locust-xmpp-web)\n")  # fmt: skip
        sys.exit(2)
    user = os.environ.get(USER_ENV, "") or DEFAULT_USER
    install(web_ui, user, password)


def install(web_ui: Any, user: str, password: str) -> None:
    """Make ``web_ui``'s login page accept ``user`` with ``password``, and nobody else."""
    from flask import redirect, request, session, url_for
    from flask_login import login_user

    app = web_ui.app
    app.config["SECRET_KEY"] = secrets.token_bytes(32)
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    web_ui.auth_args = {"username_password_callback": ROUTE}

    @web_ui.login_manager.user_loader
    def load_user(user_id: str) -> WebUser | None:
        return WebUser(user_id) if hmac.compare_digest(user_id.encode(), user.encode()) else None

    def login_submit() -> Any:
        given_user = request.form.get("username", "")
        given_password = request.form.get("password", "")
        if check(given_user, given_password, user, password):
            login_user(WebUser(user))
            return redirect(url_for("locust.index"))
        session["auth_error"] = "Wrong username or password"
        return redirect(url_for("locust.login"))

    app.add_url_rule(ROUTE, endpoint="xmpp_login", view_func=login_submit, methods=["POST"])


def main() -> int:
    from locust.main import main as locust_main

    sys.argv[0] = "locust"
    return locust_main()


if __name__ == "__main__":
    sys.exit(main())
