"""OAuth2 for the test Dovecot: its ``oauth2`` passdb, and a small token introspection server for tier 1.

Dovecot 2.3 validates an XOAUTH2 / OAUTHBEARER bearer token by asking an introspection endpoint (RFC 7662)
over HTTP. In tier 2 that endpoint is Frappe's own (``frappe.integrations.oauth2.introspect_token`` on the
test site, served by gunicorn on 127.0.0.1); in tier 1, where there is no Frappe, it is
`IntrospectionServer` below: a real HTTP server on 127.0.0.1 that knows a few tokens.

	with IntrospectionServer({"token-1": "alice@example.test"}) as provider:
		extra = dovecot_oauth2_config(provider.url, directory)
		with Dovecot(users={"alice@example.test": "unused"}, extra_config=extra) as server:
			...  # log in as alice@example.test with the access token "token-1"

Imports no frappe.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from machhelpdesk.testing.lifecycle import StartStop
from machhelpdesk.testing.ports import LOOPBACK


def dovecot_oauth2_config(
	introspection_url: str,
	directory: str | os.PathLike,
	*,
	username_attribute: str = "email",
	active_attribute: str = "active",
	active_value: str = "true",
) -> str:
	"""Write the oauth2 passdb's settings file into `directory` and return the lines to append to dovecot.conf.

	Tokens are introspected with a POST of ``token=...`` on every login (no cache), so a revoked token is
	refused at once. The user name the provider returns in `username_attribute` must be the IMAP user name.
	"""
	path = Path(directory) / "dovecot-oauth2.conf.ext"
	path.write_text(
		f"introspection_url = {introspection_url}\n"
		f"introspection_mode = post\n"
		f"force_introspection = yes\n"
		f"username_attribute = {username_attribute}\n"
		f"active_attribute = {active_attribute}\n"
		f"active_value = {active_value}\n"
		f"timeout_msecs = 10000\n"
	)
	# Dovecot's auth process runs as an unprivileged user and must read the file.
	os.chmod(path, 0o644)
	os.chmod(directory, 0o755)  # noqa: S103 - test data only
	return f"""
auth_mechanisms = plain login xoauth2 oauthbearer
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {path}
}}
"""


class IntrospectionServer(StartStop):
	"""An RFC 7662 token introspection endpoint on 127.0.0.1 that knows the tokens in `tokens` (token -> user).

	It answers ``{"active": true, "email": user, "scope": ...}`` for a known token and ``{"active": false}``
	otherwise, and remembers every token it was asked about (`asked`).
	"""

	def __init__(self, tokens: dict[str, str] | None = None, scope: str = "openid email") -> None:
		self.tokens: dict[str, str] = dict(tokens or {})
		self.scope = scope
		self.asked: list[str] = []
		self._server: ThreadingHTTPServer | None = None
		self._thread: threading.Thread | None = None

	@property
	def url(self) -> str:
		if self._server is None:
			raise RuntimeError("the introspection server is not running")
		host, port = self._server.server_address[:2]
		return f"http://{host}:{port}/introspect"

	def start(self) -> None:
		owner = self

		class Handler(BaseHTTPRequestHandler):
			def do_POST(self) -> None:
				length = int(self.headers.get("Content-Length") or 0)
				form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
				token = (form.get("token") or [""])[0]
				owner.asked.append(token)
				user = owner.tokens.get(token)
				answer = {"active": True, "email": user, "scope": owner.scope} if user else {"active": False}
				body = json.dumps(answer).encode()
				self.send_response(200)
				self.send_header("Content-Type", "application/json")
				self.send_header("Content-Length", str(len(body)))
				self.end_headers()
				self.wfile.write(body)

			def log_message(self, format: str, *args: object) -> None:
				pass

		self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
		self._server.daemon_threads = True
		self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
		self._thread.start()

	def stop(self) -> None:
		server, self._server = self._server, None
		if server is not None:
			server.shutdown()
			server.server_close()
		if self._thread is not None:
			self._thread.join(timeout=5)
			self._thread = None
