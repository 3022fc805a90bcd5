"""IMAP transport: one logged-in imapclient session per mailbox pull.

The session talks UIDs only (never sequence numbers), reads with ``BODY.PEEK[]`` so nothing is marked
``\\Seen``, verifies TLS certificates unless told otherwise, and turns every socket, TLS and protocol error
into one of a few exception classes whose text an administrator can act on. Passwords never appear in them.

	settings = IMAPSettings("imap.example.com", 993, "support@example.com", password)
	with MailboxSession(settings) as session:
		state = session.select("INBOX")
		for message in session.fetch(session.uids_since(last_uid)):
			...

An OAuth2 mailbox (Microsoft 365, Google Workspace) logs in with an access token instead of a password
(SASL XOAUTH2, or OAUTHBEARER where the server offers it): ``IMAPSettings(..., password="", access_token=token)``.

Waiting for new mail (IMAP IDLE, RFC 2177, with NOOP polling for servers without it):

	with MailboxSession(settings) as session:
		session.select("INBOX", readonly=True)
		for news in session.watch(renew_seconds=25 * 60):
			if news.new_mail:
				...  # queue a pull; the watcher never reads messages itself
"""

from __future__ import annotations

import imaplib
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from functools import partial
from types import TracebackType
from typing import TypeVar

import imapclient
from imapclient.exceptions import LoginError

T = TypeVar("T")

PORT_HINT = "IMAP uses port 993 for SSL/TLS and port 143 for STARTTLS or no encryption"
POP3_PORTS = {110: "POP3", 995: "POP3 over SSL/TLS"}
SELF_SIGNED_HINT = (
	"turn on 'Allow self-signed certificate' only for private servers you control, "
	"or give the server a certificate from a public certificate authority"
)

# One FETCH per batch of this many UIDs for the small items (sizes, Message-IDs).
SMALL_ITEM_BATCH = 500
# RFC 2177: a client should re-issue IDLE at least every 29 minutes, or the server may log it out.
IDLE_RENEW_SECONDS = 25 * 60.0
# Servers without IDLE are asked with NOOP this often.
POLL_SECONDS = 60.0
OAUTH_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")
FETCH_ITEMS = ["BODY.PEEK[]", "RFC822.SIZE", "FLAGS", "INTERNALDATE"]
HEADER_ITEMS = ["BODY.PEEK[HEADER]", "RFC822.SIZE", "FLAGS", "INTERNALDATE"]
# A message larger than this is not downloaded: its header is, so the ledger can say what it was.
# More than any mail system sends (Exchange Online allows 150 MB); a site may lower it.
MAX_MESSAGE_BYTES = 200 * 1024 * 1024
# At most this many bytes of messages are asked for in one FETCH, so memory stays flat.
FETCH_BATCH_BYTES = 64 * 1024 * 1024
MESSAGE_ID_ITEM = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"

# TLS errors that mean "this port does not speak TLS at all", rather than "TLS went wrong".
_NOT_TLS_REASONS = {
	"WRONG_VERSION_NUMBER",
	"RECORD_LAYER_FAILURE",
	"UNKNOWN_PROTOCOL",
	"HTTP_REQUEST",
	"PACKET_LENGTH_TOO_LONG",
	"UNSUPPORTED_PROTOCOL",
}
_BYTES_REPR = re.compile(r"""^b(['"])(.*)\1$""", re.DOTALL)
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_FOLDED = re.compile(rb"\r?\n[ \t]+")
# Untagged responses that matter while waiting: "* 3 EXISTS", "* 1 RECENT", "* 2 EXPUNGE", "* BYE ...".
_COUNTED_RESPONSE = re.compile(rb"^\* (\d+) (EXISTS|RECENT|EXPUNGE)\b", re.IGNORECASE)
_STATUS_RESPONSE = re.compile(rb"^\* (BYE|OK|NO|BAD)\b ?(.*)$", re.IGNORECASE | re.DOTALL)


class Encryption(str, Enum):
	"""How the connection is protected. The values are what the account form shows."""

	SSL = "SSL/TLS"
	STARTTLS = "STARTTLS"
	NONE = "None"

	def __str__(self) -> str:
		return self.value

	@classmethod
	def parse(cls, value: str | Encryption | None) -> Encryption:
		"""Read a form value, forgiving case and the usual aliases ("SSL", "TLS", "plain", empty)."""
		if isinstance(value, Encryption):
			return value
		text = (value or "").strip().casefold()
		aliases = {
			"ssl/tls": cls.SSL,
			"ssl": cls.SSL,
			"tls": cls.SSL,
			"imaps": cls.SSL,
			"starttls": cls.STARTTLS,
			"none": cls.NONE,
			"plain": cls.NONE,
			"": cls.NONE,
		}
		try:
			return aliases[text]
		except KeyError:
			raise IMAPConnectError(
				f"Unknown encryption {value!r}: choose SSL/TLS, STARTTLS or None."
			) from None


@dataclass
class IMAPSettings:
	"""Everything needed to log in to one mailbox."""

	host: str
	port: int
	username: str
	password: str
	encryption: str = Encryption.SSL.value
	# When True, skip certificate verification (private servers). By default the chain and host name are checked.
	allow_self_signed: bool = False
	# An extra trust anchor (PEM file) on top of the system's certificate authorities.
	ca_file: str | None = None
	# Connect and read timeout, in seconds.
	timeout: float = 30.0
	# OAuth2: when set, log in with this bearer token (XOAUTH2 / OAUTHBEARER) instead of the password.
	access_token: str = ""
	# "XOAUTH2" or "OAUTHBEARER" to insist on one; empty: OAUTHBEARER where offered, else XOAUTH2.
	oauth_mechanism: str = ""

	@property
	def address(self) -> str:
		"""``host:port``, for messages."""
		return f"{self.host}:{self.port}"


class IMAPError(Exception):
	"""Base of every transport error; str() is a plain-words message an admin can act on."""


class IMAPConnectError(IMAPError):
	"""The server could not be reached, stopped answering, or is not an IMAP server on that port."""


class IMAPTLSError(IMAPError):
	"""TLS failed: untrusted certificate, host name mismatch, failed handshake, or STARTTLS not offered."""


class IMAPAuthError(IMAPError):
	"""The server rejected the user name or password (or refuses passwords on this connection)."""


class IMAPTokenError(IMAPAuthError):
	"""The server rejected an OAuth2 access token: expired, revoked, for another user, or without the mail scope."""


class IMAPFolderError(IMAPError):
	"""A folder does not exist or cannot be opened or created."""


class IMAPCommandError(IMAPError):
	"""The server refused a command on an otherwise healthy connection."""


class IMAPNoIdleError(IMAPCommandError):
	"""The server does not offer IDLE (RFC 2177); poll it with NOOP instead (`watch` does)."""


@dataclass(frozen=True)
class FolderState:
	"""What SELECT reports about a folder."""

	uidvalidity: int
	uidnext: int | None
	exists: int


@dataclass
class FetchedMessage:
	"""One message as read from the server, untouched.

	When ``refused`` says why (too large, or the server would not send it), ``raw`` holds only what
	could be read: the header block, or nothing.
	"""

	uid: int
	size: int
	raw: bytes
	flags: tuple[bytes, ...]
	internal_date: datetime | None
	refused: str = ""


@dataclass(frozen=True)
class MailboxNews:
	"""What the server reported on its own about the open folder (while idling, or in answer to NOOP).

	`new_mail` is the only thing a watcher acts on: an EXISTS response (servers send it when messages
	arrive; expunges are reported with EXPUNGE instead), or a RECENT count that grew.
	"""

	exists: int | None = None
	recent: int | None = None
	expunged: int = 0
	new_mail: bool = False
	lines: tuple[bytes, ...] = ()

	def __bool__(self) -> bool:
		return bool(self.lines)


@dataclass
class ConnectionReport:
	"""Outcome of `test_connection`: `ok`, the folders seen, and a message for the account form."""

	ok: bool
	folders: list[str] = field(default_factory=list)
	message: str = ""
	capabilities: list[str] = field(default_factory=list)


def make_ssl_context(settings: IMAPSettings) -> ssl.SSLContext:
	"""The TLS context for `settings`: verifying (system CAs plus `ca_file`) unless `allow_self_signed`."""
	context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
	context.minimum_version = ssl.TLSVersion.TLSv1_2
	if settings.allow_self_signed:
		context.check_hostname = False
		context.verify_mode = ssl.CERT_NONE
	elif settings.ca_file:
		try:
			context.load_verify_locations(cafile=settings.ca_file)
		except (OSError, ssl.SSLError) as exc:
			raise IMAPTLSError(f"Could not read the certificate file {settings.ca_file!r}: {exc}.") from exc
	return context


def _server_text(exc: BaseException, password: str = "") -> str:
	"""The server's words from an imaplib/imapclient error, decoded, shortened, without the password."""
	value = exc.args[0] if exc.args else ""
	if isinstance(value, bytes):
		text = value.decode("utf-8", "replace")
	else:
		text = str(value)
		found = _BYTES_REPR.match(text)
		if found:
			text = found.group(2)
	text = " ".join(text.split())
	if password and len(password) >= 3:
		text = text.replace(password, "***")
	return text[:300] if len(text) > 300 else text


def _tls_reason(exc: ssl.SSLError) -> str:
	return str(getattr(exc, "reason", None) or getattr(exc, "verify_message", None) or exc.strerror or exc)


class MailboxSession:
	"""One logged-in IMAP connection. Use as a context manager; logs out on exit, even after errors."""

	def __init__(self, settings: IMAPSettings) -> None:
		"""Keep the settings; nothing is sent until `connect()` (or `with`)."""
		self.settings = settings
		self._client: imapclient.IMAPClient | None = None
		self._lost = False
		self._selected: str | None = None
		self._known_folders: set[str] = set()
		self._idling = False
		self._last_idle_start = 0.0
		self._recent: int | None = None
		# How many IDLE commands this session has issued (renewals included), and how it last waited.
		self.idle_count = 0
		self.watch_mode = ""

	# -- lifecycle -----------------------------------------------------------------------------

	def __enter__(self) -> MailboxSession:
		self.connect()
		return self

	def __exit__(
		self,
		exc_type: type[BaseException] | None,
		exc: BaseException | None,
		tb: TracebackType | None,
	) -> None:
		self.close()

	def connect(self) -> None:
		"""Connect, secure the connection as configured, and log in. Raises an `IMAPError` subclass on failure."""
		if self._client is not None:
			return
		settings = self.settings
		encryption = Encryption.parse(settings.encryption)
		self._check_settings()
		context = make_ssl_context(settings) if encryption is not Encryption.NONE else None
		timeout = imapclient.SocketTimeout(connect=settings.timeout, read=settings.timeout)
		try:
			client = imapclient.IMAPClient(
				settings.host,
				settings.port,
				ssl=encryption is Encryption.SSL,
				ssl_context=context,
				timeout=timeout,
			)
		except Exception as exc:
			raise self._opening_error(exc, encryption) from exc
		client.normalise_times = False
		self._client = client
		self._lost = False
		try:
			if encryption is Encryption.STARTTLS:
				self._start_tls(client, context)
			self._login(client)
		except BaseException:
			self.close()
			raise

	def close(self) -> None:
		"""Log out and close the socket; never raises. Safe to call twice."""
		client, self._client = self._client, None
		self._selected = None
		if client is None:
			return
		if self._idling and not self._lost:
			try:
				client.idle_done()
			except Exception:
				self._lost = True  # a server that does not answer DONE will not answer LOGOUT either
		self._idling = False
		if not self._lost:
			try:
				client.logout()
				return
			except Exception:  # noqa: S110 - the connection is going away either way
				pass
		try:
			client.shutdown()
		except Exception:  # noqa: S110
			pass

	def _check_settings(self) -> None:
		settings = self.settings
		host = settings.host
		if not isinstance(host, str) or not host.strip() or any(ch.isspace() for ch in host):
			raise IMAPConnectError(f"The IMAP host name {settings.host!r} is not valid.")
		if (
			isinstance(settings.port, bool)
			or not isinstance(settings.port, int)
			or not 0 < settings.port < 65536
		):
			raise IMAPConnectError(f"The IMAP port {settings.port!r} is not valid; {PORT_HINT}.")
		if not settings.timeout or settings.timeout <= 0:
			raise IMAPConnectError("The IMAP timeout must be a positive number of seconds.")
		if not settings.username:
			raise IMAPAuthError("The IMAP user name is empty.")

	def _start_tls(self, client: imapclient.IMAPClient, context: ssl.SSLContext | None) -> None:
		address = self.settings.address
		capabilities = self._guarded("ask for the server's capabilities", client.capabilities)
		if b"STARTTLS" not in capabilities:
			raise IMAPTLSError(
				f"The server at {address} does not offer STARTTLS, so the password would travel unencrypted. "
				f"Choose SSL/TLS (usually port 993) or ask the server's administrator to enable STARTTLS; "
				f"MachHelpdesk does not fall back to an unencrypted login."
			)
		try:
			client.starttls(context)
		except Exception as exc:
			self._lost = True
			raise self._opening_error(exc, Encryption.STARTTLS) from exc

	def _login(self, client: imapclient.IMAPClient) -> None:
		settings = self.settings
		capabilities = self._guarded("ask for the server's capabilities", client.capabilities)
		if settings.access_token:
			self._oauth_login(client, capabilities)
			return
		if b"LOGINDISABLED" in capabilities:
			raise IMAPAuthError(
				f"The server at {settings.address} does not accept passwords on this connection; "
				f"choose STARTTLS or SSL/TLS."
			)
		ascii_only = settings.username.isascii() and settings.password.isascii()
		if not ascii_only and b"AUTH=PLAIN" not in capabilities:
			raise IMAPAuthError(
				f"The user name or password contains non-ASCII characters, and the server at {settings.address} "
				f"offers no login that can carry them (AUTHENTICATE PLAIN)."
			)
		try:
			if ascii_only:
				client.login(settings.username, settings.password)
			else:
				# LOGIN is ASCII-only; SASL PLAIN carries UTF-8 (RFC 4616).
				client.plain_login(settings.username, settings.password)
		except LoginError as exc:
			text, error = self._login_failure(exc, settings.password, "the password")
			if error is not None:
				raise error from None
			if "PRIVACYREQUIRED" in text.upper():
				raise IMAPAuthError(
					f"The server at {settings.address} refuses passwords without encryption; "
					f"choose STARTTLS or SSL/TLS."
				) from None
			raise IMAPAuthError(
				f"The server at {settings.address} rejected the user name or password for "
				f"{settings.username!r} ({text}). Check both; some providers require an app password."
			) from None
		except Exception as exc:
			raise self._command_error(exc, "log in") from exc

	def _login_failure(self, exc: LoginError, secret: str, what: str) -> tuple[str, IMAPError | None]:
		"""The server's words for a failed login (without `secret`), and the error to raise instead of "refused"
		when the connection was lost or the server could not check `what` just now."""
		address = self.settings.address
		text = _server_text(exc, secret)
		if text.startswith(("socket error", "command: ")) or "EOF" in text:
			self._lost = True
			return text, IMAPConnectError(f"The connection to {address} was lost while logging in ({text}).")
		if "UNAVAILABLE" in text.upper():
			return text, IMAPError(
				f"The server at {address} could not check {what} just now (temporary failure: {text}). "
				f"Try again later."
			)
		return text, None

	def _oauth_login(self, client: imapclient.IMAPClient, capabilities: tuple[bytes, ...]) -> None:
		"""SASL XOAUTH2 or OAUTHBEARER (RFC 7628) with the access token; its text never reaches a message."""
		settings = self.settings
		mechanism = choose_oauth_mechanism(capabilities, settings.oauth_mechanism)
		if mechanism is None:
			wanted = settings.oauth_mechanism or " or ".join(OAUTH_MECHANISMS)
			raise IMAPAuthError(
				f"The server at {settings.address} does not offer OAuth2 logins ({wanted}) on this connection. "
				f"Check the server name and port, or use a password."
			)
		try:
			if mechanism == "OAUTHBEARER":
				client.oauthbearer_login(settings.username, settings.access_token)
			else:
				client.oauth2_login(settings.username, settings.access_token)
		except LoginError as exc:
			text, error = self._login_failure(exc, settings.access_token, "the OAuth token")
			if error is not None:
				raise error from None
			raise IMAPTokenError(
				f"The server at {settings.address} rejected the OAuth access token for {settings.username!r} "
				f"({mechanism}: {text}). The token may have expired or been revoked, may belong to another "
				f"mailbox, or may lack the mail scope: authorize the account again."
			) from None
		except Exception as exc:
			raise self._command_error(exc, "log in with OAuth") from exc

	# -- error translation ---------------------------------------------------------------------

	def _opening_error(self, exc: BaseException, encryption: Encryption) -> IMAPError:
		"""Translate an error raised while connecting, reading the greeting, or negotiating TLS."""
		settings = self.settings
		address = settings.address
		pop3 = POP3_PORTS.get(settings.port)
		if isinstance(exc, IMAPError):
			return exc
		if isinstance(exc, socket.gaierror):
			return IMAPConnectError(
				f"Could not find the mail server {settings.host!r} ({exc.strerror or exc}). Check the host name."
			)
		if isinstance(exc, ssl.SSLCertVerificationError):
			reason = exc.verify_message or _tls_reason(exc)
			return IMAPTLSError(
				f"The server's certificate is not trusted ({reason}) at {address}. Check the host name; "
				f"{SELF_SIGNED_HINT}."
			)
		if isinstance(exc, ssl.SSLError):
			reason = _tls_reason(exc)
			if reason in _NOT_TLS_REASONS:
				if encryption is Encryption.STARTTLS:
					return IMAPTLSError(f"The TLS handshake after STARTTLS with {address} failed ({reason}).")
				return IMAPConnectError(
					f"The server at {address} does not speak TLS on this port, so SSL/TLS cannot work there. "
					f"Choose STARTTLS or None for this port, or use the SSL/TLS port; {PORT_HINT}."
				)
			return IMAPTLSError(
				f"The TLS handshake with {address} failed ({reason}). The server may require a TLS version or "
				f"cipher this system does not accept."
			)
		if isinstance(exc, ConnectionRefusedError):
			return IMAPConnectError(
				f"Nothing accepts connections on {address} (connection refused). Check the host and port; {PORT_HINT}."
			)
		if isinstance(exc, TimeoutError):
			hint = (
				" If this port expects SSL/TLS (usually 993), set encryption to SSL/TLS."
				if encryption is not Encryption.SSL
				else ""
			)
			return IMAPConnectError(
				f"The server at {address} did not answer within {settings.timeout:g} seconds. Check the host, "
				f"the port and that no firewall blocks the connection.{hint} {PORT_HINT}."
			)
		if isinstance(exc, imaplib.IMAP4.error):
			text = _server_text(exc, settings.password)
			if text.startswith("socket error") or "EOF" in text:
				return IMAPConnectError(
					f"The server at {address} closed the connection before greeting. It may not be an IMAP "
					f"server, or it may expect TLS on this port; {PORT_HINT}."
				)
			if text == "None" or "+OK" in text or pop3:
				kind = pop3 or "POP3"
				return IMAPConnectError(
					f"The server at {address} answered like a {kind} server, not IMAP. "
					f"MachHelpdesk reads mail over IMAP; {PORT_HINT}."
				)
			return IMAPConnectError(
				f"The server at {address} did not answer like an IMAP server ({text}). {PORT_HINT}."
			)
		if isinstance(exc, (ConnectionError, EOFError)):
			return IMAPConnectError(
				f"The server at {address} closed the connection unexpectedly ({exc}). {PORT_HINT}."
			)
		if isinstance(exc, OSError):
			return IMAPConnectError(f"Could not connect to {address} ({exc.strerror or exc}).")
		return IMAPConnectError(f"Could not connect to {address} ({type(exc).__name__}: {exc}).")

	def _command_error(self, exc: BaseException, action: str) -> IMAPError:
		"""Translate an error raised by a command on an open connection."""
		address = self.settings.address
		if isinstance(exc, IMAPError):
			return exc
		if isinstance(exc, imaplib.IMAP4.abort) or isinstance(exc, (OSError, EOFError)):
			self._lost = True
			if isinstance(exc, TimeoutError):
				detail = f"no answer within {self.settings.timeout:g} seconds"
			elif isinstance(exc, imaplib.IMAP4.abort):
				detail = _server_text(exc, self.settings.password)
			else:
				detail = str(exc) or type(exc).__name__
			return IMAPConnectError(
				f"The connection to {address} was lost while trying to {action} ({detail}). "
				f"The next pull will connect again."
			)
		if isinstance(exc, imaplib.IMAP4.error):
			return IMAPCommandError(
				f"The server at {address} refused to {action}: {_server_text(exc, self.settings.password)}"
			)
		return IMAPCommandError(
			f"The server at {address} gave an answer that could not be read while trying to {action} "
			f"({type(exc).__name__}: {exc})."
		)

	def _guarded(self, action: str, call: Callable[[], T]) -> T:
		"""Run one imapclient call, translating its errors (and refusing to use a lost connection)."""
		if self._lost:
			raise IMAPConnectError(
				f"The connection to {self.settings.address} was lost earlier; open a new session to {action}."
			)
		try:
			return call()
		except IMAPError:
			raise
		except Exception as exc:
			raise self._command_error(exc, action) from exc

	@property
	def client(self) -> imapclient.IMAPClient:
		"""The underlying imapclient connection (connects first if needed; refuses once the connection is lost)."""
		if self._lost:
			raise IMAPConnectError(
				f"The connection to {self.settings.address} was lost earlier; open a new session."
			)
		if self._client is None:
			self.connect()
		assert self._client is not None
		return self._client

	def _require_selected(self, action: str) -> imapclient.IMAPClient:
		client = self.client
		if self._selected is None:
			raise IMAPError(f"No folder is open: select a folder before trying to {action}.")
		return client

	# -- capabilities ----------------------------------------------------------------------------

	@property
	def capabilities(self) -> set[str]:
		"""The server's capabilities after login, upper case (e.g. ``{"IMAP4REV1", "IDLE", "MOVE"}``)."""
		raw = self._guarded("ask for the server's capabilities", self.client.capabilities)
		return {
			item.decode("ascii", "replace").upper() if isinstance(item, bytes) else str(item).upper()
			for item in raw
		}

	def has_idle(self) -> bool:
		"""True if the server supports IMAP IDLE (RFC 2177)."""
		return "IDLE" in self.capabilities

	def noop(self) -> None:
		"""Send NOOP: keeps the connection alive and lets the server report news."""
		self._guarded("send NOOP", self.client.noop)

	# -- waiting for news: IDLE (RFC 2177), or NOOP polling ------------------------------------------

	@property
	def idling(self) -> bool:
		"""True between `start_idle` and `end_idle`; no other command may be sent meanwhile."""
		return self._idling

	def start_idle(self) -> None:
		"""Enter IDLE on the open folder. Raises `IMAPNoIdleError` when the server lacks IDLE."""
		client = self._require_selected("wait for new mail")
		if self._idling:
			return
		if not self.has_idle():
			raise IMAPNoIdleError(
				f"The server at {self.settings.address} does not offer IDLE, so new mail can only be noticed by "
				f"asking every now and then."
			)
		self._guarded("start waiting for new mail (IDLE)", client.idle)
		self._idling = True
		self.idle_count += 1
		self._last_idle_start = time.monotonic()

	def idle_check(self, timeout: float) -> MailboxNews:
		"""Wait at most `timeout` seconds for the server to report something while idling.

		Returns an empty `MailboxNews` when nothing came. Raises `IMAPConnectError` when the connection is
		gone: the server said BYE, closed the socket, or sent half a line and fell silent.
		"""
		if not self._idling:
			raise IMAPError("IDLE has not been started: call start_idle() first.")
		return self._news(self._read_idle_lines(timeout))

	def end_idle(self) -> MailboxNews:
		"""Leave IDLE (DONE) and return what the server reported meanwhile. A server that does not answer DONE
		within the read timeout has stopped answering: that raises `IMAPConnectError`."""
		if not self._idling:
			return MailboxNews()
		self._idling = False
		_text, responses = self._guarded("stop waiting for new mail (IDLE)", self.client.idle_done)
		return self._news([_response_line(item) for item in responses])

	def poll_news(self) -> MailboxNews:
		"""NOOP, for servers without IDLE: the answer carries EXISTS when mail arrived since the last command."""
		_text, responses = self._guarded("ask for news (NOOP)", self.client.noop)
		return self._news([_response_line(item) for item in responses])

	def watch(
		self,
		*,
		renew_seconds: float = IDLE_RENEW_SECONDS,
		poll_seconds: float = POLL_SECONDS,
		tick: float = 1.0,
		use_idle: bool | None = None,
	) -> Iterator[MailboxNews]:
		"""Wait for news on the open folder, for as long as the caller iterates.

		With IDLE (when the server has it and `use_idle` is not False), IDLE is re-issued every `renew_seconds`
		(RFC 2177 asks for less than 29 minutes); a server that stopped answering is found out then, since it
		does not answer DONE. Without IDLE, NOOP is sent every `poll_seconds`.

		Yields at least every `tick` seconds, an empty `MailboxNews` when nothing happened, so the caller can
		decide to stop: leaving the loop (or closing the generator) ends IDLE politely. Raises
		`IMAPConnectError` when the connection drops.
		"""
		if renew_seconds <= 0 or poll_seconds <= 0 or tick <= 0:
			raise ValueError("renew_seconds, poll_seconds and tick must be positive")
		self._require_selected("wait for new mail")
		idle = self.has_idle() if use_idle is None else (use_idle and self.has_idle())
		self.watch_mode = "idle" if idle else "poll"
		try:
			if idle:
				yield from self._watch_idle(renew_seconds, tick)
			else:
				yield from self._watch_polling(poll_seconds, tick)
		finally:
			if self._idling and not self._lost:
				try:
					self.end_idle()
				except IMAPError:
					pass  # the connection is being closed anyway
			self._idling = False

	def _watch_idle(self, renew_seconds: float, tick: float) -> Iterator[MailboxNews]:
		self.start_idle()
		while True:
			renew_at = self._last_idle_start + renew_seconds
			wait = min(tick, max(0.0, renew_at - time.monotonic()))
			news = self.idle_check(wait)
			if time.monotonic() >= renew_at:
				done = self.end_idle()
				if done:
					news = _merge_news(news, done)
				self.start_idle()
			yield news

	def _watch_polling(self, poll_seconds: float, tick: float) -> Iterator[MailboxNews]:
		next_poll = time.monotonic()
		while True:
			now = time.monotonic()
			if now >= next_poll:
				next_poll = now + poll_seconds
				yield self.poll_news()
			else:
				time.sleep(min(tick, next_poll - now))
				yield MailboxNews()

	def _read_idle_lines(self, timeout: float) -> list[bytes]:
		"""Whole response lines that arrive within `timeout` seconds (none when the server stays quiet)."""
		client = self.client
		# imapclient reads through imaplib; IMAP4.readline() is imaplib's documented way to read one line.
		imap = client._imap
		sock = client.socket()
		if not (_buffered(imap, sock) or _wait_readable(sock, timeout)):
			return []
		lines: list[bytes] = []
		while True:
			try:
				line = imap.readline()
			except Exception as exc:
				raise self._command_error(exc, "wait for new mail") from exc
			if not line:
				self._lost = True
				raise IMAPConnectError(
					f"The server at {self.settings.address} closed the connection while we waited for new mail."
				)
			if not line.endswith(b"\n"):
				self._lost = True
				raise IMAPConnectError(
					f"The connection to {self.settings.address} broke off in the middle of a response while we "
					f"waited for new mail."
				)
			lines.append(line.rstrip(b"\r\n"))
			if not (_buffered(imap, sock) or _wait_readable(sock, 0)):
				return lines

	def _news(self, lines: list[bytes]) -> MailboxNews:
		exists = recent = None
		expunged = 0
		new_mail = False
		for line in lines:
			counted = _COUNTED_RESPONSE.match(line)
			if counted:
				number, kind = int(counted.group(1)), counted.group(2).upper()
				if kind == b"EXISTS":
					exists = number
					new_mail = True
				elif kind == b"RECENT":
					if self._recent is not None and number > self._recent:
						new_mail = True
					recent = self._recent = number
				else:
					expunged += 1
				continue
			status = _STATUS_RESPONSE.match(line)
			if status and status.group(1).upper() == b"BYE":
				self._lost = True
				self._idling = False
				text = status.group(2).decode("utf-8", "replace").strip()
				raise IMAPConnectError(
					f"The server at {self.settings.address} ended the connection ({text or 'BYE'})."
				)
		return MailboxNews(
			exists=exists, recent=recent, expunged=expunged, new_mail=new_mail, lines=tuple(lines)
		)

	# -- folders -------------------------------------------------------------------------------

	def list_folders(self) -> list[str]:
		"""Names of every selectable folder, INBOX first, then alphabetical."""
		listing = self._guarded("list folders", self.client.list_folders)
		names = []
		for flags, _delimiter, name in listing:
			flag_names = {
				flag.upper() if isinstance(flag, bytes) else str(flag).encode().upper() for flag in flags
			}
			if b"\\NOSELECT" in flag_names or b"\\NONEXISTENT" in flag_names:
				continue
			names.append(name if isinstance(name, str) else name.decode("utf-8", "replace"))
		self._known_folders.update(names)
		return sorted(names, key=lambda folder: (folder.upper() != "INBOX", folder.casefold()))

	def select(self, folder: str, readonly: bool = False) -> FolderState:
		"""Open `folder`; raise `IMAPFolderError` if it does not exist or cannot be opened."""
		client = self.client
		try:
			info = client.select_folder(folder, readonly=readonly)
		except imaplib.IMAP4.abort as exc:
			raise self._command_error(exc, f"open the folder {folder!r}") from exc
		except imaplib.IMAP4.error as exc:
			self._selected = None
			raise IMAPFolderError(
				f"The folder {folder!r} does not exist on {self.settings.address} or cannot be opened "
				f"({_server_text(exc, self.settings.password)}). Check the folder name."
			) from exc
		except Exception as exc:
			raise self._command_error(exc, f"open the folder {folder!r}") from exc
		if b"UIDVALIDITY" not in info:
			raise IMAPFolderError(
				f"The server at {self.settings.address} did not report a UIDVALIDITY for {folder!r}, "
				f"so its messages cannot be tracked safely."
			)
		self._selected = folder
		self._known_folders.add(folder)
		self._recent = int(info[b"RECENT"]) if b"RECENT" in info else None
		uidnext = info.get(b"UIDNEXT")
		return FolderState(
			uidvalidity=int(info[b"UIDVALIDITY"]),
			uidnext=int(uidnext) if uidnext is not None else None,
			exists=int(info.get(b"EXISTS", 0)),
		)

	@property
	def selected(self) -> str | None:
		"""The folder last opened with `select`, or None."""
		return self._selected

	def ensure_folder(self, folder: str) -> None:
		"""Create `folder` if it is missing, and subscribe to it."""
		if folder in self._known_folders:
			return
		client = self.client
		if self._guarded(f"look for the folder {folder!r}", partial(client.folder_exists, folder)):
			self._known_folders.add(folder)
			return
		try:
			client.create_folder(folder)
		except imaplib.IMAP4.abort as exc:
			raise self._command_error(exc, f"create the folder {folder!r}") from exc
		except imaplib.IMAP4.error as exc:
			text = _server_text(exc, self.settings.password)
			if "ALREADYEXISTS" not in text.upper():
				raise IMAPFolderError(
					f"Could not create the folder {folder!r} on {self.settings.address} ({text})."
				) from exc
		except Exception as exc:
			raise self._command_error(exc, f"create the folder {folder!r}") from exc
		try:
			client.subscribe_folder(folder)
		except imaplib.IMAP4.abort as exc:
			raise self._command_error(exc, f"subscribe to the folder {folder!r}") from exc
		except imaplib.IMAP4.error:
			pass  # Subscribing is a courtesy to mail clients; the folder works without it.
		except Exception as exc:
			raise self._command_error(exc, f"subscribe to the folder {folder!r}") from exc
		self._known_folders.add(folder)

	# -- UIDs ----------------------------------------------------------------------------------

	def uids_since(self, last_uid: int) -> list[int]:
		"""UIDs greater than `last_uid` in the open folder, ascending.

		Never asks for ``UID 0:*`` (strict servers refuse it). For ``N:*`` a server returns the highest UID even
		when it is below N, so the answer is filtered.
		"""
		if last_uid < 0:
			raise ValueError("last_uid cannot be negative")
		client = self._require_selected("search for new messages")
		if last_uid == 0:
			found = self._guarded("search for messages", partial(client.search, "ALL"))
		else:
			criteria = ["UID", f"{last_uid + 1}:*"]
			found = self._guarded("search for new messages", partial(client.search, criteria))
		return sorted({int(uid) for uid in found if int(uid) > last_uid})

	def all_uids(self) -> list[int]:
		"""Every UID in the open folder, ascending."""
		client = self._require_selected("list messages")
		found = self._guarded("search for messages", partial(client.search, "ALL"))
		return sorted({int(uid) for uid in found})

	# -- fetching ------------------------------------------------------------------------------

	def _fetch_items(self, uids: Iterable[int], items: list[str], action: str, batch: int) -> dict[int, dict]:
		client = self._require_selected(action)
		wanted = sorted({int(uid) for uid in uids})
		answers: dict[int, dict] = {}
		for start in range(0, len(wanted), batch):
			chunk = wanted[start : start + batch]
			answers.update(self._guarded(action, partial(client.fetch, chunk, items)))
		return answers

	def fetch_sizes(self, uids: Iterable[int]) -> dict[int, int]:
		"""UID -> RFC822.SIZE for the given UIDs that still exist."""
		answers = self._fetch_items(uids, ["RFC822.SIZE"], "read message sizes", SMALL_ITEM_BATCH)
		return {uid: int(item[b"RFC822.SIZE"]) for uid, item in answers.items() if b"RFC822.SIZE" in item}

	def fetch_message_ids(self, uids: Iterable[int]) -> dict[int, str | None]:
		"""UID -> Message-ID (``<…>``, whitespace removed; None if absent) for the given UIDs that still exist.

		Reads only that header with ``BODY.PEEK``, so it is cheap and marks nothing seen: enough to match messages
		again after a UIDVALIDITY change.
		"""
		answers = self._fetch_items(uids, [MESSAGE_ID_ITEM], "read Message-IDs", SMALL_ITEM_BATCH)
		result: dict[int, str | None] = {}
		for uid, item in answers.items():
			header = next((value for key, value in item.items() if key.upper().startswith(b"BODY[")), None)
			if header is not None:
				result[uid] = parse_message_id(bytes(header))
		return result

	def fetch(
		self,
		uids: Iterable[int],
		*,
		batch: int = 20,
		max_bytes: int = MAX_MESSAGE_BYTES,
		batch_bytes: int = FETCH_BATCH_BYTES,
	) -> Iterator[FetchedMessage]:
		"""Yield the given messages in UID order with BODY.PEEK[] (never sets ``\\Seen``).

		Sizes are asked first; then at most `batch` messages and `batch_bytes` bytes go in one FETCH.
		A message over `max_bytes` is not downloaded: it is yielded with only its header block and
		``refused`` saying so. A message the server will not send is yielded empty with ``refused``
		saying why, so that every message leaves a trace. A UID that no longer exists is skipped.
		"""
		if batch < 1:
			raise ValueError("batch must be at least 1")
		client = self._require_selected("fetch messages")
		wanted = sorted({int(uid) for uid in uids})
		for start in range(0, len(wanted), 1000):
			sizes = self.fetch_sizes(wanted[start : start + 1000])
			chunk: list[int] = []
			chunk_bytes = 0
			for uid in wanted[start : start + 1000]:
				if uid not in sizes:
					continue  # expunged meanwhile
				if sizes[uid] > max_bytes:
					yield from self._fetch_chunk(client, chunk)
					chunk, chunk_bytes = [], 0
					yield self._fetch_header_only(client, uid, sizes[uid], max_bytes)
					continue
				if chunk and (len(chunk) >= batch or chunk_bytes + sizes[uid] > batch_bytes):
					yield from self._fetch_chunk(client, chunk)
					chunk, chunk_bytes = [], 0
				chunk.append(uid)
				chunk_bytes += sizes[uid]
			yield from self._fetch_chunk(client, chunk)

	def _fetch_chunk(self, client: imapclient.IMAPClient, chunk: list[int]) -> Iterator[FetchedMessage]:
		if not chunk:
			return
		try:
			answers = self._guarded("fetch messages", partial(client.fetch, chunk, FETCH_ITEMS))
		except IMAPCommandError:
			if len(chunk) == 1:
				answers = {}
			else:
				# One broken message must not hold back the others: ask for each alone.
				for uid in chunk:
					yield from self._fetch_chunk(client, [uid])
				return
		for uid in chunk:
			message = _to_fetched(uid, answers.get(uid))
			if message is None:
				message = FetchedMessage(
					uid=uid,
					size=0,
					raw=b"",
					flags=(),
					internal_date=None,
					refused="the server did not send this message when asked for it (it may have been "
					"deleted meanwhile)",
				)
			yield message

	def _fetch_header_only(
		self, client: imapclient.IMAPClient, uid: int, size: int, max_bytes: int
	) -> FetchedMessage:
		refused = (
			f"the message is {size / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB a message may "
			"have; it was left on the server"
		)
		try:
			item = self._guarded("fetch a message header", partial(client.fetch, [uid], HEADER_ITEMS))
		except IMAPCommandError:
			item = {}
		answer = item.get(uid) or {}
		when = answer.get(b"INTERNALDATE")
		return FetchedMessage(
			uid=uid,
			size=size,
			raw=bytes(answer.get(b"BODY[HEADER]") or b""),
			flags=tuple(bytes(flag) for flag in answer.get(b"FLAGS", ())),
			internal_date=when if isinstance(when, datetime) else None,
			refused=refused,
		)

	# -- acting on messages ----------------------------------------------------------------------

	def move(self, uids: int | Iterable[int], folder: str) -> None:
		"""Move messages of the open folder to `folder` (created if missing), in one command.

		Uses MOVE when the server has it; otherwise COPY, ``\\Deleted`` and UID EXPUNGE (or a plain EXPUNGE
		when the server lacks UIDPLUS).
		"""
		wanted = _uid_list(uids)
		client = self._require_selected("move a message")
		if not wanted:
			return
		self.ensure_folder(folder)
		if "MOVE" in self.capabilities:
			self._guarded(f"move a message to {folder!r}", partial(client.move, wanted, folder))
			return
		self._guarded(f"copy a message to {folder!r}", partial(client.copy, wanted, folder))
		self._expunge(client, wanted, f"remove a message moved to {folder!r}")

	def delete(self, uids: int | Iterable[int]) -> None:
		"""Delete messages of the open folder: ``\\Deleted`` then UID EXPUNGE (EXPUNGE without UIDPLUS)."""
		wanted = _uid_list(uids)
		client = self._require_selected("delete a message")
		if wanted:
			self._expunge(client, wanted, "delete a message")

	def _expunge(self, client: imapclient.IMAPClient, uids: list[int], action: str) -> None:
		self._guarded(action, partial(client.add_flags, uids, [imapclient.DELETED], silent=True))
		if "UIDPLUS" in self.capabilities:
			self._guarded(action, partial(client.uid_expunge, uids))
		else:
			# Without UIDPLUS, EXPUNGE also removes other messages someone marked \Deleted in this folder.
			self._guarded(action, client.expunge)


def choose_oauth_mechanism(capabilities: Iterable[bytes | str], wanted: str = "") -> str | None:
	"""The SASL mechanism for an OAuth2 login: `wanted` if the server offers it, else OAUTHBEARER (RFC 7628)
	where offered, else XOAUTH2 (Google's and Microsoft's older mechanism); None when it offers neither."""
	offered = {
		(item.decode("ascii", "replace") if isinstance(item, bytes) else str(item)).upper()
		for item in capabilities
	}
	choices = [wanted.strip().upper()] if wanted and wanted.strip() else list(OAUTH_MECHANISMS)
	return next((mechanism for mechanism in choices if f"AUTH={mechanism}" in offered), None)


def _wait_readable(sock: socket.socket, timeout: float) -> bool:
	"""True when the socket has something to read (or was closed) within `timeout` seconds."""
	if isinstance(sock, ssl.SSLSocket) and sock.pending():
		return True
	try:
		if hasattr(select, "poll"):  # select() cannot watch descriptors above 1023
			poller = select.poll()
			poller.register(sock, select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR)
			return bool(poller.poll(max(0.0, timeout) * 1000))
		readable, _w, _x = select.select([sock], [], [], max(0.0, timeout))
	except (OSError, ValueError):
		return True  # a closed socket: let the read find out and say so
	return bool(readable)


def _buffered(imap: imaplib.IMAP4, sock: socket.socket) -> bool:
	"""True when a response is already read from the socket but not yet consumed (imaplib's buffer or TLS), so
	waiting on the socket would not see it."""
	if isinstance(sock, ssl.SSLSocket) and sock.pending():
		return True
	reader = getattr(imap, "file", None)
	peek = getattr(reader, "peek", None)
	if peek is None:
		return False
	previous = sock.gettimeout()
	sock.setblocking(False)
	try:
		return bool(peek(1))
	except (OSError, ValueError):
		return False
	finally:
		sock.settimeout(previous)


def _response_line(item: tuple) -> bytes:
	"""An imapclient-parsed untagged response, e.g. ``(3, b"EXISTS")``, as the line it came from."""
	return b"* " + b" ".join(
		part if isinstance(part, bytes) else str(part).encode()
		for part in item
		if not isinstance(part, tuple)
	)


def _merge_news(first: MailboxNews, second: MailboxNews) -> MailboxNews:
	return MailboxNews(
		exists=second.exists if second.exists is not None else first.exists,
		recent=second.recent if second.recent is not None else first.recent,
		expunged=first.expunged + second.expunged,
		new_mail=first.new_mail or second.new_mail,
		lines=first.lines + second.lines,
	)


def _uid_list(uids: int | Iterable[int]) -> list[int]:
	return [uids] if isinstance(uids, int) else sorted(set(uids))


def parse_message_id(header: bytes) -> str | None:
	"""The Message-ID from a raw ``Message-ID:`` header block, as ``<…>``; None when missing or empty."""
	unfolded = _FOLDED.sub(b" ", header).decode("utf-8", "replace")
	for line in unfolded.splitlines():
		name, sep, value = line.partition(":")
		if not sep or name.strip().casefold() != "message-id":
			continue
		found = _MESSAGE_ID.search(value)
		if found:
			return found.group(0)
		value = "".join(value.split())
		return value or None
	return None


def _to_fetched(uid: int, item: dict | None) -> FetchedMessage | None:
	if not item:
		return None
	raw = item.get(b"BODY[]")
	if raw is None:
		return None
	raw = bytes(raw)
	when = item.get(b"INTERNALDATE")
	return FetchedMessage(
		uid=uid,
		size=int(item.get(b"RFC822.SIZE", len(raw))),
		raw=raw,
		flags=tuple(bytes(flag) if not isinstance(flag, bytes) else flag for flag in item.get(b"FLAGS", ())),
		internal_date=when if isinstance(when, datetime) else None,
	)


def test_connection(settings: IMAPSettings, folder: str | None = None) -> ConnectionReport:
	"""Log in, list folders and check `folder`; report in plain words. Never raises for the expected problems
	(bad password, TLS failure, unknown folder, wrong host, port or protocol)."""
	try:
		with MailboxSession(settings) as session:
			capabilities = sorted(session.capabilities)
			folders = session.list_folders()
			if not folder:
				return ConnectionReport(
					ok=True,
					folders=folders,
					message=f"Logged in to {settings.address} as {settings.username!r}; {len(folders)} folders.",
					capabilities=capabilities,
				)
			exists = folder in folders or (
				folder.upper() == "INBOX" and any(f.upper() == "INBOX" for f in folders)
			)
			if not exists:
				shown = ", ".join(folders[:20]) + (", …" if len(folders) > 20 else "")
				return ConnectionReport(
					ok=False,
					folders=folders,
					message=f"Logged in, but the folder {folder!r} does not exist on {settings.address}. "
					f"Folders there: {shown or 'none'}.",
					capabilities=capabilities,
				)
			state = session.select(folder, readonly=True)
			return ConnectionReport(
				ok=True,
				folders=folders,
				message=f"Logged in to {settings.address} as {settings.username!r}; the folder {folder!r} "
				f"holds {state.exists} messages.",
				capabilities=capabilities,
			)
	except IMAPError as exc:
		return ConnectionReport(ok=False, message=str(exc))


# Not a pytest test, despite its name (tests import it).
test_connection.__test__ = False  # type: ignore[attr-defined]
