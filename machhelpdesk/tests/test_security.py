"""Every door of the app, tried from outside: each whitelisted method and document method over real
HTTP (gunicorn on 127.0.0.1) as a guest, as a customer and as an agent, and the IMAP password kept out
of errors, logs and answers.

The table below names every whitelisted method of the app with who may call it. A new method makes
``test_the_table_names_every_whitelisted_method`` fail until it is reviewed and added here.
"""

import importlib
import pkgutil
import sys

import requests

import frappe
from frappe.tests.utils import FrappeTestCase

import machhelpdesk
from machhelpdesk.intake import pull_account
from machhelpdesk.testing.dovecot import Dovecot
from machhelpdesk.testing.webserver import FrappeWebServer
from machhelpdesk.tests.factories import (
	make_account,
	make_customer,
	make_ticket,
	make_user,
	reset_intake_data,
)

PASSWORD = "Security-Test-Pa55word!"
ALICE = "security.alice@example.com"
BOB = "security.bob@example.com"
AGENT = "security.agent@helpdesk.test"

# method -> who may call it: "guest" (anyone), "customer" (a customer, on their own tickets), "staff"
STANDALONE = {
	"machhelpdesk.portal.create_ticket": "guest",
	"machhelpdesk.portal.reply_to_ticket": "customer",
	"machhelpdesk.portal.reopen_ticket": "customer",
	"machhelpdesk.status_flow.choose_status_after_reply": "staff",
	"machhelpdesk.challenge_response.release_held_mail": "staff",
	"machhelpdesk.challenge_response.always_allow_senders": "staff",
	"machhelpdesk.challenge_response.block_senders": "staff",
	"machhelpdesk.rule_testing.dry_run_rules": "staff",
}
DOCUMENT_METHODS = {
	("MH IMAP Account", "test_connection"),
	("MH IMAP Account", "pull_now"),
	("MH IMAP Account", "authorize_oauth"),
	("MH IMAP Account", "oauth_status"),
	("MH Inbound Mail", "reprocess"),
}


def app_whitelisted() -> tuple[set[str], set[str], set[tuple[str, str]]]:
	"""(standalone methods, guest methods, (class, method) of document methods) of this app."""
	for module in pkgutil.walk_packages(machhelpdesk.__path__, "machhelpdesk."):
		if ".tests" in module.name or ".testing" in module.name or module.name.endswith(".www.mh.confirm"):
			continue
		importlib.import_module(module.name)
	standalone, guest, document = set(), set(), set()
	for function in frappe.whitelisted:
		if not function.__module__.startswith("machhelpdesk."):
			continue
		owner, _dot, name = function.__qualname__.rpartition(".")
		if owner:
			document.add((owner, name))
		else:
			standalone.add(f"{function.__module__}.{name}")
			if function in frappe.guest_methods:
				guest.add(f"{function.__module__}.{name}")
	return standalone, guest, document


class TestWhitelistedMethods(FrappeTestCase):
	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		reset_intake_data()
		make_customer(ALICE, PASSWORD, "Alice")
		make_customer(BOB, PASSWORD, "Bob")
		make_user(AGENT, ("MH Agent",), password=PASSWORD)
		cls.dovecot = Dovecot()
		cls.dovecot.start()
		user, password = cls.dovecot.new_user("security")
		cls.account = make_account(cls.dovecot, user, password)
		cls.ticket = make_ticket("Alice's secret", raised_by=ALICE).name
		cls.held = frappe.get_doc(
			{
				"doctype": "MH Inbound Mail",
				"state": "Held",
				"imap_account": cls.account.name,
				"from_email": "stranger@example.com",
				"subject": "held",
				"mailbox_key": "security-held",
				"message_key": "<security-held@example.com>",
			}
		).insert(ignore_permissions=True)
		frappe.db.commit()  # gunicorn is another process
		cls.web = FrappeWebServer(frappe.local.sites_path, frappe.local.site, python=sys.executable)
		cls.web.start()

	@classmethod
	def tearDownClass(cls):
		cls.web.stop()
		cls.dovecot.stop()
		reset_intake_data()
		super().tearDownClass()

	def session(self, user: str | None = None) -> requests.Session:
		if not user:
			return requests.Session()
		return self.web.login(user, PASSWORD, csrf_from="/mh/tickets" if user != AGENT else "/app")

	def arguments(self, method: str) -> dict:
		"""Plausible arguments, aimed at Alice's ticket or the held mail, so a refusal is a refusal."""
		held = frappe.as_json([self.held.name])
		return {
			"machhelpdesk.portal.create_ticket": {
				"subject": "x",
				"description": "y",
				"email": "g@example.com",
			},
			"machhelpdesk.portal.reply_to_ticket": {"ticket": self.ticket, "message": "pwned"},
			"machhelpdesk.portal.reopen_ticket": {"ticket": self.ticket},
			"machhelpdesk.status_flow.choose_status_after_reply": {"ticket": self.ticket, "status": "Closed"},
			"machhelpdesk.challenge_response.release_held_mail": {"names": held},
			"machhelpdesk.challenge_response.always_allow_senders": {"names": held},
			"machhelpdesk.challenge_response.block_senders": {"names": held},
			"machhelpdesk.rule_testing.dry_run_rules": {"account": self.account.name, "last": 5},
		}[method]

	def call(self, s: requests.Session, method: str) -> requests.Response:
		response = s.post(self.web.url(f"/api/method/{method}"), data=self.arguments(method), timeout=60)
		frappe.db.commit()  # see what the server wrote
		return response

	def test_the_table_names_every_whitelisted_method(self):
		standalone, guest, document = app_whitelisted()
		self.assertEqual(standalone, set(STANDALONE), "review a new whitelisted method and add it here")
		self.assertEqual(guest, {m for m, who in STANDALONE.items() if who == "guest"})
		doctype_classes = {dt.replace(" ", ""): dt for dt, _method in DOCUMENT_METHODS}
		self.assertEqual({(doctype_classes.get(c, c), m) for c, m in document}, DOCUMENT_METHODS)

	def test_guests_get_403_from_every_method_but_the_reviewed_one(self):
		guest = self.session()
		for method, who in STANDALONE.items():
			with self.subTest(method=method):
				response = self.call(guest, method)
				if who == "guest":
					# The guest form needs the nonce of its page: refused, and nothing made.
					self.assertIn(response.status_code, (400, 403, 417), response.text[:300])
					self.assertFalse(frappe.db.exists("MH Ticket", {"raised_by": "g@example.com"}))
				else:
					self.assertEqual(response.status_code, 403, response.text[:300])

	def test_customers_get_403_from_staff_methods_and_from_other_customers_tickets(self):
		bob = self.session(BOB)
		for method, who in STANDALONE.items():
			if who == "guest":
				continue
			with self.subTest(method=method):
				response = self.call(bob, method)
				self.assertEqual(response.status_code, 403, response.text[:300])
		self.assertEqual(frappe.db.get_value("MH Inbound Mail", self.held.name, "state"), "Held")
		self.assertEqual(
			frappe.db.count("Communication", {"reference_name": self.ticket, "sent_or_received": "Received"}),
			0,
			"Bob's reply did not reach Alice's ticket",
		)

	def test_customers_and_guests_cannot_run_document_methods(self):
		for who, s in (("guest", self.session()), ("customer", self.session(ALICE))):
			for doctype, method in sorted(DOCUMENT_METHODS):
				name = self.account.name if doctype == "MH IMAP Account" else self.held.name
				with self.subTest(who=who, method=method):
					response = s.post(
						self.web.url("/api/method/run_doc_method"),
						data={"dt": doctype, "dn": name, "method": method},
						timeout=60,
					)
					self.assertEqual(response.status_code, 403, response.text[:300])

	def test_agents_cannot_run_managers_document_methods(self):
		agent = self.session(AGENT)
		for method in ("test_connection", "pull_now", "authorize_oauth"):
			with self.subTest(method=method):
				response = agent.post(
					self.web.url("/api/method/run_doc_method"),
					data={"dt": "MH IMAP Account", "dn": self.account.name, "method": method},
					timeout=60,
				)
				self.assertEqual(response.status_code, 403, response.text[:300])


class TestPasswordNeverShown(FrappeTestCase):
	"""A wrong IMAP password goes through a real failed login; the secret appears nowhere afterwards."""

	SECRET = "Zq-9-never-shown-0b7d"

	def test_imap_password_is_not_in_errors_logs_or_answers(self):
		reset_intake_data()
		with Dovecot() as dovecot:
			user, _real_password = dovecot.new_user("secret")
			account = make_account(dovecot, user, self.SECRET)
			errors_before = frappe.db.count("Error Log")
			summary = pull_account(account.name)
			report = frappe.get_doc("MH IMAP Account", account.name).test_connection()
		self.assertTrue(summary["error"], "the login really failed")
		places = {
			"pull summary": frappe.as_json(summary),
			"test connection": frappe.as_json(report),
			"account": frappe.as_json(frappe.get_doc("MH IMAP Account", account.name).as_dict()),
			"error logs": frappe.as_json(
				frappe.get_all("Error Log", fields=["method", "error"], order_by="creation desc", limit=20)
			),
			"notifications": frappe.as_json(
				frappe.get_all("Notification Log", fields=["subject", "email_content"])
			),
		}
		self.assertGreaterEqual(frappe.db.count("Error Log"), errors_before)
		for place, text in places.items():
			with self.subTest(place=place):
				self.assertNotIn(self.SECRET, text)
		reset_intake_data()
