"""Waiting for new mail (IMAP IDLE, RFC 2177, and NOOP polling) against a real Dovecot on 127.0.0.1."""

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import suppress

import pytest

from machhelpdesk.engine.imap import (
	IMAPConnectError,
	IMAPNoIdleError,
	MailboxNews,
	MailboxSession,
)
from machhelpdesk.testing.dovecot import Dovecot
from tests.test_imap import make_message, settings_for

# Dovecot without IDLE: the same capabilities minus IDLE (and minus NOTIFY, which implies it).
NO_IDLE_CONFIG = (
	"imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE LITERAL+ UIDPLUS MOVE UNSELECT\n"
)


@pytest.fixture
def session(dovecot: Dovecot, dovecot_user: tuple[str, str]) -> Iterator[MailboxSession]:
	"""A logged-in STARTTLS session of this test's user."""
	with MailboxSession(settings_for(dovecot, dovecot_user)) as opened:
		yield opened


def wait_for_news(watch, seconds: float) -> tuple[MailboxNews | None, float]:
	"""Iterate `watch` until it reports new mail or `seconds` pass; return the news and how long it took."""
	started = time.monotonic()
	for news in watch:
		if news.new_mail:
			return news, time.monotonic() - started
		if time.monotonic() - started > seconds:
			return None, time.monotonic() - started
	return None, time.monotonic() - started


def append_later(dovecot: Dovecot, user: str, delay: float, raw: bytes) -> threading.Thread:
	thread = threading.Thread(target=lambda: (time.sleep(delay), dovecot.append(user, raw)), daemon=True)
	thread.start()
	return thread


@pytest.mark.parametrize("encryption", ["STARTTLS", "SSL/TLS"])
def test_appended_mail_wakes_idle(dovecot, dovecot_user, encryption):
	with MailboxSession(settings_for(dovecot, dovecot_user, encryption)) as session:
		session.select("INBOX", readonly=True)
		watch = session.watch(tick=0.2)
		assert next(watch).new_mail is False  # IDLE is on and nothing happened yet
		assert session.idling and session.watch_mode == "idle"
		append_later(dovecot, dovecot_user[0], 0.3, make_message(1))
		news, _took = wait_for_news(watch, 10)
		assert news is not None, "IDLE did not report the appended message"
		assert news.exists == 1
		watch.close()
		assert not session.idling
		# Leaving the loop ended IDLE politely: the session takes commands again.
		assert session.uids_since(0) == [1]


def test_several_mails_and_idle_again(dovecot, dovecot_user, session):
	session.select("INBOX", readonly=True)
	watch = session.watch(tick=0.2)
	for number in range(1, 4):
		dovecot.append(dovecot_user[0], make_message(number))
		news, _took = wait_for_news(watch, 10)
		assert news is not None and news.exists == number
	watch.close()


def test_moving_mail_away_is_not_news(dovecot, dovecot_user, session):
	for number in range(1, 4):
		dovecot.append(dovecot_user[0], make_message(number))
	session.select("INBOX", readonly=True)
	watch = session.watch(tick=0.2)
	next(watch)
	with dovecot.client(dovecot_user[0]) as other:
		other.select_folder("INBOX")
		other.create_folder("Parsed")
		other.move(other.search("ALL")[:2], "Parsed")
	seen: list[MailboxNews] = []
	deadline = time.monotonic() + 3
	for news in watch:
		seen.append(news)
		if time.monotonic() > deadline:
			break
	assert sum(news.expunged for news in seen) == 2
	assert not any(news.new_mail for news in seen), [news.lines for news in seen]
	watch.close()


def test_idle_is_renewed_and_still_wakes(dovecot, dovecot_user, session):
	session.select("INBOX", readonly=True)
	watch = session.watch(renew_seconds=0.5, tick=0.1)
	deadline = time.monotonic() + 2.2
	for _news in watch:
		if time.monotonic() > deadline:
			break
	assert session.idle_count >= 4, session.idle_count
	dovecot.append(dovecot_user[0], make_message(1))
	news, _took = wait_for_news(watch, 10)
	assert news is not None and news.exists == 1
	watch.close()


def test_mail_arriving_during_renewal_is_reported(dovecot, dovecot_user, session):
	"""Messages announced between DONE and the next IDLE are not lost."""
	session.select("INBOX", readonly=True)
	watch = session.watch(renew_seconds=0.05, tick=0.05)
	appender = threading.Thread(
		target=lambda: [dovecot.append(dovecot_user[0], make_message(n)) for n in range(1, 6)], daemon=True
	)
	appender.start()
	highest = 0
	deadline = time.monotonic() + 15
	for news in watch:
		if news.new_mail:
			highest = max(highest, news.exists or 0)
		if highest == 5 or time.monotonic() > deadline:
			break
	appender.join()
	assert highest == 5
	assert session.idle_count >= 2
	watch.close()


def test_kicked_connection_is_detected(dovecot, dovecot_user, session):
	session.select("INBOX", readonly=True)
	watch = session.watch(tick=0.2)
	next(watch)
	dovecot.kill_connections(dovecot_user[0])
	started = time.monotonic()
	with pytest.raises(IMAPConnectError, match=r"ended the connection|closed the connection"):
		for _news in watch:
			assert time.monotonic() - started < 10, "the dropped connection went unnoticed"
	assert time.monotonic() - started < 5


def test_stopped_server_is_detected():
	with Dovecot() as server:
		user = server.new_user("stopped")
		session = MailboxSession(settings_for(server, user))
		session.connect()
		session.select("INBOX", readonly=True)
		watch = session.watch(tick=0.2)
		next(watch)
		server.stop()
		started = time.monotonic()
		with pytest.raises(IMAPConnectError):
			for _news in watch:
				assert time.monotonic() - started < 10, "the closed connection went unnoticed"
		session.close()


def test_silent_server_is_detected_at_renewal(dovecot, dovecot_user):
	"""A server that stops answering without closing the socket (a frozen process, a dead NAT entry) is found
	out when IDLE is renewed: DONE gets no answer within the read timeout."""
	settings = settings_for(dovecot, dovecot_user, timeout=1.0)
	with MailboxSession(settings) as session:
		session.select("INBOX", readonly=True)
		watch = session.watch(renew_seconds=1.0, tick=0.2)
		next(watch)
		[pid] = dovecot.sessions(dovecot_user[0])
		os.kill(pid, signal.SIGSTOP)
		try:
			started = time.monotonic()
			with pytest.raises(IMAPConnectError, match=r"lost|closed"):
				for _news in watch:
					assert time.monotonic() - started < 10, "the silent server went unnoticed"
			assert time.monotonic() - started < 5
		finally:
			os.kill(pid, signal.SIGCONT)


def test_server_without_idle_is_polled_with_noop():
	with Dovecot(extra_config=NO_IDLE_CONFIG) as server:
		user = server.new_user("no-idle")
		with MailboxSession(settings_for(server, user)) as session:
			assert not session.has_idle()
			session.select("INBOX", readonly=True)
			with pytest.raises(IMAPNoIdleError, match="does not offer IDLE"):
				session.start_idle()
			watch = session.watch(poll_seconds=0.5, tick=0.1)
			next(watch)
			assert session.watch_mode == "poll"
			server.append(user[0], make_message(1))
			news, _took = wait_for_news(watch, 10)
			assert news is not None and news.exists == 1
			watch.close()
			assert session.uids_since(0) == [1]


def test_polling_can_be_chosen_even_with_idle(dovecot, dovecot_user, session):
	session.select("INBOX", readonly=True)
	watch = session.watch(use_idle=False, poll_seconds=0.3, tick=0.1)
	next(watch)
	assert session.watch_mode == "poll" and not session.idling
	dovecot.append(dovecot_user[0], make_message(1))
	news, _took = wait_for_news(watch, 10)
	assert news is not None
	watch.close()


def test_watch_needs_an_open_folder(session):
	with pytest.raises(Exception, match="select a folder"):
		next(session.watch())


def test_closing_the_session_while_idling_logs_out(dovecot, dovecot_user):
	session = MailboxSession(settings_for(dovecot, dovecot_user))
	session.connect()
	session.select("INBOX", readonly=True)
	session.start_idle()
	session.close()
	deadline = time.monotonic() + 5
	while dovecot.sessions(dovecot_user[0]) and time.monotonic() < deadline:
		time.sleep(0.05)
	assert dovecot.sessions(dovecot_user[0]) == []
	with suppress(Exception):
		session.close()
