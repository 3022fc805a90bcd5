"""XOAUTH2 / OAUTHBEARER end to end, nothing mocked on the wire.

The OAuth2 provider is Frappe's own (an OAuth Client and the `frappe.integrations.oauth2` endpoints) on this
test site, served by gunicorn on 127.0.0.1. The account's Connected App points at it; the Connected User
authorizes once through the real authorization-code flow (browser requests with a logged-in session, the
provider's redirect, the Connected App's callback that fetches the token). Dovecot's `oauth2` passdb
checks every bearer token by POSTing it to Frappe's introspection endpoint, which names the user only for
tokens with the `openid` scope, so the account's tokens carry it.
"""

import os
import sys
import tempfile
import time

import requests

import frappe
from frappe.tests.utils import FrappeTestCase
from frappe.utils import add_to_date, now_datetime

from machhelpdesk.idle import accounts_due_for_scheduled_pull
from machhelpdesk.intake import pull_account
from machhelpdesk.oauth import access_token
from machhelpdesk.testing.dovecot import Dovecot
from machhelpdesk.testing.oauth import dovecot_oauth2_config
from machhelpdesk.testing.processes import BenchProcess, RedisQueue
from machhelpdesk.testing.webserver import FrappeWebServer
from machhelpdesk.tests.factories import (
	ledger,
	make_account,
	make_message,
	make_user,
	reset_intake_data,
	save_settings,
)

MAILBOX = "oauth.mailbox@helpdesk.test"  # the Connected User, and the IMAP user Dovecot knows
PASSWORD = "OAuth-Desk-Pa55word!"
APP = "mh-test-provider"  # no spaces: an OAuth Client lists its redirect URIs separated by spaces
CALLBACK = "/api/method/frappe.integrations.doctype.connected_app.connected_app.callback/" + APP


class TestXOAuth2(FrappeTestCase):
	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		reset_intake_data()
		save_settings(require_registration=0)
		make_user(MAILBOX, ("System Manager", "MH Manager"), password=PASSWORD)
		frappe.db.commit()
		# Plain HTTP on loopback: oauthlib insists on HTTPS unless told this is a test.
		os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
		cls.web = FrappeWebServer(frappe.local.sites_path, frappe.local.site, python=sys.executable)
		cls.web.start()
		cls.make_provider()
		cls.directory = tempfile.TemporaryDirectory(prefix="mh-oauth2-")
		extra = dovecot_oauth2_config(
			cls.web.url("/api/method/frappe.integrations.oauth2.introspect_token"), cls.directory.name
		)
		# The password only lets the test append mail; the account under test logs in with tokens.
		cls.dovecot = Dovecot(users={MAILBOX: "helper-password"}, extra_config=extra)
		cls.dovecot.start()

	@classmethod
	def tearDownClass(cls):
		cls.dovecot.stop()
		cls.directory.cleanup()
		cls.web.stop()
		reset_intake_data()
		cls.remove_provider()
		save_settings(require_registration=1)
		super().tearDownClass()

	@classmethod
	def make_provider(cls):
		"""Frappe's OAuth provider on this site (an OAuth Client) and the Connected App that uses it."""
		cls.remove_provider()
		callback = cls.web.url(CALLBACK)
		client = frappe.get_doc(
			{
				"doctype": "OAuth Client",
				"app_name": "MachHelpdesk IMAP test",
				"scopes": "openid all",
				"redirect_uris": callback,
				"default_redirect_uri": callback,
				"grant_type": "Authorization Code",
				"response_type": "Code",
				"skip_authorization": 1,
			}
		).insert(ignore_permissions=True)
		api = cls.web.url("/api/method/frappe.integrations.oauth2.")
		app = frappe.get_doc(
			{
				"doctype": "Connected App",
				"name": APP,
				"provider_name": APP,
				"client_id": client.client_id,
				"client_secret": client.client_secret,
				"authorization_uri": api + "authorize",
				"token_uri": api + "get_token",
				"revocation_uri": api + "revoke_token",
				"introspection_uri": api + "introspect_token",
				"scopes": [{"scope": "openid"}, {"scope": "all"}],
			}
		)
		app.insert(ignore_permissions=True, set_name=APP)
		# The Connected App computes its callback from the site's URL; here that is gunicorn's.
		frappe.db.set_value("Connected App", APP, "redirect_uri", callback)
		frappe.db.commit()
		cls.client = client

	@classmethod
	def remove_provider(cls):
		for client in frappe.get_all("OAuth Client", {"app_name": "MachHelpdesk IMAP test"}, pluck="name"):
			frappe.db.delete("OAuth Bearer Token", {"client": client})
			frappe.db.delete("OAuth Authorization Code", {"client": client})
			frappe.db.delete("OAuth Client", client)
		frappe.db.delete("Token Cache", {"connected_app": APP})
		frappe.db.delete("Connected App", APP)
		frappe.db.commit()

	def setUp(self):
		reset_intake_data()
		frappe.db.delete("Token Cache", {"connected_app": APP})
		frappe.db.commit()
		self.account = make_account(
			self.dovecot,
			MAILBOX.split("@")[0],
			None,
			email_address=MAILBOX,
			username=MAILBOX,
			auth_method="OAuth2",
			connected_app=APP,
			connected_user=MAILBOX,
		)

	# -- helpers --

	def desk_session(self) -> requests.Session:
		return self.web.login(MAILBOX, PASSWORD, csrf_from="/app")

	def authorize(self) -> str:
		"""What the Connected User does once in the desk: press Authorize OAuth2 and sign in at the provider."""
		session = self.desk_session()
		response = session.post(
			self.web.url("/api/method/run_doc_method"),
			data={"dt": "MH IMAP Account", "dn": self.account.name, "method": "authorize_oauth"},
			timeout=30,
		)
		self.assertEqual(response.status_code, 200, response.text[:1000])
		authorization_url = response.json()["message"]
		self.assertTrue(
			authorization_url.startswith(self.web.url("/api/method/frappe.integrations.oauth2.authorize"))
		)
		# The provider (skip_authorization) redirects to the Connected App's callback, which fetches the token
		# from the provider's token endpoint and sends the user back to the account's form.
		landed = session.get(authorization_url, timeout=60)
		self.assertEqual(landed.status_code, 200, landed.text[:1000])
		self.assertIn("/app/mh-imap-account/", landed.url)
		frappe.db.rollback()
		token = self.cache().get_password("access_token", raise_exception=False)
		self.assertTrue(token, "the callback stored no token")
		return token

	def cache(self):
		return frappe.get_doc("Connected App", APP).get_token_cache(MAILBOX)

	def logins(self) -> list[str]:
		with open(self.dovecot.log_path) as log:
			return [
				line.split("method=")[1].split(",")[0] for line in log if f"Login: user=<{MAILBOX}>" in line
			]

	def introspection_failures(self) -> int:
		with open(self.dovecot.log_path) as log:
			return sum("Introspection failed" in line or "oauth2 failed" in line for line in log)

	# -- tests --

	def test_account_pulls_with_a_token_from_connected_app(self):
		token = self.authorize()
		bearer = frappe.get_doc("OAuth Bearer Token", token)
		self.assertIn("openid", bearer.scopes.split())
		self.assertEqual(bearer.user, MAILBOX)
		self.dovecot.append(MAILBOX, make_message(subject="Sent to an OAuth2 mailbox"))
		before = len(self.logins())
		summary = pull_account(self.account.name)
		self.assertFalse(summary["error"], summary["text"])
		self.assertEqual(summary["tickets"], 1)
		self.assertEqual(self.logins()[before:], ["OAUTHBEARER"], "the pull logged in with the bearer token")
		[row] = ledger(self.account.name)
		self.assertEqual((row.state, row.server_action), ("Ticketed", "Moved"))
		report = frappe.get_doc("MH IMAP Account", self.account.name).test_connection()
		self.assertTrue(report["ok"], report["message"])

	def test_expired_token_is_renewed_before_logging_in(self):
		first = self.authorize()
		# The token is an hour old: Frappe's Token Cache says it has expired.
		cache = self.cache()
		frappe.db.set_value(
			"Token Cache",
			cache.name,
			"modified",
			add_to_date(now_datetime(), hours=-2),
			update_modified=False,
		)
		frappe.db.commit()
		self.assertTrue(self.cache().is_expired())
		self.dovecot.append(MAILBOX, make_message(subject="After the token expired"))
		summary = pull_account(self.account.name)
		self.assertFalse(summary["error"], summary["text"])
		self.assertEqual(summary["tickets"], 1)
		renewed = self.cache().get_password("access_token")
		self.assertNotEqual(renewed, first, "a new access token came from the provider's token endpoint")
		self.assertFalse(self.cache().is_expired())
		self.assertEqual(frappe.db.get_value("OAuth Bearer Token", renewed, "user"), MAILBOX)

	def test_revoked_token_switches_pulling_off_with_a_clear_desk_message(self):
		token = self.authorize()
		pull_account(self.account.name)  # works while the token is good
		revoked = requests.post(
			self.web.url("/api/method/frappe.integrations.oauth2.revoke_token"),
			data={"token": token, "token_type_hint": "access_token", "client_id": self.client.client_id},
			timeout=30,
		)
		self.assertEqual(revoked.status_code, 200, revoked.text[:500])
		frappe.db.rollback()
		self.assertEqual(frappe.db.get_value("OAuth Bearer Token", token, "status"), "Revoked")
		self.dovecot.append(MAILBOX, make_message(subject="After the revocation"))
		failures = self.introspection_failures()
		summary = pull_account(self.account.name)  # returns, no exception: a job would end normally
		self.assertIn("The mail server refused the OAuth2 access token", summary["error"])
		self.assertIn("refused to renew", summary["error"])
		self.assertGreater(self.introspection_failures(), failures, "Dovecot asked Frappe and was told no")
		frappe.db.rollback()
		account = frappe.get_doc("MH IMAP Account", self.account.name)
		self.assertEqual(account.enabled, 0, "pulling is off")
		self.assertIn("Pulling is off for this account", account.last_error)
		self.assertIn("Authorize OAuth2", account.last_error)
		self.assertNotIn(token, account.last_error)
		notices = frappe.get_all(
			"Notification Log",
			filters={"document_type": "MH IMAP Account", "document_name": account.name, "for_user": MAILBOX},
			pluck="subject",
		)
		self.assertTrue(any("needs OAuth2 authorization again" in subject for subject in notices), notices)
		# The desk shows it on the form (as its headline), over HTTP as a browser sees it.
		session = self.desk_session()
		loaded = session.get(
			self.web.url("/api/method/frappe.desk.form.load.getdoc"),
			params={"doctype": "MH IMAP Account", "name": account.name},
			timeout=30,
		)
		self.assertEqual(loaded.status_code, 200)
		self.assertIn("Pulling is off for this account", loaded.json()["docs"][0]["last_error"])
		# No crash loop: the scheduler leaves the account alone, and the mail waits on the server.
		self.assertNotIn(account.name, accounts_due_for_scheduled_pull())
		self.assertEqual(len(self.dovecot.folder_uids(MAILBOX, "INBOX")), 1)
		self.assertFalse(frappe.get_all("MH Ticket", {"subject": "After the revocation"}))
		# Authorizing again and enabling the account brings the mail in.
		self.authorize()
		account.reload()
		account.enabled = 1
		account.save()
		frappe.db.commit()
		summary = pull_account(self.account.name)
		self.assertFalse(summary["error"], summary["text"])
		self.assertTrue(frappe.get_all("MH Ticket", {"subject": "After the revocation"}))

	def test_account_never_authorized_says_what_to_do(self):
		summary = pull_account(self.account.name)
		self.assertIn("has not been authorized yet", summary["error"])
		frappe.db.rollback()
		account = frappe.get_doc("MH IMAP Account", self.account.name)
		self.assertEqual(account.enabled, 0)
		self.assertIn(f"log in to the desk as {MAILBOX}", account.last_error)
		report = account.test_connection()
		self.assertFalse(report["ok"])
		self.assertIn("has not been authorized yet", report["message"])

	def test_only_the_connected_user_can_authorize(self):
		other = make_user("someone.else@helpdesk.test", ("System Manager", "MH Manager"))
		frappe.set_user(other)
		try:
			with self.assertRaises(frappe.ValidationError):
				frappe.get_doc("MH IMAP Account", self.account.name).authorize_oauth()
		finally:
			frappe.set_user("Administrator")

	def test_the_watcher_watches_an_oauth2_account_with_its_token(self):
		self.authorize()
		before = len(self.logins())
		with RedisQueue() as redis:
			watcher = BenchProcess(
				frappe.local.sites_path,
				["mh-idle", "--site", frappe.local.site, "--refresh-seconds", "2"],
				env=redis.env,
				python=sys.executable,
				name="mh-idle",
			)
			with watcher:
				self.assertTrue(watcher.wait_for_log("connected (Push)", 60), watcher.log_tail())
				deadline = time.monotonic() + 30
				while frappe.db.get_value("MH IMAP Account", self.account.name, "watch_mode") != "Push":
					self.assertLess(time.monotonic(), deadline, watcher.log_tail())
					time.sleep(0.2)
					frappe.db.rollback()
		self.assertIn("OAUTHBEARER", self.logins()[before:])

	def test_access_token_is_read_from_the_token_cache(self):
		token = self.authorize()
		self.assertEqual(access_token(frappe.get_doc("MH IMAP Account", self.account.name)), token)
