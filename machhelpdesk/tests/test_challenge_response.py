"""Challenge-response against real servers: Dovecot for intake, an SMTP sink on 127.0.0.1 for the
challenge mail (sent by a real Email Queue flush), and the site served by gunicorn for /mh/confirm.

Unknown senders' mail is held and challenged once; confirming releases it into tickets dated by
arrival; machines, forged senders and floods are never challenged; tokens are single use and only
their hash is stored; held mail expires after the kill period; agents release, allow or block.
"""

import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from unittest.mock import patch

import requests

import frappe
from frappe.utils import add_to_date, get_datetime, now_datetime
from frappe.utils.password import get_encryption_key

from machhelpdesk import challenge_response
from machhelpdesk.engine.challenge import hash_token, make_form_nonce
from machhelpdesk.engine.message import parse_message
from machhelpdesk.intake import ensure_contact, raw_root, read_raw, to_naive_utc
from machhelpdesk.testing.smtp_sink import SMTPSink
from machhelpdesk.testing.webserver import FrappeWebServer
from machhelpdesk.tests.factories import (
	flush_outgoing_mail,
	ledger,
	make_message,
	make_user,
	outgoing_mail_to,
)
from machhelpdesk.tests.test_intake import DSN, IntakeTestCase

LINK = re.compile(r"/mh/confirm\?token=([A-Za-z0-9_-]+)")
PASSWORD = "Challenge-Test-Pa55word!"
SENDER = "Olga Unknown <olga@example.com>"
DEFAULT_SETTINGS = {
	"require_registration": 1,
	"auto_create_accounts": 1,
	"require_confirmation": 1,
	"kill_unconfirmed_after_days": 2,
	"challenge_hourly_cap": 100,
	"challenge_only_authenticated": 0,
	"trusted_authserv_id": "",
}


def set_settings(**values) -> None:
	for fieldname, value in values.items():
		frappe.db.set_single_value("MH Settings", fieldname, value)
	frappe.db.commit()


def challenges(address: str | None = None) -> list[frappe._dict]:
	filters = {"email": address} if address else {}
	return frappe.get_all(
		"MH Sender Challenge",
		filters=filters,
		fields=["name", "email", "status", "token_hash", "issued_on", "expires_on", "confirmed_by"],
		order_by="creation asc",
	)


def is_account_holder(address: str) -> bool:
	"""A Contact with this address linked to a user: what makes a sender known to intake."""
	contact = frappe.db.get_value("Contact Email", {"email_id": address, "parenttype": "Contact"}, "parent")
	return bool(contact and frappe.db.get_value("Contact", contact, "user"))


def mail_text(mail) -> str:
	"""Every decoded text part of a received mail, joined."""
	return "\n".join(
		part.get_content() for part in mail.message.walk() if part.get_content_maintype() == "text"
	)


class ChallengeTestCase(IntakeTestCase):
	"""The seed's defaults (registration, auto-generated accounts and confirmation all on), with a real
	outgoing Email Account pointed at an SMTP sink."""

	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		cls.sink = SMTPSink()
		cls.sink.start()
		cls.outgoing = outgoing_mail_to(cls.sink)
		cls.outgoing.__enter__()

	@classmethod
	def tearDownClass(cls):
		cls.outgoing.__exit__(None, None, None)
		cls.sink.stop()
		set_settings(**DEFAULT_SETTINGS)
		super().tearDownClass()

	def setUp(self):
		super().setUp()
		set_settings(**DEFAULT_SETTINGS)
		frappe.db.delete("Email Queue Recipient")
		frappe.db.delete("Email Queue")
		frappe.db.commit()
		self.sink.clear()

	def flush(self) -> list:
		"""Send what the Email Queue holds (as the scheduler would) and return every mail the sink has."""
		flush_outgoing_mail()
		return self.sink.messages

	def wait_for_mail(self, count: int) -> list:
		flush_outgoing_mail()
		return self.sink.wait_for(count, timeout=20)

	def token_from(self, mail) -> str:
		match = LINK.search(mail_text(mail))
		self.assertIsNotNone(match, mail_text(mail)[:2000])
		return match.group(1)

	def held_rows(self) -> list[frappe._dict]:
		return [row for row in ledger(self.account.name) if row.state == "Held"]


class TestSettingsCombinations(ChallengeTestCase):
	"""Item 2's table: what an unknown sender's mail does under each combination of the three boxes."""

	def outcome(self, sender: str, **settings) -> frappe._dict:
		set_settings(**settings)
		self.deliver(make_message(sender=sender, subject=f"Question from {sender}"))
		self.pull()
		row = next(r for r in ledger(self.account.name) if r.subject == f"Question from {sender}")
		return row

	def test_registration_off_tickets_anyone_with_an_account_only_when_auto_generate_is_on(self):
		for auto, confirm in ((1, 0), (1, 1), (0, 0), (0, 1)):
			with self.subTest(auto_create_accounts=auto, require_confirmation=confirm):
				sender = f"reg-off-{auto}{confirm}@example.com"
				row = self.outcome(
					sender, require_registration=0, auto_create_accounts=auto, require_confirmation=confirm
				)
				self.assertEqual(row.state, "Ticketed", row.reason)
				self.assertEqual(is_account_holder(sender), bool(auto))
		self.assertEqual(self.flush(), [], "registration is not required: nobody is challenged")
		self.assertEqual(challenges(), [])

	def test_registration_on_without_auto_generate_discards_unknown_senders(self):
		for confirm in (0, 1):
			with self.subTest(require_confirmation=confirm):
				sender = f"discard-{confirm}@example.com"
				row = self.outcome(
					sender, require_registration=1, auto_create_accounts=0, require_confirmation=confirm
				)
				self.assertEqual(row.state, "Discarded")
				self.assertEqual(row.reason, "discarded: unknown sender")
				self.assertEqual(row.server_action, "Moved", "discarded mail is moved like parsed mail")
				self.assertFalse(is_account_holder(sender))
		self.assertEqual(frappe.db.count("MH Ticket"), 0)
		self.assertEqual(self.flush(), [])

	def test_confirmation_off_creates_the_account_then_the_ticket(self):
		row = self.outcome(
			"noconfirm@example.com", require_registration=1, auto_create_accounts=1, require_confirmation=0
		)
		self.assertEqual(row.state, "Ticketed")
		self.assertTrue(is_account_holder("noconfirm@example.com"))
		user = frappe.get_doc("User", "noconfirm@example.com")
		self.assertEqual(user.user_type, "Website User")
		self.assertIn("MH Customer", [r.role for r in user.roles])
		contact = frappe.db.get_value("MH Ticket", row.ticket, "contact")
		self.assertTrue(contact)
		self.assertEqual(self.flush(), [], "no challenge, and no welcome mail with a password")

	def test_all_three_on_holds_and_challenges(self):
		row = self.outcome(
			"heldone@example.com", require_registration=1, auto_create_accounts=1, require_confirmation=1
		)
		self.assertEqual((row.state, row.ticket, row.server_action), ("Held", None, "Moved"))
		self.assertIn("challenge sent", row.reason)
		self.assertFalse(is_account_holder("heldone@example.com"), "the account waits for confirmation")
		[mail] = self.wait_for_mail(1)
		self.assertEqual(mail.rcpt_tos, ("heldone@example.com",))

	def test_known_sender_is_ticketed_directly(self):
		set_settings(require_confirmation=0)
		self.outcome("known@example.com")  # makes the account
		row = self.outcome("known@example.com", require_confirmation=1)
		self.assertEqual(row.state, "Ticketed")
		self.assertEqual(self.flush(), [])


class TestNeverChallenged(ChallengeTestCase):
	def test_machines_blocked_and_own_addresses_get_no_challenge(self):
		frappe.get_doc(
			{"doctype": "MH Blocking Filter", "filter_type": "Address", "value": "spammer@example.com"}
		).insert(ignore_permissions=True)
		frappe.db.commit()
		stranger = "stranger@example.com"
		self.deliver(
			make_message(
				sender=stranger,
				subject="Out of office: Re: your offer",
				headers={"Auto-Submitted": "auto-replied"},
			)
		)
		self.deliver(DSN % b"<never-sent@helpdesk.test>")
		self.deliver(
			make_message(sender=stranger, subject="Weekly digest", headers={"List-Id": "<news.example.com>"})
		)
		self.deliver(make_message(sender=stranger, subject="Null envelope", headers={"Return-Path": "<>"}))
		self.deliver(make_message(sender="spammer@example.com", subject="Buy now"))
		self.deliver(make_message(sender=self.account.email_address, subject="From ourselves"))
		summary = self.pull()
		self.assertEqual(summary["seen"], 6, summary["text"])
		states = {row.subject: (row.state, row.reason) for row in ledger(self.account.name)}
		self.assertEqual(states["Out of office: Re: your offer"][0], "Ignored")
		self.assertEqual(states["Undelivered Mail Returned to Sender"][0], "Bounced")
		self.assertEqual(states["Null envelope"][0], "Bounced")
		self.assertEqual(states["Buy now"][0], "Blocked")
		self.assertEqual(states["From ourselves"][0], "Ignored")
		# List mail from an unknown sender is held (a list post may be a real request), never challenged.
		state, reason = states["Weekly digest"]
		self.assertEqual(state, "Held")
		self.assertIn("never challenged", reason)
		self.assertEqual(
			frappe.db.get_value("MH Inbound Mail", {"subject": "Weekly digest"}, "challenge_status"),
			"Not Sent",
		)
		self.assertEqual(challenges(), [])
		self.assertEqual(self.flush(), [], "no challenge to a machine, a blocked sender or ourselves")
		self.assertEqual(frappe.db.count("MH Ticket"), 0)


class TestRateLimits(ChallengeTestCase):
	def test_ten_mails_in_a_minute_from_one_sender_give_exactly_one_challenge(self):
		for i in range(10):
			self.deliver(make_message(sender=SENDER, subject=f"Hello {i}"))
		self.pull()
		rows = self.held_rows()
		self.assertEqual(len(rows), 10)
		[challenge] = challenges("olga@example.com")
		linked = frappe.get_all(
			"MH Inbound Mail", filters={"state": "Held"}, fields=["challenge", "challenge_status"]
		)
		self.assertEqual(
			{(r.challenge, r.challenge_status) for r in linked}, {(challenge.name, "Outstanding")}
		)
		self.assertEqual(sum("challenge sent" in r.reason for r in rows), 1)
		self.assertEqual(sum("already outstanding" in r.reason for r in rows), 9)
		self.wait_for_mail(1)
		time.sleep(1)
		self.assertEqual(len(self.flush()), 1)

	def test_at_most_three_challenges_per_address_a_day(self):
		for i in range(4):
			self.deliver(make_message(sender=SENDER, subject=f"Try {i}"))
			self.pull()
			# The link lapses unused, so the next mail may be challenged again, within the daily cap.
			frappe.db.set_value(
				"MH Sender Challenge",
				{"status": "Outstanding"},
				"expires_on",
				add_to_date(now_datetime(), minutes=-1),
			)
			frappe.db.commit()
		self.assertEqual(len(challenges("olga@example.com")), 3)
		last = ledger(self.account.name)[-1]
		self.assertEqual(last.state, "Held")
		self.assertIn("held without a challenge", last.reason)
		self.assertIn("in the last 24 hours (the limit is 3)", last.reason)
		self.assertEqual(len(self.wait_for_mail(3)), 3)

	def test_global_hourly_cap(self):
		set_settings(challenge_hourly_cap=2)
		for i in range(3):
			self.deliver(make_message(sender=f"flood{i}@example.com", subject=f"Flood {i}"))
		self.pull()
		self.assertEqual(len(challenges()), 2)
		last = ledger(self.account.name)[-1]
		self.assertEqual(last.state, "Held")
		self.assertIn("the limit of 2 challenges per hour", last.reason)
		self.assertEqual(len(self.wait_for_mail(2)), 2)

	def test_only_authenticated_senders_are_challenged_when_asked(self):
		set_settings(challenge_only_authenticated=1, trusted_authserv_id="mx.helpdesk.test")
		self.deliver(
			make_message(
				sender="forged@example.com",
				subject="Forged",
				headers={
					"Authentication-Results": "mx.helpdesk.test; spf=fail smtp.mailfrom=example.com; dkim=none"
				},
			)
		)
		self.deliver(
			make_message(
				sender="selfsigned@example.com",
				subject="Claims to pass",
				headers={"Authentication-Results": "mx.attacker.test; spf=pass; dkim=pass"},
			)
		)
		self.deliver(
			make_message(
				sender="genuine@example.com",
				subject="Genuine",
				headers={
					"Authentication-Results": "mx.helpdesk.test; spf=pass smtp.mailfrom=example.com; dkim=none"
				},
			)
		)
		self.pull()
		reasons = {row.subject: row.reason for row in ledger(self.account.name)}
		self.assertIn(
			"passed neither SPF nor DKIM at mx.helpdesk.test (spf=fail, dkim=none)", reasons["Forged"]
		)
		self.assertIn("passed neither SPF nor DKIM", reasons["Claims to pass"])
		self.assertIn("challenge sent", reasons["Genuine"])
		[mail] = self.wait_for_mail(1)
		self.assertEqual(mail.rcpt_tos, ("genuine@example.com",))


class TestChallengeEdges(ChallengeTestCase):
	def test_a_second_challenge_for_an_address_cannot_be_issued_while_one_is_outstanding(self):
		self.deliver(make_message(sender=SENDER))
		self.pull()
		[row] = self.held_rows()
		doc = frappe.get_doc("MH Inbound Mail", row.name)
		queued = frappe.db.count("Email Queue")
		parsed = parse_message(read_raw(doc.raw_path))
		# What a second worker pulling another mailbox would try at the same moment: the unique
		# column refuses it, and nothing of it is left behind.
		with self.assertRaises(challenge_response.ChallengeOutstanding):
			challenge_response.issue_challenge(self.account, doc, parsed, "olga@example.com", now_datetime())
		frappe.db.commit()
		self.assertEqual(len(challenges("olga@example.com")), 1)
		self.assertEqual(frappe.db.count("Email Queue"), queued)

	def test_without_an_outgoing_mail_account_mail_is_held_and_the_ledger_says_why(self):
		frappe.db.set_value("Email Account", {"default_outgoing": 1}, "enable_outgoing", 0)
		frappe.db.commit()
		frappe.local.outgoing_email_account = {}  # Frappe caches the account for the request
		try:
			self.deliver(make_message(sender=SENDER))
			summary = self.pull()
		finally:
			frappe.db.set_value("Email Account", {"default_outgoing": 1}, "enable_outgoing", 1)
			frappe.db.commit()
			frappe.local.outgoing_email_account = {}
		self.assertEqual((summary["held"], summary["failed"]), (1, 0), summary["text"])
		[row] = self.held_rows()
		self.assertIn("the challenge mail could not be queued", row.reason)
		self.assertEqual(frappe.db.get_value("MH Inbound Mail", row.name, "challenge_status"), "Not Sent")
		self.assertEqual(challenges(), [])

	def test_a_sender_confirmed_during_the_pull_is_not_held(self):
		ensure_contact(frappe._dict(email="olga@example.com", name="Olga"))
		frappe.db.commit()
		# The pull looked the sender up before they confirmed (intake caches that for the pull).
		with patch(
			"machhelpdesk.intake.unknown_sender_outcome",
			return_value=("Held", "unknown sender: held until the sender confirms", True),
		):
			self.deliver(make_message(sender=SENDER, subject="Just confirmed"))
			self.pull()
		[row] = ledger(self.account.name)
		self.assertEqual(row.state, "Ticketed")
		self.assertIn("confirmed while this message was being read", row.reason)
		self.assertEqual(challenges(), [])

	def test_hourly_job_releases_held_mail_of_senders_known_since(self):
		self.deliver(make_message(sender=SENDER, subject="Held, then known"))
		self.pull()
		self.assertEqual(challenge_response.release_mail_of_confirmed_senders(), 0)
		ensure_contact(frappe._dict(email="olga@example.com", name="Olga"))  # an admin made the account
		frappe.db.commit()
		self.assertEqual(challenge_response.release_mail_of_confirmed_senders(), 1)
		[row] = ledger(self.account.name)
		self.assertEqual(row.state, "Ticketed")


class TestKill(ChallengeTestCase):
	def test_held_mail_expires_after_the_kill_period_and_its_raw_copy_is_deleted(self):
		self.deliver(make_message(sender=SENDER, subject="Will expire"))
		self.deliver(make_message(sender="other@example.com", subject="Shares its raw copy"))
		self.pull()
		row = frappe.get_doc("MH Inbound Mail", {"subject": "Will expire"})
		other = frappe.get_doc("MH Inbound Mail", {"subject": "Shares its raw copy"})
		path = os.path.join(raw_root(), row.raw_path)
		self.assertTrue(os.path.exists(path))
		held_on = get_datetime(row.held_on)
		kill_time = held_on + timedelta(days=2)

		with self.freeze_time(kill_time - timedelta(minutes=1)):
			self.assertEqual(challenge_response.expire_held_mail(), 0)
		self.assertEqual(frappe.db.get_value("MH Inbound Mail", row.name, "state"), "Held")

		# A failed row pointing at the same raw copy keeps it; once it is gone, the copy goes.
		other.db_set({"state": "Failed", "raw_path": row.raw_path, "held_on": None})
		frappe.db.commit()
		with self.freeze_time(kill_time + timedelta(minutes=1)):
			self.assertEqual(challenge_response.expire_held_mail(), 1)
		row.reload()
		self.assertEqual((row.state, row.raw_path), ("Expired", ""))
		self.assertIn("did not confirm within 2 days", row.reason)
		self.assertTrue(os.path.exists(path), "a failed message still needs the raw copy")
		[challenge] = challenges("olga@example.com")
		self.assertEqual(challenge.status, "Expired")
		self.assertIsNone(frappe.db.get_value("MH Sender Challenge", challenge.name, "active_for"))

		frappe.db.delete("MH Inbound Mail", {"name": other.name})
		self.deliver(make_message(sender="third@example.com", subject="Also expires"))
		self.pull()
		third = frappe.get_doc("MH Inbound Mail", {"subject": "Also expires"})
		third_path = os.path.join(raw_root(), third.raw_path)
		with self.freeze_time(get_datetime(third.held_on) + timedelta(days=2, minutes=1)):
			self.assertEqual(challenge_response.expire_held_mail(), 1)
		self.assertFalse(os.path.exists(third_path), "the raw copy of expired mail is deleted")
		self.assertEqual(frappe.db.get_value("MH Inbound Mail", third.name, "state"), "Expired")

	def test_kill_period_zero_keeps_held_mail(self):
		set_settings(kill_unconfirmed_after_days=0)
		self.deliver(make_message(sender=SENDER))
		self.pull()
		[row] = self.held_rows()
		with self.freeze_time(now_datetime() + timedelta(days=365)):
			self.assertEqual(challenge_response.expire_held_mail(), 0)
		self.assertEqual(frappe.db.get_value("MH Inbound Mail", row.name, "state"), "Held")


class TestHeldMailActions(ChallengeTestCase):
	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		cls.agent = make_user("held.agent@helpdesk.test", ("MH Agent",))
		frappe.db.commit()

	def setUp(self):
		super().setUp()
		# reset_intake_data removes customers' website users, so the customer is made per test.
		self.customer = make_user("held.customer@example.net", ("MH Customer",), user_type="Website User")
		frappe.db.commit()

	def tearDown(self):
		frappe.set_user("Administrator")
		super().tearDown()

	def hold_two(self) -> list[frappe._dict]:
		now = datetime.now(timezone.utc)
		self.dovecot.append(
			self.user, make_message(sender=SENDER, subject="Second"), internal_date=now - timedelta(hours=1)
		)
		self.dovecot.append(
			self.user, make_message(sender=SENDER, subject="First"), internal_date=now - timedelta(hours=2)
		)
		self.pull()
		return sorted(self.held_rows(), key=lambda r: r.subject)

	def test_release_makes_one_ticket_now_without_confirming_the_sender(self):
		first, second = self.hold_two()
		frappe.set_user(self.agent)
		result = challenge_response.release_held_mail([first.name])
		frappe.set_user("Administrator")
		frappe.db.commit()
		[ticket] = result["tickets"]
		row = frappe.get_doc("MH Inbound Mail", first.name)
		self.assertEqual((row.state, row.ticket), ("Ticketed", ticket))
		self.assertIn(f"released by {self.agent}", row.reason)
		self.assertEqual(
			get_datetime(frappe.db.get_value("MH Ticket", ticket, "opened_on")), get_datetime(row.received_at)
		)
		self.assertEqual(frappe.db.get_value("MH Inbound Mail", second.name, "state"), "Held")
		self.assertFalse(is_account_holder("olga@example.com"))
		self.assertEqual(challenges("olga@example.com")[0].status, "Outstanding")

	def test_always_allow_confirms_the_sender_and_releases_all_in_arrival_order(self):
		self.hold_two()
		held = self.held_rows()
		frappe.set_user(self.agent)
		result = challenge_response.always_allow_senders([held[0].name])
		frappe.set_user("Administrator")
		frappe.db.commit()
		self.assertEqual(len(result["tickets"]), 2)
		opened = [frappe.db.get_value("MH Ticket", t, ["subject", "opened_on"]) for t in result["tickets"]]
		self.assertEqual([subject for subject, _opened in opened], ["First", "Second"], "oldest first")
		self.assertLess(opened[0][1], opened[1][1])
		self.assertTrue(is_account_holder("olga@example.com"))
		[challenge] = challenges("olga@example.com")
		self.assertEqual((challenge.status, challenge.confirmed_by), ("Confirmed", self.agent))

		self.deliver(make_message(sender=SENDER, subject="Third"))
		self.pull()
		self.assertEqual(ledger(self.account.name)[-1].state, "Ticketed")
		self.assertEqual(len(challenges("olga@example.com")), 1, "never challenged again")

	def test_block_sender_adds_a_filter_and_drops_the_held_mail(self):
		self.hold_two()
		held = self.held_rows()
		frappe.set_user(self.agent)
		result = challenge_response.block_senders([held[0].name])
		frappe.set_user("Administrator")
		frappe.db.commit()
		[name] = result["filters"]
		blocking = frappe.get_doc("MH Blocking Filter", name)
		self.assertEqual(
			(blocking.filter_type, blocking.value, blocking.enabled), ("Address", "olga@example.com", 1)
		)
		self.assertEqual({r.state for r in ledger(self.account.name)}, {"Blocked"})
		self.assertEqual(challenges("olga@example.com")[0].status, "Superseded")
		self.assertEqual(frappe.db.count("MH Ticket"), 0)

		self.deliver(make_message(sender=SENDER, subject="Again"))
		self.pull()
		self.assertEqual(ledger(self.account.name)[-1].state, "Blocked")
		self.assertEqual(len(challenges("olga@example.com")), 1)

	def test_customers_cannot_see_held_mail_or_act_on_it(self):
		self.hold_two()
		names = [row.name for row in self.held_rows()]
		frappe.set_user(self.customer)
		with self.assertRaises(frappe.PermissionError):
			frappe.get_list("MH Inbound Mail", filters={"state": "Held"})
		with self.assertRaises(frappe.PermissionError):
			frappe.get_list("MH Sender Challenge")
		for action in (
			challenge_response.release_held_mail,
			challenge_response.always_allow_senders,
			challenge_response.block_senders,
		):
			with self.subTest(action=action.__name__), self.assertRaises(frappe.PermissionError):
				action(names)
		frappe.set_user("Administrator")
		self.assertEqual(len(self.held_rows()), 2, "nothing changed")
		frappe.set_user(self.agent)
		self.assertEqual(len(frappe.get_list("MH Inbound Mail", filters={"state": "Held"})), 2)

	def test_agents_see_challenges_but_not_their_token_hash(self):
		self.hold_two()
		frappe.set_user(self.agent)
		listed = frappe.get_list("MH Sender Challenge", fields=["name", "email", "token_hash"])
		self.assertEqual([row.email for row in listed], ["olga@example.com"])
		self.assertNotIn("token_hash", listed[0], "field-level permission drops it from the list")
		opened = frappe.client.get("MH Sender Challenge", listed[0].name)
		self.assertEqual(opened["email"], "olga@example.com")
		self.assertIsNone(opened.get("token_hash"))
		frappe.set_user("Administrator")
		self.assertEqual(len(frappe.db.get_value("MH Sender Challenge", listed[0].name, "token_hash")), 64)


class TestConfirmOverHTTP(ChallengeTestCase):
	"""The challenge link, followed against the site served by gunicorn on 127.0.0.1."""

	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		cls.agent = make_user("held.web.agent@helpdesk.test", ("MH Agent",), password=PASSWORD)
		frappe.db.commit()  # gunicorn is another process: it must see these
		cls.web = FrappeWebServer(frappe.local.sites_path, frappe.local.site, python=sys.executable)
		cls.web.start()

	@classmethod
	def tearDownClass(cls):
		cls.web.stop()
		super().tearDownClass()

	def get(self, path: str, session: requests.Session | None = None) -> requests.Response:
		frappe.db.commit()  # let gunicorn see this process's writes, and this process see gunicorn's
		response = (session or requests).get(self.web.url(path), timeout=60)
		frappe.db.commit()
		if path.startswith("/mh/"):
			self.assertNotIn("Traceback", response.text, "the page never shows a stack trace")
		return response

	def post(self, path: str, data: dict, session: requests.Session | None = None) -> requests.Response:
		frappe.db.commit()
		response = (session or requests).post(self.web.url(path), data=data, timeout=60)
		frappe.db.commit()
		if path.startswith("/mh/"):
			self.assertNotIn("Traceback", response.text, "the page never shows a stack trace")
		return response

	def login(self, user: str) -> requests.Session:
		return self.web.login(user, PASSWORD)

	def form_field(self, response: requests.Response, name: str) -> str:
		match = re.search(rf'name="{name}" value="([^"]*)"', response.text)
		self.assertIsNotNone(match, response.text[-3000:])
		return match.group(1)

	def challenge_link(self) -> tuple[str, str]:
		"""Hold one mail from SENDER and return (the link's path, its token) from the sent challenge."""
		[mail] = self.wait_for_mail(1)
		token = self.token_from(mail)
		return f"/mh/confirm?token={token}", token

	def test_end_to_end_held_challenged_confirmed_then_ticketed_directly(self):
		arrived = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
		self.dovecot.append(
			self.user,
			make_message(
				sender=SENDER, subject="My printer <b>is</b> on fire", message_id="<held-1@example.com>"
			),
			internal_date=arrived,
		)
		summary = self.pull()
		self.assertEqual((summary["held"], summary["tickets"]), (1, 0), summary["text"])
		[row] = self.held_rows()
		self.assertEqual(self.inbox(), [], "held mail is moved off the server like parsed mail")

		[mail] = self.wait_for_mail(1)
		headers = mail.message
		self.assertEqual(mail.rcpt_tos, ("olga@example.com",))
		self.assertEqual(headers["Auto-Submitted"], "auto-replied")
		self.assertEqual(headers["X-Auto-Response-Suppress"], "All")
		self.assertEqual(headers["In-Reply-To"], "<held-1@example.com>")
		self.assertEqual(headers["Reply-To"], self.account.email_address)
		self.assertIn("My printer <b>is</b> on fire", headers["Subject"])
		token = self.token_from(mail)
		path = f"/mh/confirm?token={token}"

		# The database holds only the token's hash.
		[challenge] = challenges("olga@example.com")
		self.assertEqual(challenge.token_hash, hash_token(token))
		self.assert_token_not_stored(token)

		# GET shows what is confirmed, and confirms nothing.
		page = self.get(path)
		self.assertEqual(page.status_code, 200)
		self.assertIn("olga@example.com", page.text)
		self.assertIn("My printer &lt;b&gt;is&lt;/b&gt; on fire", page.text, "subjects are escaped")
		self.assertNotIn("It started this morning", page.text, "no private content")
		self.assertEqual(frappe.db.get_value("MH Inbound Mail", row.name, "state"), "Held")
		self.assertEqual(challenges("olga@example.com")[0].status, "Outstanding")
		self.assertFalse(is_account_holder("olga@example.com"))

		# The Confirm button's POST, with the page's nonce.
		done = self.post("/mh/confirm", {"token": token, "nonce": self.form_field(page, "nonce")})
		self.assertEqual(done.status_code, 200, done.text[-2000:])
		self.assertIn("your address is confirmed", done.text)
		row = frappe.get_doc("MH Inbound Mail", row.name)
		self.assertEqual(row.state, "Ticketed")
		self.assertIn(row.ticket, done.text)
		ticket = frappe.get_doc("MH Ticket", row.ticket)
		self.assertEqual(get_datetime(ticket.opened_on), get_datetime(row.received_at))
		self.assertEqual(
			get_datetime(ticket.opened_on),
			to_naive_utc(arrived),
			"dated by arrival, in the site's time zone",
		)
		self.assertEqual(ticket.raised_by, "olga@example.com")
		self.assertTrue(ticket.contact)
		self.assertTrue(is_account_holder("olga@example.com"))
		[challenge] = challenges("olga@example.com")
		self.assertEqual((challenge.status, challenge.confirmed_by), ("Confirmed", "link"))

		# A second mail from the address becomes a ticket directly, with no challenge.
		self.deliver(make_message(sender=SENDER, subject="One more thing"))
		summary = self.pull()
		self.assertEqual((summary["tickets"], summary["held"]), (1, 0), summary["text"])
		time.sleep(1)
		self.assertEqual(len(self.flush()), 1, "no second challenge")
		self.assertEqual(len(challenges("olga@example.com")), 1)

		# After sending, the queued copy of the challenge mail no longer carries the token.
		challenge_response.scrub_sent_challenge_mail()
		self.assert_token_not_stored(token, including_email_queue=True)

	def assert_token_not_stored(self, token: str, including_email_queue: bool = False) -> None:
		doctypes = ["MH Sender Challenge", "MH Inbound Mail"]
		if including_email_queue:
			doctypes.append("Email Queue")
		for doctype in doctypes:
			for values in frappe.get_all(doctype, fields=["*"], as_list=True):
				# Quoted-printable mail may wrap the link across lines with soft breaks.
				text = " ".join(str(v) for v in values).replace("=\r\n", "").replace("=\n", "")
				self.assertNotIn(token, text, f"the token is stored in {doctype}")

	def test_used_expired_and_tampered_tokens_confirm_nothing_and_get_a_friendly_page(self):
		self.deliver(make_message(sender=SENDER, subject="First try"))
		self.pull()
		path, token = self.challenge_link()
		key = get_encryption_key()

		# Tampered: one character changed; a truncated link; no token at all.
		tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
		for bad in (f"/mh/confirm?token={tampered}", f"/mh/confirm?token={token[:20]}", "/mh/confirm"):
			with self.subTest(link=bad):
				page = self.get(bad)
				self.assertEqual(page.status_code, 404)
				self.assertIn("This link is not valid", page.text)
		nonce = make_form_nonce(key, hash_token(tampered), time.time())
		page = self.post("/mh/confirm", {"token": tampered, "nonce": nonce})
		self.assertEqual(page.status_code, 404)

		# A POST without the page's nonce (a scanner), or with another token's, gets the form again.
		for data in ({"token": token}, {"token": token, "nonce": nonce}, {"token": token, "nonce": "1.x"}):
			with self.subTest(data=data):
				page = self.post("/mh/confirm", data)
				self.assertEqual(page.status_code, 400)
				self.assertIn("Please press Confirm once more", page.text)
		self.assertEqual(challenges("olga@example.com")[0].status, "Outstanding")
		self.assertEqual(len(self.held_rows()), 1)

		# Expired: the link is past its expiry.
		frappe.db.set_value(
			"MH Sender Challenge",
			{"email": "olga@example.com"},
			"expires_on",
			add_to_date(now_datetime(), minutes=-1),
		)
		page = self.get(path)
		self.assertEqual(page.status_code, 410)
		self.assertIn("This link has expired", page.text)
		page = self.post(
			"/mh/confirm", {"token": token, "nonce": make_form_nonce(key, hash_token(token), time.time())}
		)
		self.assertEqual(page.status_code, 410)
		self.assertEqual(len(self.held_rows()), 1)
		self.assertFalse(is_account_holder("olga@example.com"))

		# Used: a fresh challenge, confirmed once; the second use changes nothing.
		frappe.db.set_value("MH Sender Challenge", {"email": "olga@example.com"}, "status", "Expired")
		frappe.db.set_value("MH Sender Challenge", {"email": "olga@example.com"}, "active_for", None)
		frappe.db.commit()
		self.sink.clear()
		self.deliver(make_message(sender=SENDER, subject="Second try"))
		self.pull()
		path, token = self.challenge_link()
		page = self.get(path)
		data = {"token": token, "nonce": self.form_field(page, "nonce")}
		self.assertEqual(self.post("/mh/confirm", data).status_code, 200)
		self.assertEqual(frappe.db.count("MH Ticket"), 2, "both held messages released")
		for again in (self.post("/mh/confirm", data), self.get(path)):
			self.assertEqual(again.status_code, 200)
			self.assertIn("already confirmed", again.text)
		self.assertEqual(frappe.db.count("MH Ticket"), 2, "a used link confirms nothing more")

	def test_superseded_link_after_block(self):
		self.deliver(make_message(sender=SENDER, subject="Blocked soon"))
		self.pull()
		path, _token = self.challenge_link()
		challenge_response.block_senders([self.held_rows()[0].name])
		page = self.get(path)
		self.assertEqual(page.status_code, 410)
		self.assertIn("no longer valid", page.text)

	def test_held_mail_is_for_agents_only_over_http(self):
		# reset_intake_data removes customers' website users, so the customer is made here.
		customer = make_user(
			"held.web.customer@example.net", ("MH Customer",), user_type="Website User", password=PASSWORD
		)
		frappe.db.commit()
		self.deliver(make_message(sender=SENDER, subject="Private"))
		self.pull()
		names = [row.name for row in self.held_rows()]
		list_path = "/api/method/frappe.client.get_list?doctype=MH%20Inbound%20Mail&filters=%7B%22state%22%3A%22Held%22%7D"
		for who, session in (("guest", requests.Session()), ("customer", self.login(customer))):
			with self.subTest(who=who):
				self.assertEqual(self.get(list_path, session).status_code, 403)
				self.assertNotIn("Private", self.get(list_path, session).text)
				for method in ("release_held_mail", "always_allow_senders", "block_senders"):
					response = self.post(
						f"/api/method/machhelpdesk.challenge_response.{method}",
						{"names": frappe.as_json(names)},
						session,
					)
					self.assertEqual(response.status_code, 403, f"{method}: {response.text[:300]}")
		self.assertEqual(len(self.held_rows()), 1)
		agent = self.login(self.agent)
		listed = self.get(list_path, agent)
		self.assertEqual(listed.status_code, 200)
		self.assertEqual([r["name"] for r in listed.json()["message"]], names)
		released = self.post(
			"/api/method/machhelpdesk.challenge_response.release_held_mail",
			{"names": frappe.as_json(names)},
			agent,
		)
		self.assertEqual(released.status_code, 200, released.text[:500])
		self.assertEqual(len(released.json()["message"]["tickets"]), 1)
		self.assertEqual(self.held_rows(), [])
