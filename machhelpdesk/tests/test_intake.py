"""Mail intake against a real Dovecot: tickets, replies, loops, failures, exactly once."""

import frappe
from frappe.tests.utils import FrappeTestCase

from machhelpdesk.intake import pull_account, reprocess
from machhelpdesk.testing.dovecot import Dovecot
from machhelpdesk.tests.factories import bench_command, ledger, make_account, make_message, reset_intake_data

DSN = b"""From: Mail Delivery System <MAILER-DAEMON@mx.example.com>
To: support@helpdesk.test
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn-1@mx.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

This is the mail system. Your message could not be delivered.
--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com
Final-Recipient: rfc822; nobody@example.com
Action: failed
Status: 5.1.1

--B
Content-Type: text/rfc822-headers

From: support@helpdesk.test
To: nobody@example.com
Subject: Re: your ticket
Message-ID: %s

--B--
"""


class IntakeTestCase(FrappeTestCase):
	"""One Dovecot per class; each test gets its own mailbox user and account."""

	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		cls.dovecot = Dovecot()
		cls.dovecot.start()

	@classmethod
	def tearDownClass(cls):
		cls.dovecot.stop()
		reset_intake_data()
		frappe.db.set_single_value("MH Settings", "require_registration", 1)
		frappe.db.commit()
		super().tearDownClass()

	def setUp(self):
		reset_intake_data()
		# Intake tests take mail from anyone; registration and challenges have tests of their own.
		frappe.db.set_single_value("MH Settings", "require_registration", 0)
		frappe.db.commit()
		self.user, self.password = self.dovecot.new_user(self._testMethodName[:30])
		self.account = make_account(self.dovecot, self.user, self.password)

	def deliver(self, raw: bytes, folder: str = "INBOX") -> int:
		return self.dovecot.append(self.user, raw, folder=folder)

	def pull(self, **kwargs) -> dict:
		summary = pull_account(self.account.name, **kwargs)
		self.assertFalse(summary["error"], summary["text"])
		return summary

	def pull_in_worker(self, *args: str, env: dict | None = None):
		"""Pull in a separate process, as a scheduler worker does (``bench --site S mh-fetch``)."""
		result = bench_command("mh-fetch", "--account", self.account.name, *args, env=env)
		frappe.db.commit()  # end this connection's snapshot, so the worker's commits are visible
		return result

	def inbox(self) -> list[int]:
		return self.dovecot.folder_uids(self.user, "INBOX")

	def parsed_folder(self) -> list[int]:
		return (
			self.dovecot.folder_uids(self.user, "Parsed")
			if "Parsed" in self.dovecot.list_folders(self.user)
			else []
		)


class TestNewTickets(IntakeTestCase):
	def test_new_mail_becomes_one_ticket_and_is_moved(self):
		self.deliver(
			make_message(subject="Printer on fire", attachments=[("log.txt", b"smoke\n", "text/plain")])
		)
		summary = self.pull()
		self.assertEqual((summary["tickets"], summary["moved"], summary["failed"]), (1, 1, 0))
		[row] = ledger(self.account.name)
		self.assertEqual((row.state, row.server_action), ("Ticketed", "Moved"))
		ticket = frappe.get_doc("MH Ticket", row.ticket)
		self.assertEqual(ticket.subject, "Printer on fire")
		self.assertEqual(ticket.raised_by, "carla@example.com")
		self.assertEqual(ticket.raised_by_name, "Carla Customer")
		self.assertEqual(ticket.department, "Support")
		self.assertEqual(ticket.status, "Open")
		self.assertEqual(ticket.imap_account, self.account.name)
		communication = frappe.get_doc(
			"Communication", {"reference_doctype": "MH Ticket", "reference_name": ticket.name}
		)
		self.assertEqual(communication.sent_or_received, "Received")
		self.assertIn("It started this morning.", communication.content)
		files = frappe.get_all(
			"File",
			filters={"attached_to_doctype": "MH Ticket", "attached_to_name": ticket.name},
			fields=["file_name", "is_private"],
		)
		self.assertEqual([(f.file_name, f.is_private) for f in files], [("log.txt", 1)])
		self.assertEqual(self.inbox(), [])
		self.assertEqual(len(self.parsed_folder()), 1)

	def test_fetch_does_not_mark_mail_seen(self):
		self.deliver(make_message())
		self.pull()
		flags = self.dovecot.flags(self.user, "Parsed")
		self.assertTrue(all(b"\\Seen" not in f for f in flags.values()), flags)

	def test_pulling_again_creates_nothing(self):
		for i in range(3):
			self.deliver(make_message(subject=f"Question {i}"))
		self.pull()
		self.assertEqual(frappe.db.count("MH Ticket"), 3)
		summary = self.pull()
		self.assertEqual((summary["seen"], summary["tickets"]), (0, 0))
		self.assertEqual(frappe.db.count("MH Ticket"), 3)
		self.assertEqual(frappe.db.count("MH Inbound Mail"), 3)

	def test_delete_when_moving_is_off(self):
		self.account.move_parsed_email = 0
		self.account.save()
		frappe.db.commit()
		self.deliver(make_message())
		summary = self.pull()
		self.assertEqual((summary["tickets"], summary["deleted"]), (1, 1))
		self.assertEqual(self.inbox(), [])
		self.assertEqual(ledger(self.account.name)[0].server_action, "Deleted")

	def test_same_message_in_two_mailboxes_makes_one_ticket(self):
		raw = make_message(message_id="<shared-copy@example.com>")
		self.deliver(raw)
		other_user, other_password = self.dovecot.new_user("other")
		other = make_account(self.dovecot, other_user, other_password)
		self.dovecot.append(other_user, raw)
		self.pull()
		pull_account(other.name)
		self.assertEqual(frappe.db.count("MH Ticket"), 1)
		self.assertEqual([r.state for r in ledger(other.name)], ["Duplicate"])
		self.assertEqual(
			self.dovecot.folder_uids(other_user, "INBOX"), [], "duplicates are moved like parsed mail"
		)

	def test_sender_is_from_never_reply_to(self):
		self.deliver(make_message(sender="real@example.com", headers={"Reply-To": "attacker@evil.test"}))
		self.pull()
		ticket = frappe.get_doc("MH Ticket", ledger(self.account.name)[0].ticket)
		self.assertEqual(ticket.raised_by, "real@example.com")

	def test_oversized_attachment_is_listed_not_stored(self):
		frappe.db.set_single_value("MH Settings", "max_attachment_size_mb", 1)
		frappe.db.commit()
		try:
			big = b"x" * (1024 * 1024 + 10)
			self.deliver(
				make_message(
					attachments=[
						("huge.bin", big, "application/octet-stream"),
						("small.txt", b"ok", "text/plain"),
					]
				)
			)
			self.pull()
		finally:
			frappe.db.set_single_value("MH Settings", "max_attachment_size_mb", 10)
			frappe.db.commit()
		[row] = ledger(self.account.name)
		self.assertEqual(row.state, "Ticketed")
		ticket = frappe.get_doc("MH Ticket", row.ticket)
		self.assertIn("huge.bin (1.0 MB)", ticket.intake_note)
		files = frappe.get_all("File", filters={"attached_to_name": ticket.name}, pluck="file_name")
		self.assertEqual(files, ["small.txt"])


class TestThreading(IntakeTestCase):
	def first_ticket(self):
		self.deliver(make_message(subject="Invoice question", message_id="<first@example.com>"))
		self.pull()
		return frappe.get_doc("MH Ticket", ledger(self.account.name)[0].ticket)

	def test_reply_with_ticket_number_from_requester_joins(self):
		ticket = self.first_ticket()
		ticket.db_set("status", "Replied")
		frappe.db.commit()
		self.deliver(
			make_message(subject=f"Re: [#{ticket.name}] Invoice question", body="Thanks, one more thing.")
		)
		summary = self.pull()
		self.assertEqual((summary["replies"], summary["tickets"]), (1, 0))
		self.assertEqual(frappe.db.count("MH Ticket"), 1)
		self.assertEqual(
			frappe.db.count(
				"Communication", {"reference_doctype": "MH Ticket", "reference_name": ticket.name}
			),
			2,
		)
		ticket.reload()
		self.assertEqual(ticket.status, "Open", "a customer reply hands the ticket back to the agents")

	def test_same_subject_from_stranger_opens_new_ticket(self):
		ticket = self.first_ticket()
		self.deliver(
			make_message(subject=f"Re: [#{ticket.name}] Invoice question", sender="mallory@evil.test")
		)
		summary = self.pull()
		self.assertEqual((summary["replies"], summary["tickets"]), (0, 1))
		self.assertEqual(frappe.db.count("MH Ticket"), 2)

	def test_in_reply_to_our_message_id_joins(self):
		ticket = self.first_ticket()
		self.deliver(
			make_message(
				subject="no number here",
				sender="someone.else@example.org",
				headers={"In-Reply-To": "<first@example.com>"},
			)
		)
		summary = self.pull()
		self.assertEqual(summary["replies"], 1)
		self.assertEqual(ledger(self.account.name)[-1].ticket, ticket.name)


class TestLoops(IntakeTestCase):
	def test_out_of_office_creates_no_ticket(self):
		self.deliver(make_message(subject="Out of office", headers={"Auto-Submitted": "auto-replied"}))
		summary = self.pull()
		self.assertEqual((summary["ignored"], summary["tickets"]), (1, 0))
		self.assertEqual(frappe.db.count("MH Ticket"), 0)
		self.assertEqual(frappe.db.count("Email Queue", {"creation": (">", self.account.creation)}), 0)
		self.assertEqual(self.inbox(), [], "ignored mail is moved like parsed mail")

	def test_auto_submitted_no_is_a_person(self):
		self.deliver(make_message(headers={"Auto-Submitted": "no"}))
		self.assertEqual(self.pull()["tickets"], 1)

	def test_dsn_creates_no_ticket_and_attaches_to_its_ticket(self):
		self.deliver(make_message(subject="Original", message_id="<orig@example.com>"))
		self.pull()
		ticket = ledger(self.account.name)[0].ticket
		self.deliver(DSN.replace(b"%s", b"<orig@example.com>"))
		summary = self.pull()
		self.assertEqual((summary["bounced"], summary["tickets"]), (1, 0))
		row = ledger(self.account.name)[-1]
		self.assertEqual((row.state, row.ticket), ("Bounced", ticket))
		self.assertTrue(
			frappe.db.exists("Comment", {"reference_name": ticket, "content": ("like", "%delivery failure%")})
		)

	def test_mailing_list_mail_becomes_a_ticket(self):
		self.deliver(make_message(headers={"List-Id": "<users.lists.example.org>"}))
		summary = self.pull()
		self.assertEqual(summary["tickets"], 1)
		self.assertIn(
			"list", frappe.db.get_value("MH Inbound Mail", {"imap_account": self.account.name}, "automation")
		)


class TestFailures(IntakeTestCase):
	def test_message_over_the_size_limit_is_not_downloaded_and_says_why(self):
		frappe.local.conf.mh_max_message_mb = 1
		try:
			self.deliver(make_message(subject="A whole DVD", body="z" * (2 * 1024 * 1024)))
			self.deliver(make_message(subject="Small"))
			summary = self.pull()
		finally:
			del frappe.local.conf["mh_max_message_mb"]
		self.assertEqual((summary["failed"], summary["tickets"]), (1, 1), summary["text"])
		failed = frappe.get_doc("MH Inbound Mail", {"state": "Failed"})
		self.assertEqual((failed.subject, failed.from_email), ("A whole DVD", "carla@example.com"))
		self.assertIn("over the 1 MB", failed.reason)
		self.assertFalse(failed.raw_path, "nothing of the body was downloaded")
		self.assertEqual(failed.server_action, "Left in Folder")
		self.assertEqual(len(self.inbox()), 1)
		self.assertEqual(self.pull()["seen"], 0, "not tried again by later pulls")

	def test_failed_message_stays_and_is_not_retried_until_reprocessed(self):
		frappe.get_doc({"doctype": "MH Department", "department_name": "Ghost"}).insert(
			ignore_permissions=True
		)
		frappe.get_doc(
			{
				"doctype": "MH Processing Rule",
				"rule_name": "Route to Ghost",
				"imap_account": self.account.name,
				"sequence": 1,
				"conditions": [{"field": "Subject", "operator": "contains", "value": "ghost"}],
				"actions": [{"action": "Forward to Department", "department": "Ghost"}],
			}
		).insert(ignore_permissions=True)
		# The department goes away after the rule was saved: inserting the ticket then really fails.
		frappe.db.delete("MH Department", "Ghost")
		frappe.db.commit()
		self.deliver(make_message(subject="ghost story"))
		self.deliver(make_message(subject="normal mail"))
		result = self.pull_in_worker()
		self.assertEqual(result.returncode, 0, result.stderr)
		self.assertIn("tickets 1", result.stdout)
		self.assertIn("failed 1", result.stdout)
		failed = frappe.get_doc("MH Inbound Mail", {"state": "Failed"})
		self.assertEqual(failed.server_action, "Left in Folder")
		self.assertIn("Ghost", failed.error)
		self.assertTrue(failed.raw_path)
		self.assertEqual(len(self.inbox()), 1, "the failed message stays on the server")

		again = self.pull()
		self.assertEqual((again["seen"], again["failed"]), (0, 0))
		self.assertEqual(frappe.db.get_value("MH Inbound Mail", failed.name, "attempts"), failed.attempts)

		frappe.get_doc({"doctype": "MH Department", "department_name": "Ghost"}).insert(
			ignore_permissions=True
		)
		frappe.db.commit()
		self.assertEqual(reprocess(failed.name), "Ticketed")
		failed.reload()
		self.assertEqual(failed.server_action, "Moved")
		self.assertEqual(frappe.db.get_value("MH Ticket", failed.ticket, "department"), "Ghost")
		self.assertEqual(self.inbox(), [])
		frappe.db.delete("MH Department", "Ghost")
		frappe.db.commit()

	def test_bad_password_five_times_disables_account(self):
		frappe.get_doc("MH IMAP Account", self.account.name).db_set("password", None)
		account = frappe.get_doc("MH IMAP Account", self.account.name)
		account.password = "wrong-password"
		account.save()
		frappe.db.commit()
		for _attempt in range(5):
			summary = pull_account(self.account.name)
			self.assertIn("password", summary["error"].lower(), summary["text"])
		account.reload()
		self.assertEqual((account.enabled, account.login_failures), (0, 5))
		self.assertTrue(frappe.db.exists("Notification Log", {"document_name": self.account.name}))

	def test_uidvalidity_change_resyncs_without_duplicates(self):
		frappe.get_doc({"doctype": "MH Department", "department_name": "Ghost"}).insert(
			ignore_permissions=True
		)
		frappe.get_doc(
			{
				"doctype": "MH Processing Rule",
				"rule_name": "Route to Ghost",
				"imap_account": self.account.name,
				"sequence": 1,
				"conditions": [{"field": "Subject", "operator": "contains", "value": "ghost"}],
				"actions": [{"action": "Forward to Department", "department": "Ghost"}],
			}
		).insert(ignore_permissions=True)
		frappe.db.delete("MH Department", "Ghost")
		frappe.db.commit()
		self.deliver(make_message(subject="ghost story"))
		self.deliver(make_message(subject="fine"))
		self.assertEqual(self.pull_in_worker().returncode, 0)
		old_validity = frappe.db.get_value("MH IMAP Account", self.account.name, "uidvalidity")
		new_validity = self.dovecot.recreate_folder(self.user, "INBOX", keep_messages=True)
		self.assertNotEqual(str(new_validity), old_validity)
		self.deliver(make_message(subject="arrived after the reset"))
		summary = self.pull()
		self.assertEqual(summary["tickets"], 1, summary["text"])
		self.assertEqual(frappe.db.count("MH Ticket"), 2)
		self.assertEqual(
			frappe.db.count("MH Inbound Mail", {"state": "Failed"}),
			1,
			"the failed row was re-pointed, not copied",
		)
		failed = frappe.get_doc("MH Inbound Mail", {"state": "Failed"})
		self.assertEqual(failed.uidvalidity, str(new_validity))
		self.assertEqual(len(self.inbox()), 1)
