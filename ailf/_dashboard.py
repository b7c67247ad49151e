"""``ailf dashboard``: a namespace in a web page, with its dead letters to redrive or purge.

A stdlib HTTP server in a thread of its own serves one page (``dashboard.html``: plain
HTML, CSS and script, no CDN, charts drawn as inline SVG) and a small JSON API. A second
thread samples the namespace from Redis every second (:mod:`ailf._sampling`, what
``ailf status --json`` reads) and keeps the last minutes for the charts. Showing,
redriving and purging dead letters are the functions ``ailf dlq`` runs
(:mod:`ailf._admin`).

Redrive and purge change what Redis holds, so the server guards them:

- it listens on loopback unless told otherwise, and refuses a non-loopback address
  without a token (``--token``: then every request needs it, as ``?token=`` or an
  ``Authorization: Bearer`` header);
- without a token it answers only requests whose ``Host`` is a loopback name (a page
  elsewhere cannot reach it by DNS rebinding), and changes things only on a POST with the
  ``X-Ailf-Dashboard`` header and a JSON body (which a cross-site form cannot send).

docs/observability.md says how to put it behind a proxy with real authentication.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from ailf import _admin as admin
from ailf._sampling import History, NamespaceView, sample
from ailf.clients._async_client import AsyncRedisClient
from ailf.config import RedisConfig
from ailf.errors import AilfError, ConfigError
from ailf.runtime._keys import check_name

__all__ = ["Dashboard"]

log = logging.getLogger("ailf.dashboard")

#: Seconds between two samples of the namespace.
SAMPLE_INTERVAL = 1.0
#: The header a request that changes something must carry (see the module docstring).
ACTION_HEADER = "X-Ailf-Dashboard"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The dashboard of ``namespace`` on ``host:port`` (port 0: a free one).

    ``with Dashboard(...) as dashboard:`` serves until the block ends; ``dashboard.url``
    is the page's address. ConfigError for a non-loopback ``host`` without ``token``.
    """

    def __init__(
        self,
        config: RedisConfig,
        namespace: str,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
    ) -> None:
        check_name("namespace", namespace)
        if not _is_loopback(host) and not token:
            raise ConfigError(
                f"the dashboard can redrive and purge dead letters: listening on {host} needs"
                " --token TOKEN (or AILF_DASHBOARD_TOKEN), or a proxy that authenticates"
                " in front of a loopback address (see docs/observability.md)"
            )
        self.config = config
        self.namespace = namespace
        self.token = token
        self._history = History()
        self._view: NamespaceView | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        bound_host, bound_port = self._server.server_address[:2]
        self.host = str(bound_host)
        self.port = int(bound_port)
        # Daemons: a Ctrl-C that lands while they start or stop must not leave the
        # process waiting for them at exit.
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever, name="ailf-dashboard-http", daemon=True
            ),
            threading.Thread(
                target=self._sample_forever, name="ailf-dashboard-sampler", daemon=True
            ),
        ]

    @property
    def url(self) -> str:
        shown = "localhost" if self.host in ("127.0.0.1", "::1") else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{shown}:{self.port}/{query}"

    def __enter__(self) -> Dashboard:
        try:
            for thread in self._threads:
                thread.start()
        except BaseException:  # Ctrl-C while starting: stop what started
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and sampling (what of it started), and wait for both."""
        self._stop.set()
        http, _ = self._threads
        if http.ident is not None:  # shutdown() waits for a serve_forever() that runs
            self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join()

    def serve_forever(self) -> None:
        """Serve until Ctrl-C."""
        try:
            with self:
                while not self._stop.wait(3600):
                    pass
        except KeyboardInterrupt:
            pass

    # -- sampling ---------------------------------------------------------------------

    def _sample_forever(self) -> None:
        trio.run(self._sample_loop)

    async def _sample_loop(self) -> None:
        while not self._stop.is_set():
            try:
                async with AsyncRedisClient(self.config) as client:
                    while not self._stop.is_set():
                        view = await sample(client, self.namespace, self._history)
                        with self._lock:
                            self._view, self._error = view, None
                        await trio.sleep(SAMPLE_INTERVAL)
            except AilfError as exc:  # Redis away: say so on the page, try again
                with self._lock:
                    self._error = f"{type(exc).__name__}: {exc}"
                await trio.sleep(SAMPLE_INTERVAL)

    def status(self) -> dict[str, Any]:
        """What the page polls: the namespace now, the rates of the last minutes."""
        with self._lock:
            view, error = self._view, self._error
            series = (
                {agent.name: self._history.series(agent.name) for agent in view.agents}
                if view is not None
                else {}
            )
        return {
            "namespace": self.namespace,
            "redis": self.config.url,
            "now": time.time(),
            "error": error,
            "view": view.to_json() if view is not None else None,
            "series": series,
        }

    # -- dead letters -----------------------------------------------------------------

    def dead_letters(self, agent: str) -> list[dict[str, Any]]:
        letters = admin.dead_letters(self.config, self.namespace, agent)
        return [admin.dead_letter_json(letter) for letter in letters]

    def redrive(self, agent: str, ids: list[str]) -> dict[str, Any]:
        return {"moved": admin.redrive(self.config, self.namespace, agent, ids)}

    def purge(self, agent: str, ids: list[str]) -> dict[str, Any]:
        return {"deleted": admin.purge(self.config, self.namespace, agent, ids)}


class _Refused(Exception):
    def __init__(self, status: HTTPStatus, why: str) -> None:
        super().__init__(why)
        self.status = status


def _handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    page = files("ailf").joinpath("dashboard.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        server_version = "ailf-dashboard"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _check(self) -> dict[str, list[str]]:
            """The query; _Refused unless the Host and the token are right."""
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
            if not dashboard.token and not _is_loopback(host):
                raise _Refused(HTTPStatus.FORBIDDEN, f"not served to host {host!r}")
            query = parse_qs(urlsplit(self.path).query)
            if dashboard.token:
                given = query.get("token", [""])[0]
                bearer = self.headers.get("Authorization", "")
                if bearer.startswith("Bearer "):
                    given = bearer[len("Bearer ") :]
                if not hmac.compare_digest(given.encode(), dashboard.token.encode()):
                    raise _Refused(HTTPStatus.UNAUTHORIZED, "a token is needed: ?token=...")
            return query

        def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Content-Security-Policy", "default-src 'self' 'unsafe-inline'")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
            self._send(status, json.dumps(value, default=str).encode(), "application/json")

        def _answer(self, work: Any) -> None:
            try:
                self._json(work())
            except _Refused as refused:
                self._json({"error": str(refused)}, refused.status)
            except (AilfError, ValueError, KeyError, TypeError) as exc:
                self._json({"error": f"{type(exc).__name__}: {exc}"}, HTTPStatus.BAD_REQUEST)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path

            def work() -> Any:
                query = self._check()
                if path == "/api/status":
                    return dashboard.status()
                if path == "/api/dead-letters":
                    return dashboard.dead_letters(query["agent"][0])
                raise _Refused(HTTPStatus.NOT_FOUND, f"no such page: {path}")

            if path == "/":
                try:
                    self._check()
                except _Refused as refused:
                    self._send(refused.status, str(refused).encode(), "text/plain")
                    return
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
                return
            self._answer(work)

        def do_POST(self) -> None:
            path = urlsplit(self.path).path

            def work() -> Any:
                self._check()
                if self.headers.get(ACTION_HEADER) != "1":
                    raise _Refused(HTTPStatus.FORBIDDEN, f"missing header {ACTION_HEADER}: 1")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                agent, ids = str(body["agent"]), [str(i) for i in body.get("ids", [])]
                if path == "/api/redrive":
                    return dashboard.redrive(agent, ids)
                if path == "/api/purge":
                    return dashboard.purge(agent, ids)
                raise _Refused(HTTPStatus.NOT_FOUND, f"no such action: {path}")

            self._answer(work)

    return Handler
