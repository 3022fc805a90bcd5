"""Shared pytest fixtures for the tier-1 tests (plain pytest, no frappe)."""

import os
from collections.abc import Iterator

import pytest

from machhelpdesk.testing.dovecot import DOVECOT_BINARY, Dovecot
from machhelpdesk.testing.smtp_sink import SMTPSink


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
	"""One real Dovecot on 127.0.0.1 for the whole run (plain/STARTTLS on `.port`, implicit TLS on `.ssl_port`).

	Tests share the server, not mailboxes: take a fresh user from `dovecot_user` (or `dovecot.new_user()`).
	"""
	if not os.path.exists(DOVECOT_BINARY):
		pytest.skip(f"{DOVECOT_BINARY} is missing: apt-get install dovecot-imapd")
	with Dovecot() as server:
		yield server


@pytest.fixture
def dovecot_user(dovecot: Dovecot, request: pytest.FixtureRequest) -> tuple[str, str]:
	"""A ``(name, password)`` Dovecot user of this test alone, with an empty INBOX."""
	return dovecot.new_user(request.node.name)


@pytest.fixture
def smtp_sink() -> Iterator[SMTPSink]:
	"""A real SMTP server on 127.0.0.1 that accepts and keeps every message (see SMTPSink.wait_for)."""
	with SMTPSink() as sink:
		yield sink
