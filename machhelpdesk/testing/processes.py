"""Long-running bench processes for tests and benchmarks: a private Redis job queue, `bench worker`, `bench mh-idle`.

A worker takes the jobs of every site on its Redis queue. So that a test's worker never runs another test's
(or another developer's) jobs, `RedisQueue` starts a Redis of its own on 127.0.0.1, and every process of the
test (the watcher that queues pulls, the worker that runs them) is pointed at it with Frappe's
``FRAPPE_REDIS_QUEUE`` environment variable. Imports no frappe.

	with RedisQueue() as redis, BenchProcess(sites_path, ["worker", "--queue", "long"], env=redis.env) as worker:
		...
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machhelpdesk.testing.lifecycle import StartStop
from machhelpdesk.testing.ports import LOOPBACK, free_port, wait_for_ports

REDIS_SERVER = "redis-server"


class ProcessError(RuntimeError):
	"""A helper process did not start; the message carries the tail of its log."""


class RedisQueue(StartStop):
	"""A throwaway redis-server on 127.0.0.1 (no persistence), for one test's job queue."""

	def __init__(self, binary: str = REDIS_SERVER) -> None:
		self.binary = binary
		self.port = 0
		self.process: subprocess.Popen | None = None
		self.directory: str | None = None

	@property
	def url(self) -> str:
		return f"redis://{LOOPBACK}:{self.port}"

	@property
	def env(self) -> dict[str, str]:
		"""Environment that points Frappe's job queue (enqueue and workers) at this server."""
		return {"FRAPPE_REDIS_QUEUE": self.url}

	def start(self) -> None:
		if shutil.which(self.binary) is None:
			raise ProcessError(f"{self.binary} not found: install the Debian package redis-server")
		self.directory = tempfile.mkdtemp(prefix="mh-redis-")
		self.port = free_port()
		args = [self.binary, "--bind", LOOPBACK, "--port", str(self.port), "--save", "", "--appendonly", "no"]
		args += ["--dir", self.directory, "--logfile", os.path.join(self.directory, "redis.log")]
		self.process = subprocess.Popen(
			args,
			stdin=subprocess.DEVNULL,
			stdout=subprocess.DEVNULL,
			stderr=subprocess.DEVNULL,
			start_new_session=True,
		)
		if not wait_for_ports(
			LOOPBACK, [self.port], timeout=15, still_alive=lambda: self.process.poll() is None
		):
			self.stop()
			raise ProcessError(f"redis-server did not start on {LOOPBACK}:{self.port}")

	def stop(self) -> None:
		process, self.process = self.process, None
		if process is not None:
			stop_process_group(process)
		if self.directory:
			shutil.rmtree(self.directory, ignore_errors=True)
			self.directory = None


class BenchProcess(StartStop):
	"""``bench ARGS`` (``python -m frappe.utils.bench_helper frappe ARGS`` in the sites folder), in the background.

	Its output goes to a log file (`log_text()`); `stop()` sends SIGTERM to its process group, then SIGKILL.
	"""

	def __init__(
		self,
		sites_path: str,
		args: list[str],
		*,
		env: dict[str, str] | None = None,
		python: str | None = None,
		name: str = "bench",
	) -> None:
		self.sites_path = os.path.abspath(sites_path)
		self.args = list(args)
		self.env = dict(env or {})
		self.python = python or sys.executable
		self.process: subprocess.Popen | None = None
		self.log = tempfile.NamedTemporaryFile(prefix=f"mh-{name}-", suffix=".log", delete=False)

	@property
	def pid(self) -> int | None:
		return self.process.pid if self.process else None

	@property
	def running(self) -> bool:
		return self.process is not None and self.process.poll() is None

	def start(self) -> None:
		env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
		self.process = subprocess.Popen(
			[self.python, "-m", "frappe.utils.bench_helper", "frappe", *self.args],
			cwd=self.sites_path,
			env=env,
			stdin=subprocess.DEVNULL,
			stdout=self.log,
			stderr=subprocess.STDOUT,
			start_new_session=True,
		)

	def wait_for_log(self, text: str, timeout: float = 60.0, after: int = 0) -> bool:
		"""Wait until `text` appears in the output (after character `after`); False on timeout or exit."""
		deadline = time.monotonic() + timeout
		while time.monotonic() < deadline:
			if text in self.log_text()[after:]:
				return True
			if not self.running:
				return text in self.log_text()[after:]
			time.sleep(0.1)
		return False

	def stop(self, timeout: float = 30.0) -> int | None:
		"""SIGTERM (then SIGKILL after `timeout`); returns the exit status."""
		process, self.process = self.process, None
		if process is None:
			return None
		return stop_process_group(process, timeout)

	def log_text(self) -> str:
		self.log.flush()
		return Path(self.log.name).read_text(errors="replace")

	def log_tail(self, lines: int = 60) -> str:
		return "\n".join(self.log_text().splitlines()[-lines:])


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> int | None:
	"""SIGTERM the process's group (it was started in a session of its own), then SIGKILL; wait for it."""
	for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
		try:
			os.killpg(process.pid, sig)
		except ProcessLookupError:
			break
		try:
			return process.wait(grace)
		except subprocess.TimeoutExpired:
			continue
	try:
		return process.wait(5)
	except subprocess.TimeoutExpired:
		return None
