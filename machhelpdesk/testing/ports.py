"""Free TCP ports on the loopback interface, and a wait for a listener to come up."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_ports(count: int = 1, host: str = LOOPBACK) -> list[int]:
	"""Return `count` distinct TCP ports that were free on `host` a moment ago.

	All sockets are held open until every port is chosen, so the ports differ from each other.
	Another process may still take one before the caller binds it; the window is small on a test machine.
	"""
	sockets: list[socket.socket] = []
	try:
		for _ in range(count):
			sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
			sock.bind((host, 0))
			sockets.append(sock)
		return [sock.getsockname()[1] for sock in sockets]
	finally:
		for sock in sockets:
			sock.close()


def free_port(host: str = LOOPBACK) -> int:
	"""Return one TCP port that was free on `host` a moment ago."""
	return free_ports(1, host)[0]


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
	"""True if a TCP connection to `host:port` succeeds now."""
	try:
		with socket.create_connection((host, port), timeout=timeout):
			return True
	except OSError:
		return False


def wait_for_ports(
	host: str,
	ports: list[int],
	timeout: float = 10.0,
	still_alive: Callable[[], bool] | None = None,
) -> bool:
	"""Wait until every port in `ports` accepts connections on `host`.

	Returns False on timeout, or as soon as `still_alive()` says the server process has gone.
	"""
	deadline = time.monotonic() + timeout
	pending = list(ports)
	while pending:
		if still_alive is not None and not still_alive():
			return False
		pending = [port for port in pending if not port_accepts(host, port)]
		if not pending:
			return True
		if time.monotonic() > deadline:
			return False
		time.sleep(0.05)
	return True
