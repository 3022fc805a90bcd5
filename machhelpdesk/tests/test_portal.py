"""The customer portal (/mh/) over real HTTP, against gunicorn on 127.0.0.1.

Customers see exactly their own tickets, N per page; reply with attachments under the size limit;
re-open closed tickets when allowed. Another customer's ticket, its files and its API answer 403. With
"Hide Helpdesk from Client" on, the portal answers 404 and its menu entry is gone.
"""

import json
import re
import sys
from datetime import timedelta

import requests

import frappe
from frappe.tests.utils import FrappeTestCase
from frappe.utils import now_datetime

from machhelpdesk.intake import store_attachment
from machhelpdesk.testing.webserver import FrappeWebServer
from machhelpdesk.tests.factories import (
	delete_tickets,
	make_customer,
	make_ticket,
	make_user,
	reset_intake_data,
	save_settings,
)

PASSWORD = "Portal-Test-Pa55word!"
ALICE = "portal.alice@example.com"
BOB = "portal.bob@example.com"
AGENT = "portal.agent@helpdesk.test"
DEFAULTS = {
	"hide_helpdesk_from_client": 0,
	"allow_reopen": 1,
	"tickets_per_page": 20,
	"require_registration": 1,
	"auto_create_accounts": 1,
	"max_attachment_size_mb": 10,
}
REOPEN_BUTTON = 'class="btn btn-default btn-sm mh-reopen"'
REPLY_FORM = '<form class="mh-reply-form"'


def add_message(ticket: str, sender: str, text: str, received: bool = True, minutes_ago: int = 0) -> str:
	"""A mail in the ticket's thread, inserted as intake does (no controller); committed by the caller."""
	communication = frappe.get_doc(
		{
			"doctype": "Communication",
			"communication_type": "Communication",
			"communication_medium": "Email",
			"sent_or_received": "Received" if received else "Sent",
			"subject": "Printer",
			"sender": sender,
			"content": text,
			"reference_doctype": "MH Ticket",
			"reference_name": ticket,
			"communication_date": now_datetime() - timedelta(minutes=minutes_ago),
		}
	)
	communication.db_insert()
	return communication.name


class PortalTestCase(FrappeTestCase):
	"""gunicorn serves the site for the class; tickets are deleted before each test."""

	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		reset_intake_data()
		make_customer(ALICE, PASSWORD, "Alice")
		make_customer(BOB, PASSWORD, "Bob")
		make_user(AGENT, ("MH Agent",), password=PASSWORD)
		save_settings(**DEFAULTS)
		cls.web = FrappeWebServer(frappe.local.sites_path, frappe.local.site, python=sys.executable)
		cls.web.start()

	@classmethod
	def tearDownClass(cls):
		cls.web.stop()
		reset_intake_data()
		save_settings(**DEFAULTS)
		super().tearDownClass()

	def setUp(self):
		delete_tickets()
		save_settings(**DEFAULTS)
		frappe.cache.delete_value("rl:machhelpdesk.portal.create_ticket:127.0.0.1")

	def session(self, user: str | None = None) -> requests.Session:
		"""A browser-like session: logged in (unless a guest), with the CSRF token a portal page carries."""
		return self.web.login(user, PASSWORD, csrf_from="/mh/tickets") if user else requests.Session()

	def ticket_for(self, email: str, subject: str = "Printer on fire", **values) -> str:
		name = make_ticket(subject, raised_by=email, **values).name
		frappe.db.commit()  # gunicorn is another process
		return name

	def post(self, s: requests.Session, method: str, data: dict, files=None) -> requests.Response:
		response = s.post(
			self.web.url(f"/api/method/machhelpdesk.portal.{method}"), data=data, files=files, timeout=60
		)
		frappe.db.commit()  # end this connection's snapshot: the server's writes become visible
		return response


class TestPortalAccess(PortalTestCase):
	def test_guests_are_sent_to_login(self):
		ticket = self.ticket_for(ALICE)
		guest = self.session()
		for path in ("/mh/tickets", f"/mh/tickets/{ticket}", "/mh/new"):
			with self.subTest(path=path):
				response = guest.get(self.web.url(path), allow_redirects=False, timeout=30)
				self.assertIn(response.status_code, (301, 302), response.text[:300])
				self.assertIn("/login?redirect-to=", response.headers["Location"])
				self.assertNotIn("Printer on fire", response.text)

	def test_customer_sees_exactly_their_own_tickets(self):
		mine = {self.ticket_for(ALICE, f"Alice's problem {i}") for i in range(2)}
		theirs = self.ticket_for(BOB, "Bob's problem")
		page = self.session(ALICE).get(self.web.url("/mh/tickets"), timeout=30)
		self.assertEqual(page.status_code, 200)
		self.assertEqual(set(re.findall(r'data-ticket="([^"]+)"', page.text)), mine)
		self.assertNotIn(theirs, page.text)
		self.assertNotIn("Bob&#39;s problem", page.text)

	def test_pagination_at_n_and_at_zero(self):
		start = now_datetime() - timedelta(days=10)
		names = [
			self.ticket_for(ALICE, f"Problem {i}", opened_on=start + timedelta(days=i)) for i in range(5)
		]
		newest_first = list(reversed(names))
		s = self.session(ALICE)

		def listed(page: int | None = None) -> list[str]:
			url = "/mh/tickets" + (f"?page={page}" if page else "")
			response = s.get(self.web.url(url), timeout=30)
			self.assertEqual(response.status_code, 200)
			return re.findall(r'class="mh-ticket-row" data-ticket="([^"]+)"', response.text)

		save_settings(tickets_per_page=2)
		self.assertEqual(listed(), newest_first[:2])
		self.assertEqual(listed(2), newest_first[2:4])
		self.assertEqual(listed(3), newest_first[4:])
		self.assertEqual(listed(99), newest_first[4:], "a page past the end shows the last one")
		self.assertIn("Page 1 of 3", s.get(self.web.url("/mh/tickets"), timeout=30).text)

		save_settings(tickets_per_page=0)
		self.assertEqual(listed(), newest_first, "0 shows every ticket on one page")
		self.assertNotIn("mh-pages", s.get(self.web.url("/mh/tickets"), timeout=30).text)

	def test_ticket_page_shows_the_conversation_but_no_internal_notes(self):
		ticket = self.ticket_for(ALICE)
		add_message(ticket, ALICE, "<p>It is on fire.</p>", minutes_ago=10)
		add_message(ticket, AGENT, "<p>Unplug it, please.</p>", received=False)
		frappe.get_doc("MH Ticket", ticket).add_comment("Comment", "INTERNAL NOTE: she has a toaster")
		frappe.db.commit()
		page = self.session(ALICE).get(self.web.url(f"/mh/tickets/{ticket}"), timeout=30)
		self.assertEqual(page.status_code, 200)
		self.assertIn("It is on fire.", page.text)
		self.assertIn("Unplug it, please.", page.text)
		self.assertNotIn("INTERNAL NOTE", page.text)
		self.assertLess(page.text.index("It is on fire."), page.text.index("Unplug it, please."))

	def test_another_customers_ticket_page_file_and_api_answer_403(self):
		ticket = self.ticket_for(ALICE, "Alice's secret printer")
		communication = add_message(ticket, ALICE, "<p>My account number is ACCT-93517.</p>")
		file_url, _renamed = store_attachment(ticket, "alice-secret.txt", b"alice's secret")
		frappe.db.commit()
		self.assertTrue(file_url.startswith("/private/files/"))
		alice, bob = self.session(ALICE), self.session(BOB)
		self.assertEqual(alice.get(self.web.url(file_url), timeout=30).status_code, 200, "her own file")

		requests_by_bob = {
			"page": bob.get(self.web.url(f"/mh/tickets/{ticket}"), timeout=30),
			"file": bob.get(self.web.url(file_url), timeout=30),
			"resource": bob.get(self.web.url(f"/api/resource/MH Ticket/{ticket}"), timeout=30),
			"client.get": bob.get(
				self.web.url("/api/method/frappe.client.get"),
				params={"doctype": "MH Ticket", "name": ticket},
				timeout=30,
			),
			"communication": bob.get(
				self.web.url(f"/api/resource/Communication/{communication}"), timeout=30
			),
			"reply": self.post(bob, "reply_to_ticket", {"ticket": ticket, "message": "mine now"}),
			"reopen": self.post(bob, "reopen_ticket", {"ticket": ticket}),
			"unknown ticket": bob.get(self.web.url("/mh/tickets/MP-999999"), timeout=30),
		}
		for what, response in requests_by_bob.items():
			with self.subTest(what=what):
				self.assertEqual(response.status_code, 403, response.text[:300])
				self.assertNotIn("secret printer", response.text)
				self.assertNotIn("ACCT-93517", response.text)
				self.assertNotIn("alice's secret", response.text)
		self.assertEqual(
			frappe.db.count("Communication", {"reference_name": ticket}), 1, "Bob's reply was refused"
		)

	def test_internal_notes_do_not_reach_the_customer_through_the_api(self):
		# Frappe caches the start of each comment on the document (_comments), which the API returns.
		ticket = self.ticket_for(ALICE)
		frappe.get_doc("MH Ticket", ticket).add_comment("Comment", "NOTE-7731: refund only if she insists")
		# The intake fields say which rules matched: for agents only (permission level 1).
		frappe.db.set_value(
			"MH Ticket",
			ticket,
			{"intake_note": "RULE-TRACE-4410 matched", "first_message_id": "<MID-5520@example.com>"},
		)
		frappe.db.commit()
		alice = self.session(ALICE)
		responses = {
			"resource": alice.get(self.web.url(f"/api/resource/MH Ticket/{ticket}"), timeout=30),
			"client.get": alice.get(
				self.web.url("/api/method/frappe.client.get"),
				params={"doctype": "MH Ticket", "name": ticket},
				timeout=30,
			),
			"list": alice.get(
				self.web.url("/api/resource/MH Ticket"),
				params={"fields": json.dumps(["name", "_comments", "intake_note", "first_message_id"])},
				timeout=30,
			),
		}
		for what, response in responses.items():
			with self.subTest(what=what):
				self.assertEqual(response.status_code, 200, response.text[:300])
				self.assertIn(ticket, response.text, "her own ticket")
				self.assertNotIn("NOTE-7731", response.text)
				self.assertNotIn("RULE-TRACE-4410", response.text)
				self.assertNotIn("MID-5520", response.text)
		cached = json.loads(frappe.db.get_value("MH Ticket", ticket, "_comments"))
		self.assertEqual(len(cached), 1, "the list view's comment count stays")
		as_agent = self.session(AGENT).get(
			self.web.url("/api/method/frappe.client.get"),
			params={"doctype": "MH Ticket", "name": ticket},
			timeout=30,
		)
		self.assertEqual(as_agent.status_code, 200, as_agent.text[:300])
		self.assertEqual(as_agent.json()["message"]["intake_note"], "RULE-TRACE-4410 matched")

	def test_hide_helpdesk_from_client(self):
		ticket = self.ticket_for(ALICE)
		s = self.session(ALICE)
		self.assertIn(
			'href="/mh/tickets"', s.get(self.web.url("/me"), timeout=30).text, "the portal menu entry"
		)
		save_settings(hide_helpdesk_from_client=1)
		for path in ("/mh/tickets", f"/mh/tickets/{ticket}", "/mh/new"):
			with self.subTest(path=path):
				self.assertEqual(s.get(self.web.url(path), timeout=30).status_code, 404)
				self.assertEqual(self.session().get(self.web.url(path), timeout=30).status_code, 404)
		self.assertEqual(
			self.post(s, "reply_to_ticket", {"ticket": ticket, "message": "hi"}).status_code, 404
		)
		self.assertNotIn('href="/mh/tickets"', s.get(self.web.url("/me"), timeout=30).text)


class TestPortalActions(PortalTestCase):
	def test_reply_with_attachment_hands_the_ticket_to_the_agents(self):
		ticket = self.ticket_for(ALICE, status="Waiting on Customer")
		s = self.session(ALICE)
		response = self.post(
			s,
			"reply_to_ticket",
			{"ticket": ticket, "message": "Here is the photo.\n<script>alert(1)</script>"},
			files=[("attachments", ("photo.txt", b"a photo", "text/plain"))],
		)
		self.assertEqual(response.status_code, 200, response.text[:500])
		ticket_doc = frappe.get_doc("MH Ticket", ticket)
		self.assertEqual(ticket_doc.status, "Open")
		[message] = frappe.get_all(
			"Communication",
			filters={"reference_name": ticket},
			fields=["sent_or_received", "sender", "content"],
		)
		self.assertEqual((message.sent_or_received, message.sender), ("Received", ALICE))
		self.assertNotIn("<script>", message.content, "the customer's text is stored escaped")
		[file] = frappe.get_all(
			"File", filters={"attached_to_name": ticket}, fields=["file_name", "is_private", "file_url"]
		)
		self.assertEqual((file.file_name, file.is_private), ("photo.txt", 1))
		page = s.get(self.web.url(f"/mh/tickets/{ticket}"), timeout=30).text
		self.assertIn("Here is the photo.", page)
		self.assertIn(file.file_url, page)
		self.assertEqual(s.get(self.web.url(file.file_url), timeout=30).content, b"a photo")

	def test_attachment_over_the_limit_is_refused_with_a_clear_error(self):
		ticket = self.ticket_for(ALICE)
		save_settings(max_attachment_size_mb=1)
		s = self.session(ALICE)
		page = s.get(self.web.url(f"/mh/tickets/{ticket}"), timeout=30).text
		self.assertIn('data-limit="1048576"', page, "the page tells the browser the limit")
		response = self.post(
			s,
			"reply_to_ticket",
			{"ticket": ticket, "message": "The big log"},
			files=[("attachments", ("big.log", b"x" * (1024 * 1024 + 1), "text/plain"))],
		)
		self.assertEqual(response.status_code, 417, response.text[:300])
		self.assertEqual(response.json()["exc_type"], "AttachmentTooLargeError")
		messages = [json.loads(m)["message"] for m in json.loads(response.json()["_server_messages"])]
		self.assertIn("big.log is too large: files may be at most 1.0 MB.", messages)
		self.assertEqual(frappe.db.count("Communication", {"reference_name": ticket}), 0, "nothing stored")
		self.assertEqual(frappe.db.count("File", {"attached_to_name": ticket}), 0)

	def test_reopen_allowed_and_refused(self):
		ticket = self.ticket_for(ALICE, status="Closed")
		s = self.session(ALICE)

		save_settings(allow_reopen=0)
		page = s.get(self.web.url(f"/mh/tickets/{ticket}"), timeout=30).text
		self.assertNotIn(REOPEN_BUTTON, page)
		self.assertNotIn(REPLY_FORM, page, "a closed ticket takes no replies")
		refused = self.post(s, "reopen_ticket", {"ticket": ticket})
		self.assertEqual(refused.status_code, 403, refused.text[:300])
		self.assertEqual(refused.json()["exc_type"], "ReopenNotAllowedError")
		reply = self.post(s, "reply_to_ticket", {"ticket": ticket, "message": "Hello?"})
		self.assertEqual(reply.json().get("exc_type"), "TicketClosedError")
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket, "status"), "Closed")

		save_settings(allow_reopen=1)
		self.assertIn(REOPEN_BUTTON, s.get(self.web.url(f"/mh/tickets/{ticket}"), timeout=30).text)
		allowed = self.post(s, "reopen_ticket", {"ticket": ticket})
		self.assertEqual(allowed.status_code, 200, allowed.text[:300])
		ticket_doc = frappe.get_doc("MH Ticket", ticket)
		self.assertEqual((ticket_doc.status, ticket_doc.closed_on), ("Open", None))
		notes = frappe.get_all(
			"Comment", filters={"reference_name": ticket, "comment_type": "Info"}, pluck="content"
		)
		self.assertTrue(any("Re-opened by" in note for note in notes), notes)

	def test_changes_need_post(self):
		ticket = self.ticket_for(ALICE, status="Closed")
		response = self.session(ALICE).get(
			self.web.url("/api/method/machhelpdesk.portal.reopen_ticket"),
			params={"ticket": ticket},
			timeout=30,
		)
		self.assertEqual(response.status_code, 403, response.text[:300])
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket, "status"), "Closed")

	def test_signed_in_customer_opens_a_ticket(self):
		s = self.session(ALICE)
		response = self.post(
			s,
			"create_ticket",
			{"subject": "Scanner jammed", "description": "Paper everywhere."},
			files=[("attachments", ("jam.txt", b"jam", "text/plain"))],
		)
		self.assertEqual(response.status_code, 200, response.text[:500])
		result = response.json()["message"]
		ticket = frappe.get_doc("MH Ticket", result["ticket"])
		self.assertEqual((ticket.raised_by, ticket.subject, ticket.status), (ALICE, "Scanner jammed", "Open"))
		self.assertEqual(ticket.contact, frappe.db.get_value("Contact", {"user": ALICE}))
		self.assertEqual(result["url"], f"/mh/tickets/{ticket.name}")
		self.assertEqual(s.get(self.web.url(result["url"]), timeout=30).status_code, 200)
		self.assertEqual(frappe.db.count("File", {"attached_to_name": ticket.name, "is_private": 1}), 1)

	def test_guest_submission_follows_the_registration_settings(self):
		guest = self.session()
		refused = self.post(
			guest, "create_ticket", {"subject": "Hi", "description": "x", "email": "g@example.com"}
		)
		self.assertEqual(refused.status_code, 403, "registration required: guests log in first")

		save_settings(require_registration=0)
		page = guest.get(self.web.url("/mh/new"), timeout=30)
		self.assertEqual(page.status_code, 200)
		nonce = re.search(r'name="nonce" value="([^"]+)"', page.text).group(1)
		form = {
			"subject": "Guest problem",
			"description": "I have no account.",
			"email": "Guest.Person@example.com",
			"full_name": "Guest Person",
		}
		self.assertEqual(self.post(guest, "create_ticket", form).status_code, 403, "no nonce, no ticket")
		created = self.post(guest, "create_ticket", {**form, "nonce": nonce})
		self.assertEqual(created.status_code, 200, created.text[:500])
		result = created.json()["message"]
		self.assertIsNone(result["url"], "a guest cannot see the ticket page")
		ticket = frappe.get_doc("MH Ticket", result["ticket"])
		self.assertEqual(
			(ticket.raised_by, ticket.raised_by_name), ("guest.person@example.com", "Guest Person")
		)
		self.assertTrue(ticket.contact, "the unknown-sender policy made a contact (auto-generate accounts)")
		again = self.post(guest, "create_ticket", {**form, "nonce": nonce})
		self.assertEqual(again.status_code, 403, "a nonce works once")
		self.assertEqual(frappe.db.count("MH Ticket", {"raised_by": "guest.person@example.com"}), 1)
