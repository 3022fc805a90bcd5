"""OAuth2 logins (XOAUTH2, OAUTHBEARER) against a real Dovecot whose oauth2 passdb introspects each token over
HTTP with a provider on 127.0.0.1 (tier 2 uses Frappe's own provider instead)."""

import tempfile
from collections.abc import Iterator

import pytest

from machhelpdesk.engine.imap import (
	IMAPAuthError,
	IMAPSettings,
	IMAPTokenError,
	MailboxSession,
	choose_oauth_mechanism,
	test_connection,
)
from machhelpdesk.testing.dovecot import Dovecot
from machhelpdesk.testing.oauth import IntrospectionServer, dovecot_oauth2_config
from tests.test_imap import make_message

USER = "mailbox@helpdesk.test"
TOKEN = "access-token-f00d"


@pytest.fixture(scope="module")
def provider() -> Iterator[IntrospectionServer]:
	with IntrospectionServer({TOKEN: USER}) as server:
		yield server


@pytest.fixture(scope="module")
def oauth_dovecot(provider: IntrospectionServer) -> Iterator[Dovecot]:
	with tempfile.TemporaryDirectory(prefix="mh-oauth2-") as directory:
		extra = dovecot_oauth2_config(provider.url, directory)
		# The password only lets the test helpers append mail; the account under test uses the token.
		with Dovecot(users={USER: "helper-password"}, extra_config=extra) as server:
			yield server


def oauth_settings(server: Dovecot, token: str = TOKEN, **overrides) -> IMAPSettings:
	values = {
		"host": server.host,
		"port": server.port,
		"username": USER,
		"password": "",
		"encryption": "STARTTLS",
		"ca_file": server.cert_path,
		"timeout": 10.0,
		"access_token": token,
	}
	values.update(overrides)
	return IMAPSettings(**values)


def login_methods(server: Dovecot) -> list[str]:
	with open(server.log_path) as log:
		return [line.split("method=")[1].split(",")[0] for line in log if "Login: user=<" + USER in line]


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_token_logs_in_with_each_mechanism(oauth_dovecot, provider, mechanism):
	uid = oauth_dovecot.append(USER, make_message(1))
	before = len(login_methods(oauth_dovecot))
	with MailboxSession(oauth_settings(oauth_dovecot, oauth_mechanism=mechanism)) as session:
		session.select("INBOX", readonly=True)
		assert uid in session.all_uids()
	assert provider.asked[-1] == TOKEN
	assert login_methods(oauth_dovecot)[before:] == [mechanism]


def test_oauthbearer_is_preferred_where_offered(oauth_dovecot):
	before = len(login_methods(oauth_dovecot))
	with MailboxSession(oauth_settings(oauth_dovecot)) as session:
		session.noop()
	assert login_methods(oauth_dovecot)[before:] == ["OAUTHBEARER"]


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_rejected_token_is_a_token_error_without_the_token(oauth_dovecot, mechanism):
	settings = oauth_settings(oauth_dovecot, token="revoked-token-c0ffee", oauth_mechanism=mechanism)
	with pytest.raises(IMAPTokenError) as caught:
		MailboxSession(settings).connect()
	message = str(caught.value)
	assert "rejected the OAuth access token" in message
	assert "authorize the account again" in message
	assert "revoked-token-c0ffee" not in message
	assert isinstance(caught.value, IMAPAuthError)


def test_token_of_another_user_is_refused(oauth_dovecot, provider):
	provider.tokens["someone-elses-token"] = "intruder@helpdesk.test"
	with pytest.raises(IMAPTokenError):
		MailboxSession(oauth_settings(oauth_dovecot, token="someone-elses-token")).connect()


def test_connection_report_explains_a_rejected_token(oauth_dovecot):
	report = test_connection(oauth_settings(oauth_dovecot, token="expired-token"), folder="INBOX")
	assert not report.ok
	assert "rejected the OAuth access token" in report.message


def test_server_without_oauth_says_so(dovecot, dovecot_user):
	settings = IMAPSettings(
		dovecot.host,
		dovecot.port,
		dovecot_user[0],
		"",
		encryption="STARTTLS",
		ca_file=dovecot.cert_path,
		access_token=TOKEN,
	)
	with pytest.raises(IMAPAuthError, match="does not offer OAuth2 logins"):
		MailboxSession(settings).connect()


@pytest.mark.parametrize(
	"capabilities, wanted, expected",
	[
		([b"AUTH=PLAIN", b"AUTH=XOAUTH2", b"AUTH=OAUTHBEARER"], "", "OAUTHBEARER"),
		([b"AUTH=PLAIN", b"AUTH=XOAUTH2"], "", "XOAUTH2"),
		([b"AUTH=XOAUTH2", b"AUTH=OAUTHBEARER"], "xoauth2", "XOAUTH2"),
		([b"AUTH=XOAUTH2"], "OAUTHBEARER", None),
		([b"AUTH=PLAIN"], "", None),
	],
)
def test_choose_oauth_mechanism(capabilities, wanted, expected):
	assert choose_oauth_mechanism(capabilities, wanted) == expected
