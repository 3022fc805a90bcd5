"""Shared pytest fixtures for the tier-1 tests (plain pytest, no frappe)."""

import os
from collections.abc import Iterator
from pathlib import Path

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


# --- The real-world corpus and the project's own fixtures -----------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_ENV = "MH_CORPUS_DIR"


def corpus_location() -> Path:
	"""Return where the corpus should be: $MH_CORPUS_DIR, else <repo root>/../shared/corpus."""
	configured = os.environ.get(CORPUS_ENV)
	return Path(configured) if configured else REPO_ROOT.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
	"""The folder of real-world .eml files (read in place, never copied). Skips when it is absent."""
	path = corpus_location()
	if not path.is_dir():
		pytest.skip(f"email corpus not found at {path} (set {CORPUS_ENV})")
	return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
	"""The project's own hand-written test messages (repo/fixtures)."""
	return REPO_ROOT / "fixtures"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
	"""Give every test that takes `corpus_file` one run per corpus message, named after the file."""
	if "corpus_file" not in metafunc.fixturenames:
		return
	path = corpus_location()
	files = sorted(path.glob("*.eml")) if path.is_dir() else []
	if files:
		metafunc.parametrize("corpus_file", files, ids=[file.name for file in files])
	else:
		metafunc.parametrize("corpus_file", [None], ids=["corpus-missing"])
