"""The bench's site served by gunicorn on 127.0.0.1, for HTTP and browser tests.

``bench serve`` binds 0.0.0.0; this binds loopback only. Every request reaches one site whatever its
Host header, and /assets and /files are served too (gunicorn alone serves neither). This module
imports no frappe; the WSGI entry point gunicorn loads is :mod:`machhelpdesk.testing.wsgi`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from machhelpdesk.testing.lifecycle import StartStop
from machhelpdesk.testing.ports import LOOPBACK, free_port

CSRF_TOKEN = re.compile(r'frappe\.csrf_token = "([^"]+)"')


class WebServerError(RuntimeError):
	"""gunicorn did not come up; the message carries the tail of its log."""


class FrappeWebServer(StartStop):
	"""Context manager: ``with FrappeWebServer(sites_path, "test_site") as web: web.url("/login")``."""

	def __init__(self, sites_path: str, site: str, *, python: str | None = None, workers: int = 2):
		self.sites_path = os.path.abspath(sites_path)
		self.site = site
		self.python = python or sys.executable
		self.workers = workers
		self.port = 0
		self.process: subprocess.Popen | None = None
		self.log = tempfile.NamedTemporaryFile(prefix="mh-gunicorn-", suffix=".log", delete=False)

	@property
	def base_url(self) -> str:
		return f"http://{LOOPBACK}:{self.port}"

	def url(self, path: str) -> str:
		return self.base_url + path

	def login(self, user: str, password: str, *, csrf_from: str | None = None):
		"""Return a ``requests`` session logged in as ``user``. With ``csrf_from`` (a path), the session
		also sends the CSRF token that page hands its scripts, as a browser's requests would."""
		import requests  # a dependency of Frappe: only the bench's tests log in

		session = requests.Session()
		response = session.post(
			self.url("/api/method/login"), data={"usr": user, "pwd": password}, timeout=30
		)
		if response.status_code != 200:
			raise AssertionError(f"login as {user}: {response.status_code} {response.text[:300]}")
		if csrf_from:
			page = session.get(self.url(csrf_from), timeout=30)
			token = CSRF_TOKEN.search(page.text)
			if token:
				session.headers["X-Frappe-CSRF-Token"] = token.group(1)
		return session

	def start(self, timeout: float = 60) -> None:
		self.port = free_port()
		env = dict(os.environ, MH_WSGI_SITE=self.site, MH_WSGI_SITES_PATH=self.sites_path)
		args = [
			self.python, "-m", "gunicorn",
			"-b", f"{LOOPBACK}:{self.port}",
			"-w", str(self.workers),
			"-t", "120",
			"--preload",
			"machhelpdesk.testing.wsgi:application",
		]  # fmt: skip
		self.process = subprocess.Popen(
			args,
			cwd=self.sites_path,
			env=env,
			stdout=self.log,
			stderr=subprocess.STDOUT,
			start_new_session=True,
		)
		deadline = time.monotonic() + timeout
		while time.monotonic() < deadline:
			if self.process.poll() is not None:
				raise WebServerError(f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}")
			try:
				with urllib.request.urlopen(self.url("/api/method/ping"), timeout=5) as response:  # noqa: S310
					if response.status == 200:
						return
			except OSError:
				time.sleep(0.3)
		self.stop()
		raise WebServerError(f"gunicorn did not answer within {timeout} s:\n{self.log_tail()}")

	def stop(self) -> None:
		if self.process and self.process.poll() is None:
			os.killpg(self.process.pid, signal.SIGTERM)
			try:
				self.process.wait(10)
			except subprocess.TimeoutExpired:
				os.killpg(self.process.pid, signal.SIGKILL)
				self.process.wait(10)
		self.process = None

	def log_tail(self, lines: int = 40) -> str:
		self.log.flush()
		return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])
