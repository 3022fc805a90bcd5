"""A real SMTP server on 127.0.0.1 that accepts every message and keeps it, for tests.

	with SMTPSink() as sink:
		smtplib.SMTP(sink.host, sink.port).sendmail("a@example.com", ["b@example.com"], raw)
		[mail] = sink.wait_for(1)
		assert mail.message["Subject"] == "Hello"

It runs aiosmtpd's threaded controller. STARTTLS is not advertised (a client that insists on it fails loudly
rather than silently sending in clear). AUTH is off unless `accept_auth=True`, which accepts any credentials
over the plain connection, for senders configured to log in.
"""

from __future__ import annotations

import email.policy
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, Session

from machhelpdesk.testing.lifecycle import StartStop
from machhelpdesk.testing.ports import LOOPBACK, free_port


@dataclass(frozen=True)
class ReceivedMail:
	"""One message as the sink received it."""

	mail_from: str
	rcpt_tos: tuple[str, ...]
	raw: bytes
	message: EmailMessage
	peer: tuple[str, int] | None = None
	login: str | None = None
	received_at: float = field(default_factory=time.time)


class _Handler:
	"""aiosmtpd handler: accept every recipient and store every message."""

	def __init__(self, sink: SMTPSink) -> None:
		self._sink = sink

	async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
		"""aiosmtpd calls this (by this name) once per message after DATA."""
		raw = envelope.original_content or envelope.content or b""
		if isinstance(raw, str):
			raw = raw.encode("utf-8", "surrogateescape")
		message = BytesParser(policy=email.policy.default).parsebytes(raw)
		login = session.auth_data
		self._sink._record(
			ReceivedMail(
				mail_from=envelope.mail_from or "",
				rcpt_tos=tuple(envelope.rcpt_tos),
				raw=bytes(raw),
				message=message,  # type: ignore[arg-type]
				peer=tuple(session.peer[:2]) if session.peer else None,
				login=login.decode() if isinstance(login, bytes) else (login or None),
			)
		)
		return "250 Message accepted for delivery"


def _accept_anyone(
	server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
	"""Authenticator that lets every client in (the sink is a test double for a real relay)."""
	# Keep only the login name: the password is of no use to a test and should not linger.
	return AuthResult(success=True, handled=False, auth_data=getattr(auth_data, "login", None))


class SMTPSink(StartStop):
	"""Threaded aiosmtpd server on a free loopback port collecting every message it receives."""

	def __init__(self, *, host: str = LOOPBACK, port: int | None = None, accept_auth: bool = False) -> None:
		"""Prepare the sink; it listens after `start()` (or `with`). `port=None` picks a free port."""
		self.host = host
		self.port = port or 0
		self._wanted_port = port
		self._accept_auth = accept_auth
		self._messages: list[ReceivedMail] = []
		self._arrived = threading.Condition()
		self._controller: Controller | None = None

	def start(self) -> None:
		"""Start listening; returns when the server answers."""
		if self._controller is not None:
			return
		self.port = self._wanted_port or free_port(self.host)
		options: dict[str, Any] = {
			"hostname": self.host,
			"port": self.port,
			"server_hostname": "sink.localhost",
		}
		if self._accept_auth:
			options.update(authenticator=_accept_anyone, auth_require_tls=False)
		controller = Controller(_Handler(self), **options)
		controller.start()
		self._controller = controller

	def stop(self) -> None:
		"""Stop listening. Received messages stay readable. Safe to call twice."""
		controller, self._controller = self._controller, None
		if controller is not None:
			controller.stop()

	@property
	def running(self) -> bool:
		"""True while the sink listens."""
		return self._controller is not None

	def _record(self, mail: ReceivedMail) -> None:
		with self._arrived:
			self._messages.append(mail)
			self._arrived.notify_all()

	@property
	def messages(self) -> list[ReceivedMail]:
		"""A snapshot of every message received so far, oldest first."""
		with self._arrived:
			return list(self._messages)

	def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedMail]:
		"""Wait until at least `count` messages have arrived and return all of them.

		Raises TimeoutError, saying how many did arrive, if they do not come within `timeout` seconds.
		"""
		deadline = time.monotonic() + timeout
		with self._arrived:
			while len(self._messages) < count:
				remaining = deadline - time.monotonic()
				if remaining <= 0:
					raise TimeoutError(
						f"expected {count} message(s) at {self.host}:{self.port} within {timeout:g} s, "
						f"got {len(self._messages)}"
					)
				self._arrived.wait(remaining)
			return list(self._messages)

	def clear(self) -> None:
		"""Forget every message received so far."""
		with self._arrived:
			self._messages.clear()
