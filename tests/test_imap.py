"""machhelpdesk.engine.imap against a real Dovecot on 127.0.0.1 (no mocks)."""

import socket
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest

from machhelpdesk.engine import imap
from machhelpdesk.engine.imap import (
	Encryption,
	FolderState,
	IMAPAuthError,
	IMAPConnectError,
	IMAPError,
	IMAPFolderError,
	IMAPSettings,
	IMAPTLSError,
	MailboxSession,
	parse_message_id,
)
from machhelpdesk.testing.dovecot import Dovecot
from machhelpdesk.testing.ports import free_port


def make_message(number: int, message_id: str | None = None, subject: str | None = None) -> bytes:
	"""A small RFC 5322 message; `message_id=None` gives it a unique one."""
	message_id = message_id or f"<msg-{number}-{id(object())}@example.test>"
	return (
		f"From: Customer {number} <customer{number}@example.test>\r\n"
		f"To: support@example.test\r\n"
		f"Subject: {subject or f'Question {number}'}\r\n"
		f"Message-ID: {message_id}\r\n"
		f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
		f"\r\n"
		f"Body of message {number}.\r\n"
	).encode()


def settings_for(
	dovecot: Dovecot, user: tuple[str, str], encryption: str = "STARTTLS", **overrides: object
) -> IMAPSettings:
	"""Settings reaching `dovecot` as `user`; SSL/TLS uses the implicit-TLS port, the others the plain one."""
	name, password = user
	port = dovecot.ssl_port if Encryption.parse(encryption) is Encryption.SSL else dovecot.port
	values: dict = {
		"host": dovecot.host,
		"port": port,
		"username": name,
		"password": password,
		"encryption": encryption,
		"ca_file": dovecot.cert_path,
		"timeout": 10.0,
	}
	values.update(overrides)
	return IMAPSettings(**values)


@pytest.fixture
def session(dovecot: Dovecot, dovecot_user: tuple[str, str]) -> Iterator[MailboxSession]:
	"""A logged-in STARTTLS session (verified against Dovecot's certificate) for this test's user."""
	with MailboxSession(settings_for(dovecot, dovecot_user)) as opened:
		yield opened


def fill_inbox(dovecot: Dovecot, user: tuple[str, str], count: int) -> list[int]:
	return [dovecot.append(user[0], make_message(number)) for number in range(1, count + 1)]


# -- logging in ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encryption", ["STARTTLS", "SSL/TLS"])
@pytest.mark.parametrize("trust", ["allow_self_signed", "ca_file"])
def test_tls_login_works_with_self_signed_permission_or_ca_file(dovecot, dovecot_user, encryption, trust):
	if trust == "allow_self_signed":
		settings = settings_for(dovecot, dovecot_user, encryption, ca_file=None, allow_self_signed=True)
	else:
		settings = settings_for(dovecot, dovecot_user, encryption)
	with MailboxSession(settings) as session:
		assert "INBOX" in session.list_folders()
		assert "IMAP4REV1" in session.capabilities


@pytest.mark.parametrize("encryption", ["STARTTLS", "SSL/TLS"])
def test_self_signed_certificate_is_refused_without_trust(dovecot, dovecot_user, encryption):
	settings = settings_for(dovecot, dovecot_user, encryption, ca_file=None)
	with pytest.raises(IMAPTLSError) as caught:
		MailboxSession(settings).connect()
	message = str(caught.value)
	assert "not trusted" in message
	assert "Allow self-signed certificate" in message
	assert dovecot_user[1] not in message


def test_certificate_for_another_host_is_refused_even_with_its_ca_file():
	with Dovecot(cert_names=("mail.invalid",)) as other:
		user = other.new_user("mismatch")
		settings = settings_for(other, user, "SSL/TLS")
		with pytest.raises(IMAPTLSError, match="not trusted"):
			MailboxSession(settings).connect()
		relaxed = settings_for(other, user, "SSL/TLS", allow_self_signed=True)
		with MailboxSession(relaxed) as session:
			assert session.select("INBOX").exists == 0


def test_starttls_missing_is_refused_before_sending_the_password():
	with Dovecot(tls=False) as plain_only:
		user = plain_only.new_user("no-starttls")
		with pytest.raises(IMAPTLSError, match="does not offer STARTTLS"):
			MailboxSession(settings_for(plain_only, user, "STARTTLS")).connect()
		assert f"user=<{user[0]}>" not in open(plain_only.log_path).read()
		# The same server is fine for an account that chose no encryption.
		with MailboxSession(settings_for(plain_only, user, "None")) as session:
			assert session.select("INBOX").exists == 0


def test_plain_login_without_encryption(dovecot, dovecot_user):
	with MailboxSession(settings_for(dovecot, dovecot_user, "None", ca_file=None)) as session:
		state = session.select("INBOX")
		assert isinstance(state, FolderState)
		assert (state.exists, state.uidnext) == (0, 1)
		assert state.uidvalidity > 0


def test_bad_password_raises_auth_error_each_time_without_the_password(dovecot, dovecot_user):
	settings = settings_for(dovecot, dovecot_user, password="wrong-password-123")
	for _attempt in range(2):  # the second failure must not be held back by an auth penalty
		with pytest.raises(IMAPAuthError) as caught:
			MailboxSession(settings).connect()
		message = str(caught.value)
		assert "rejected the user name or password" in message
		assert dovecot_user[0] in message
		assert "wrong-password-123" not in message
	with MailboxSession(settings_for(dovecot, dovecot_user)) as session:
		session.noop()


def test_non_ascii_password_logs_in_with_sasl_plain(dovecot):
	name, _ = dovecot.new_user("non-ascii", password="pässwörd-ß€")
	with MailboxSession(settings_for(dovecot, (name, "pässwörd-ß€"))) as session:
		session.noop()
	with pytest.raises(IMAPAuthError):
		MailboxSession(settings_for(dovecot, (name, "passwörd-ß€"))).connect()


def test_unknown_user_is_an_auth_error(dovecot):
	settings = settings_for(dovecot, ("nobody-has-this-name", "whatever"))
	with pytest.raises(IMAPAuthError):
		MailboxSession(settings).connect()


# -- wrong port, wrong protocol --------------------------------------------------------------------


def test_plain_client_on_the_implicit_tls_port_is_a_connect_error(dovecot, dovecot_user):
	settings = settings_for(dovecot, dovecot_user, "None", port=dovecot.ssl_port, timeout=1.0)
	with pytest.raises(IMAPConnectError) as caught:
		MailboxSession(settings).connect()
	assert "set encryption to SSL/TLS" in str(caught.value)
	assert "993" in str(caught.value)


def test_tls_client_on_the_plain_port_is_a_connect_error(dovecot, dovecot_user):
	settings = settings_for(dovecot, dovecot_user, "SSL/TLS", port=dovecot.port)
	with pytest.raises(IMAPConnectError) as caught:
		MailboxSession(settings).connect()
	assert "does not speak TLS" in str(caught.value)
	assert "143" in str(caught.value)


def test_closed_port_is_a_connect_error(dovecot_user):
	settings = IMAPSettings("127.0.0.1", free_port(), *dovecot_user, encryption="None", timeout=5)
	with pytest.raises(IMAPConnectError) as caught:
		MailboxSession(settings).connect()
	assert "connection refused" in str(caught.value)
	assert "993" in str(caught.value) and "143" in str(caught.value)


def test_unknown_host_is_a_connect_error(dovecot_user):
	# .invalid never resolves (RFC 6761), so the lookup fails at once.
	settings = IMAPSettings("no-such-host.invalid", 993, *dovecot_user, timeout=5)
	with pytest.raises(IMAPConnectError, match="Could not find the mail server"):
		MailboxSession(settings).connect()


class GreetingServer:
	"""A loopback TCP server that sends one greeting line per connection and records what it receives."""

	def __init__(self, greeting: bytes) -> None:
		self.greeting = greeting
		self.received = b""
		self.listener = socket.create_server(("127.0.0.1", 0))
		self.port = self.listener.getsockname()[1]
		self.thread = threading.Thread(target=self._serve, daemon=True)
		self.thread.start()

	def _serve(self) -> None:
		while True:
			try:
				conn, _ = self.listener.accept()
			except OSError:
				return
			with conn:
				conn.settimeout(5)
				conn.sendall(self.greeting)
				try:
					while chunk := conn.recv(4096):
						self.received += chunk
						if b"LOGOUT" in chunk.upper():
							conn.sendall(b"* BYE\r\n")
							return
				except OSError:
					pass

	def close(self) -> None:
		self.listener.close()


def test_pop3_server_is_named_in_the_connect_error(dovecot_user):
	pop3 = GreetingServer(b"+OK POP3 server ready <1.2@example.test>\r\n")
	try:
		settings = IMAPSettings("127.0.0.1", pop3.port, *dovecot_user, encryption="None", timeout=5)
		with pytest.raises(IMAPConnectError) as caught:
			MailboxSession(settings).connect()
	finally:
		pop3.close()
	assert "POP3" in str(caught.value)
	assert "993" in str(caught.value)
	assert dovecot_user[1].encode() not in pop3.received


def test_smtp_server_is_not_mistaken_for_imap(smtp_sink, dovecot_user):
	settings = IMAPSettings(smtp_sink.host, smtp_sink.port, *dovecot_user, encryption="None", timeout=5)
	with pytest.raises(IMAPConnectError, match="not answer like an IMAP server"):
		MailboxSession(settings).connect()


@pytest.mark.parametrize("port", [0, 70000, "993"])
def test_invalid_port_is_a_connect_error(dovecot_user, port):
	with pytest.raises(IMAPConnectError, match="port"):
		MailboxSession(IMAPSettings("127.0.0.1", port, *dovecot_user)).connect()


def test_unknown_encryption_is_refused(dovecot, dovecot_user):
	with pytest.raises(IMAPConnectError, match="Unknown encryption"):
		settings = settings_for(dovecot, dovecot_user)
		settings.encryption = "rot13"
		MailboxSession(settings).connect()


@pytest.mark.parametrize(
	("value", "expected"),
	[
		("SSL/TLS", Encryption.SSL),
		("ssl", Encryption.SSL),
		("TLS", Encryption.SSL),
		("STARTTLS", Encryption.STARTTLS),
		("starttls", Encryption.STARTTLS),
		("None", Encryption.NONE),
		("", Encryption.NONE),
		(None, Encryption.NONE),
		(Encryption.STARTTLS, Encryption.STARTTLS),
	],
)
def test_encryption_parse(value, expected):
	assert Encryption.parse(value) is expected
	assert str(expected) == expected.value


# -- folders -------------------------------------------------------------------------------------


def test_unknown_folder_raises_folder_error(session):
	with pytest.raises(IMAPFolderError) as caught:
		session.select("No Such Folder")
	assert "No Such Folder" in str(caught.value)
	assert session.selected is None
	# The connection is still usable afterwards.
	assert session.select("INBOX").exists == 0


def test_ensure_folder_creates_once_and_lists_it(session):
	session.ensure_folder("Support/Archive")
	session.ensure_folder("Support/Archive")
	folders = session.list_folders()
	assert folders[0] == "INBOX"
	assert "Support/Archive" in folders
	assert session.select("Support/Archive").exists == 0


def test_non_ascii_folder_names_round_trip(session):
	session.ensure_folder("Erledigt/Größe")
	assert "Erledigt/Größe" in session.list_folders()
	session.select("Erledigt/Größe")


# -- UIDs and fetching -----------------------------------------------------------------------------


def test_uids_since_semantics(dovecot, dovecot_user, session):
	uids = fill_inbox(dovecot, dovecot_user, 4)
	state = session.select("INBOX")
	assert state.exists == 4
	assert state.uidnext == uids[-1] + 1
	assert session.uids_since(0) == uids
	assert session.all_uids() == uids
	assert session.uids_since(uids[1]) == uids[2:]
	# "N:*" with N above every UID makes the server answer the highest UID; it must be filtered out.
	assert session.uids_since(uids[-1]) == []
	assert session.uids_since(uids[-1] + 100) == []
	with pytest.raises(ValueError):
		session.uids_since(-1)


def test_uids_need_a_selected_folder(session):
	with pytest.raises(IMAPError, match="select a folder"):
		session.uids_since(0)


def test_uids_since_on_empty_folder(session):
	session.select("INBOX")
	assert session.uids_since(0) == []
	assert session.uids_since(7) == []


def test_fetch_returns_exact_bytes_and_does_not_set_seen(dovecot, dovecot_user, session):
	raws = [make_message(number) for number in range(1, 4)]
	uids = [dovecot.append(dovecot_user[0], raw) for raw in raws]
	dovecot.append(dovecot_user[0], make_message(9), flags=[b"\\Flagged"])
	session.select("INBOX")
	fetched = list(session.fetch(session.uids_since(0), batch=2))
	assert [message.uid for message in fetched] == [*uids, uids[-1] + 1]
	for message, raw in zip(fetched, raws, strict=False):
		assert message.raw == raw
		assert message.size == len(raw)
		assert isinstance(message.internal_date, datetime)
		assert message.internal_date.tzinfo is not None
		assert b"\\Seen" not in message.flags
	assert b"\\Flagged" in fetched[-1].flags
	flags = dovecot.flags(dovecot_user[0], "INBOX")
	assert all(b"\\Seen" not in item for item in flags.values())


def test_fetch_skips_vanished_uids_and_keeps_order(dovecot, dovecot_user, session):
	uids = fill_inbox(dovecot, dovecot_user, 5)
	session.select("INBOX")
	session.delete(uids[2])
	wanted = [uids[4], 999_999, uids[0], uids[2], uids[1], uids[3]]
	assert [message.uid for message in session.fetch(wanted, batch=2)] == [
		uids[0],
		uids[1],
		uids[3],
		uids[4],
	]
	assert list(session.fetch([])) == []


def test_fetch_leaves_a_message_over_the_limit_with_its_header_and_the_reason(dovecot, dovecot_user, session):
	small = make_message(1)
	big = make_message(2, subject="Huge").replace(b"Body of message 2.", b"x" * 5000)
	uids = [dovecot.append(dovecot_user[0], raw) for raw in (small, big, make_message(3))]
	session.select("INBOX")
	fetched = list(session.fetch(uids, max_bytes=4000))
	assert [message.uid for message in fetched] == uids
	assert [bool(message.refused) for message in fetched] == [False, True, False]
	header_only = fetched[1]
	assert b"Subject: Huge" in header_only.raw
	assert b"xxxx" not in header_only.raw
	assert header_only.size == len(big)
	assert "left on the server" in header_only.refused
	assert fetched[0].raw == small


def test_fetch_bounds_each_fetch_by_bytes(dovecot, dovecot_user, session):
	raws = [make_message(n).replace(f"Body of message {n}.".encode(), b"y" * 3000) for n in range(1, 7)]
	uids = [dovecot.append(dovecot_user[0], raw) for raw in raws]
	session.select("INBOX")
	asked: list[int] = []
	original = session.client.fetch

	def counting_fetch(messages, items, *args, **kwargs):
		if "BODY.PEEK[]" in items:
			asked.append(len(messages))
		return original(messages, items, *args, **kwargs)

	session.client.fetch = counting_fetch
	fetched = list(session.fetch(uids, batch=20, batch_bytes=7000))
	assert [message.raw for message in fetched] == raws
	assert max(asked) <= 2, "about 3 KB each, at most 7 KB a FETCH"
	assert sum(asked) == 6


def test_fetch_sizes(dovecot, dovecot_user, session):
	raw = make_message(1)
	uid = dovecot.append(dovecot_user[0], raw)
	session.select("INBOX")
	assert session.fetch_sizes([uid, uid + 50]) == {uid: len(raw)}


def test_fetch_message_ids(dovecot, dovecot_user, session):
	user = dovecot_user[0]
	plain = dovecot.append(user, make_message(1, message_id="<first@example.test>"))
	folded = dovecot.append(
		user, b"Subject: folded\r\nMessage-ID:\r\n  <folded@example.test>\r\n\r\nbody\r\n"
	)
	missing = dovecot.append(user, b"Subject: no id\r\n\r\nbody\r\n")
	session.select("INBOX", readonly=True)
	assert session.fetch_message_ids([plain, folded, missing, 424242]) == {
		plain: "<first@example.test>",
		folded: "<folded@example.test>",
		missing: None,
	}
	assert all(b"\\Seen" not in flags for flags in dovecot.flags(user).values())


@pytest.mark.parametrize(
	("header", "expected"),
	[
		(b"Message-ID: <a@b>\r\n\r\n", "<a@b>"),
		(b"message-id:   <a@b>  (comment)\r\n", "<a@b>"),
		(b"Message-Id:\r\n\t<folded@x>\r\n", "<folded@x>"),
		(b"Message-ID: bare@id\r\n", "bare@id"),
		(b"Message-ID:   \r\n", None),
		(b"", None),
	],
)
def test_parse_message_id(header, expected):
	assert parse_message_id(header) == expected


# -- acting on messages ------------------------------------------------------------------------------


def test_move_creates_the_folder_and_removes_from_source(dovecot, dovecot_user, session):
	user = dovecot_user[0]
	uids = fill_inbox(dovecot, dovecot_user, 2)
	before = dovecot.fetch_all(user, "INBOX")
	session.select("INBOX")
	session.move(uids[0], "Processed/2024")
	assert dovecot.folder_uids(user, "INBOX") == [uids[1]]
	assert list(dovecot.fetch_all(user, "Processed/2024").values()) == [before[uids[0]]]
	# Moving into the now existing folder again works as well.
	session.move(uids[1], "Processed/2024")
	assert dovecot.folder_uids(user, "INBOX") == []
	assert len(dovecot.folder_uids(user, "Processed/2024")) == 2


class OldServerSession(MailboxSession):
	"""A session that ignores MOVE and UIDPLUS, as with servers lacking them (the fallback path)."""

	@property
	def capabilities(self) -> set[str]:
		return super().capabilities - {"MOVE", "UIDPLUS"}


def test_move_and_delete_without_move_or_uidplus(dovecot, dovecot_user):
	user = dovecot_user[0]
	uids = fill_inbox(dovecot, dovecot_user, 3)
	with OldServerSession(settings_for(dovecot, dovecot_user)) as session:
		session.select("INBOX")
		session.move(uids[0], "Elsewhere")
		session.delete(uids[1])
	assert dovecot.folder_uids(user, "INBOX") == [uids[2]]
	assert len(dovecot.folder_uids(user, "Elsewhere")) == 1


def test_delete_removes_only_that_message(dovecot, dovecot_user, session):
	user = dovecot_user[0]
	uids = fill_inbox(dovecot, dovecot_user, 3)
	session.select("INBOX")
	session.delete(uids[1])
	assert dovecot.folder_uids(user, "INBOX") == [uids[0], uids[2]]
	assert session.uids_since(0) == [uids[0], uids[2]]


def test_a_batch_moves_and_deletes_in_one_command_each(dovecot, dovecot_user, session):
	user = dovecot_user[0]
	uids = fill_inbox(dovecot, dovecot_user, 6)
	session.select("INBOX")
	session.move(uids[:3], "Parsed")
	session.delete([uids[3], uids[4]])
	session.move([], "Parsed")  # an empty batch is nothing to do, not an error
	assert dovecot.folder_uids(user, "INBOX") == [uids[5]]
	assert len(dovecot.folder_uids(user, "Parsed")) == 3


def test_a_batch_moves_and_deletes_without_move_or_uidplus(dovecot, dovecot_user):
	user = dovecot_user[0]
	uids = fill_inbox(dovecot, dovecot_user, 5)
	with OldServerSession(settings_for(dovecot, dovecot_user)) as session:
		session.select("INBOX")
		session.move(uids[:2], "Elsewhere")
		session.delete(uids[2:4])
	assert dovecot.folder_uids(user, "INBOX") == [uids[4]]
	assert len(dovecot.folder_uids(user, "Elsewhere")) == 2


@pytest.mark.parametrize("folder", ["INBOX", "Support"])
def test_uidvalidity_changes_after_recreate_and_message_ids_still_match(dovecot, dovecot_user, folder):
	user = dovecot_user[0]
	for number in range(1, 4):
		dovecot.append(user, make_message(number, message_id=f"<m{number}@example.test>"), folder=folder)
	settings = settings_for(dovecot, dovecot_user)
	with MailboxSession(settings) as session:
		before = session.select(folder)
		ids_before = set(session.fetch_message_ids(session.all_uids()).values())
	new_validity = dovecot.recreate_folder(user, folder)
	with MailboxSession(settings) as session:
		after = session.select(folder)
		assert after.uidvalidity == new_validity != before.uidvalidity
		assert set(session.fetch_message_ids(session.all_uids()).values()) == ids_before
		assert after.exists == 3


# -- dropped connections -----------------------------------------------------------------------------


def test_dropped_connection_raises_connect_error_and_stays_dropped(dovecot, dovecot_user):
	uids = fill_inbox(dovecot, dovecot_user, 3)
	with MailboxSession(settings_for(dovecot, dovecot_user)) as session:
		session.select("INBOX")
		batches = session.fetch(uids, batch=1)
		assert next(batches).uid == uids[0]
		dovecot.kill_connections(dovecot_user[0])
		with pytest.raises(IMAPConnectError) as caught:
			list(batches)
		assert "connection" in str(caught.value)
		assert "lost" in str(caught.value)
		with pytest.raises(IMAPConnectError):
			session.noop()
		with pytest.raises(IMAPConnectError, match="open a new session"):
			session.select("INBOX")
	# Leaving the block after the loss did not raise; a new session works.
	with MailboxSession(settings_for(dovecot, dovecot_user)) as session:
		assert session.select("INBOX").exists == 3


def test_dropped_connection_while_idle_in_noop(dovecot, dovecot_user, session):
	session.select("INBOX")
	dovecot.kill_connections(dovecot_user[0])
	with pytest.raises(IMAPConnectError):
		session.uids_since(0)


# -- capabilities -----------------------------------------------------------------------------------


def test_capabilities_after_login(session):
	capabilities = session.capabilities
	assert {"IMAP4REV1", "IDLE", "MOVE", "UIDPLUS"} <= capabilities
	assert "STARTTLS" not in capabilities or "LOGINDISABLED" not in capabilities
	assert session.has_idle()
	session.noop()


# -- test_connection ---------------------------------------------------------------------------------


def test_connection_report_ok(dovecot, dovecot_user):
	dovecot.append(dovecot_user[0], make_message(1))
	report = imap.test_connection(settings_for(dovecot, dovecot_user), "INBOX")
	assert report.ok
	assert "INBOX" in report.folders
	assert "1 messages" in report.message
	assert "IMAP4REV1" in report.capabilities
	assert imap.test_connection(settings_for(dovecot, dovecot_user, "SSL/TLS")).ok


def test_connection_report_for_each_problem(dovecot, dovecot_user):
	cases = {
		"bad password": settings_for(dovecot, dovecot_user, password="nope"),
		"untrusted certificate": settings_for(dovecot, dovecot_user, "SSL/TLS", ca_file=None),
		"TLS on the plain port": settings_for(dovecot, dovecot_user, "SSL/TLS", port=dovecot.port),
		"closed port": settings_for(dovecot, dovecot_user, "None", port=free_port()),
	}
	expected = {
		"bad password": "rejected the user name or password",
		"untrusted certificate": "Allow self-signed certificate",
		"TLS on the plain port": "does not speak TLS",
		"closed port": "connection refused",
	}
	for name, settings in cases.items():
		report = imap.test_connection(settings, "INBOX")
		assert not report.ok, name
		assert expected[name] in report.message, (name, report.message)
		assert dovecot_user[1] not in report.message


def test_connection_report_unknown_folder_lists_the_real_ones(dovecot, dovecot_user):
	dovecot.create_folder(dovecot_user[0], "Support")
	report = imap.test_connection(settings_for(dovecot, dovecot_user), "Suport")
	assert not report.ok
	assert "'Suport' does not exist" in report.message
	assert "Support" in report.folders
	assert "INBOX" in report.message
	assert imap.test_connection(settings_for(dovecot, dovecot_user), "inbox").ok
