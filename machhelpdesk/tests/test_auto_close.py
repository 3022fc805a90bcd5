"""Auto close with a frozen clock: waiting tickets close after the period, with a note and a notice.

The customer is warned once at half the period (when warnings are on); tickets waiting on an agent are
never closed; with the setting off nothing happens.
"""

from email import message_from_string, policy

import frappe
from frappe.tests.utils import FrappeTestCase
from frappe.utils import add_to_date, get_datetime

from machhelpdesk.auto_close import close_waiting_tickets
from machhelpdesk.outbound import auto_kind_of
from machhelpdesk.portal import add_customer_message
from machhelpdesk.testing.smtp_sink import SMTPSink
from machhelpdesk.tests.factories import (
	delete_tickets,
	flush_outgoing_mail,
	make_ticket,
	make_user,
	outgoing_mail_to,
	reset_intake_data,
	save_settings,
)
from machhelpdesk.tests.test_tickets import AGENT, CUSTOMER, agent_reply

START = get_datetime("2031-03-03 08:00:00")
DEFAULTS = {"auto_close_tickets": 1, "auto_close_after_hours": 10, "auto_close_warning": 1, "allow_reopen": 1}


def hours(n: float):
	return add_to_date(START, hours=n)


class AutoCloseTestCase(FrappeTestCase):
	"""A waiting customer, an SMTP sink and (unless switched off) an outgoing account delivering to it."""

	with_outgoing_account = True

	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		reset_intake_data()
		make_user(AGENT, ("MH Agent",))
		make_user(CUSTOMER, ("MH Customer",), user_type="Website User")
		frappe.db.commit()
		cls.sink = SMTPSink()
		cls.sink.start()

	@classmethod
	def tearDownClass(cls):
		cls.sink.stop()
		frappe.db.delete("Email Queue", {"reference_doctype": "MH Ticket"})
		reset_intake_data()
		save_settings(**DEFAULTS)
		super().tearDownClass()

	def setUp(self):
		delete_tickets()
		save_settings(**{**DEFAULTS, "auto_close_warning": 0})
		self.sink.clear()
		frappe.local.outgoing_email_account = {}  # Frappe's per-request cache of the outgoing account
		if self.with_outgoing_account:
			self.enterContext(outgoing_mail_to(self.sink))

	def waiting_ticket(self, at=START, **values) -> str:
		"""A ticket the agent answered at ``at`` (so it waits on the customer); committed."""
		with self.freeze_time(at):
			ticket = make_ticket(raised_by=CUSTOMER, **values).name
			agent_reply(ticket)
		frappe.db.commit()
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket, "status_category"), "Waiting")
		return ticket

	def run_job(self, at):
		with self.freeze_time(at):
			run = close_waiting_tickets()
		self.assertEqual(run.failed, [], "see the Error Log")
		return run

	def status_category(self, ticket: str) -> str:
		return frappe.db.get_value("MH Ticket", ticket, "status_category")

	def notices(self, ticket: str) -> list[frappe._dict]:
		"""The automatic mail queued about the ticket, with its subject and HTML body decoded."""
		notices = frappe.get_all(
			"Email Queue",
			filters={"reference_doctype": "MH Ticket", "reference_name": ticket},
			fields=["message_id", "message"],
			order_by="creation asc",
		)
		for notice in notices:
			mime = message_from_string(notice.message, policy=policy.default)
			notice.subject = str(mime["Subject"])
			notice.body = mime.get_body(("html", "plain")).get_content()
		return notices


class TestAutoClose(AutoCloseTestCase):
	def test_the_hourly_job_is_scheduled(self):
		self.assertIn(
			"machhelpdesk.tasks.close_waiting_tickets", frappe.get_hooks("scheduler_events")["hourly"]
		)

	def test_waiting_ticket_closes_after_the_period_with_a_note_and_a_notice(self):
		ticket = self.waiting_ticket()
		self.assertEqual(self.run_job(hours(9.9)).closed, [])
		self.assertEqual(self.status_category(ticket), "Waiting")

		self.assertEqual(self.run_job(hours(10)).closed, [ticket])
		doc = frappe.get_doc("MH Ticket", ticket)
		self.assertEqual((doc.status, doc.status_category), ("Closed", "Closed"))
		self.assertEqual(get_datetime(doc.closed_on), hours(10))
		notes = frappe.get_all(
			"Comment", filters={"reference_name": ticket, "comment_type": "Info"}, pluck="content"
		)
		self.assertTrue(any("Closed automatically" in note for note in notes), notes)
		[notice] = self.notices(ticket)
		self.assertEqual(auto_kind_of(notice.message_id), "auto-generated")
		self.assertEqual(notice.subject, f"[#{ticket}] Closed: Printer on fire")
		self.assertIn(f"/mh/tickets/{ticket}", notice.body, "the customer may re-open it on the portal")
		self.assertEqual(self.run_job(hours(30)).closed, [], "closed once")

	def test_the_notice_goes_out_with_auto_submitted(self):
		ticket = self.waiting_ticket()
		self.run_job(hours(11))
		flush_outgoing_mail()
		[mail] = self.sink.wait_for(1)
		self.assertEqual(mail.message["Auto-Submitted"], "auto-generated")
		self.assertIn(f"[#{ticket}]", mail.message["Subject"])
		self.assertEqual(mail.rcpt_tos, (CUSTOMER,))

	def test_customer_is_warned_once_at_half_the_period(self):
		save_settings(auto_close_warning=1)
		ticket = self.waiting_ticket()
		self.assertEqual(self.run_job(hours(4.9)).warned, [])
		self.assertEqual(self.run_job(hours(5)).warned, [ticket])
		[warning] = self.notices(ticket)
		self.assertEqual(auto_kind_of(warning.message_id), "auto-generated")
		self.assertIn("This ticket will close in 5 hours unless you reply", warning.subject)
		self.assertIn("This ticket will close in 5 hours unless you reply", warning.body)
		run = self.run_job(hours(6))
		self.assertEqual((run.warned, run.closed), ([], []), "one warning per wait")
		self.assertEqual(self.run_job(hours(10)).closed, [ticket])
		self.assertEqual(len(self.notices(ticket)), 2, "the warning, then the notice")

	def test_a_late_warning_still_leaves_half_a_period(self):
		save_settings(auto_close_warning=1)
		ticket = self.waiting_ticket()
		run = self.run_job(hours(12))  # the job did not run for a while
		self.assertEqual((run.warned, run.closed), ([ticket], []))
		self.assertEqual(self.run_job(hours(16.9)).closed, [])
		self.assertEqual(self.run_job(hours(17)).closed, [ticket])

	def test_a_new_agent_reply_starts_a_new_wait(self):
		save_settings(auto_close_warning=1)
		ticket = self.waiting_ticket()
		self.run_job(hours(5))
		with self.freeze_time(hours(8)):
			agent_reply(ticket)
		frappe.db.commit()
		self.assertEqual(self.run_job(hours(12)).closed, [], "the wait counts from the last message")
		self.assertEqual(self.run_job(hours(13)).warned, [ticket], "and warns again")
		self.assertEqual(self.run_job(hours(18)).closed, [ticket])

	def test_tickets_waiting_on_an_agent_are_never_closed(self):
		with self.freeze_time(START):
			untouched = make_ticket(raised_by=CUSTOMER).name  # Open: nobody answered yet
		answered = self.waiting_ticket()
		with self.freeze_time(hours(1)):
			add_customer_message(frappe.get_doc("MH Ticket", answered), "Any news?", [], CUSTOMER, "Carla")
		frappe.db.commit()
		self.assertEqual(self.status_category(answered), "Open")
		# A Waiting status set by hand (or by a rule) while the customer spoke last: still the agents' turn.
		with self.freeze_time(START):
			by_hand = make_ticket(raised_by=CUSTOMER).name
			add_customer_message(frappe.get_doc("MH Ticket", by_hand), "Hello?", [], CUSTOMER, "Carla")
		frappe.db.set_value(
			"MH Ticket", by_hand, {"status": "Waiting on Customer", "status_category": "Waiting"}
		)
		frappe.db.commit()
		run = self.run_job(hours(100))
		self.assertEqual((run.closed, run.warned), ([], []))
		for ticket in (untouched, answered, by_hand):
			self.assertNotEqual(self.status_category(ticket), "Closed")
			self.assertEqual(self.notices(ticket), [])

	def test_nothing_happens_when_auto_close_is_off(self):
		save_settings(auto_close_tickets=0, auto_close_warning=1)
		ticket = self.waiting_ticket()
		run = self.run_job(hours(100))
		self.assertEqual((run.closed, run.warned), ([], []))
		self.assertEqual(self.status_category(ticket), "Waiting")
		self.assertEqual(self.notices(ticket), [])

	def test_internal_notes_do_not_count_as_messages(self):
		ticket = self.waiting_ticket()
		with self.freeze_time(hours(9)):
			frappe.get_doc("MH Ticket", ticket).add_comment("Comment", "Customer is on holiday, I think.")
		frappe.db.commit()
		self.assertEqual(self.run_job(hours(10)).closed, [ticket])


class TestAutoCloseWithoutMail(AutoCloseTestCase):
	"""No outgoing Email Account: tickets still warn and close on time, and the notes say nobody was told."""

	with_outgoing_account = False

	def test_closes_and_says_the_customer_was_not_told(self):
		save_settings(auto_close_warning=1)
		ticket = self.waiting_ticket()
		self.assertEqual(self.run_job(hours(5)).warned, [ticket])
		self.assertEqual(self.run_job(hours(10)).closed, [ticket])
		self.assertEqual(self.status_category(ticket), "Closed")
		self.assertEqual(self.notices(ticket), [])
		notes = frappe.get_all(
			"Comment", filters={"reference_name": ticket, "comment_type": "Info"}, pluck="content"
		)
		self.assertEqual(sum("could not be told" in note for note in notes), 2, notes)
