"""Mail the helpdesk sends, through Frappe's Email Queue to a real SMTP server on 127.0.0.1.

Agents' replies carry the ticket number, In-Reply-To and References, and come back to a mailbox the
Email Parser reads; automatic mail carries Auto-Submitted. The customer's answer to an agent's reply,
delivered to the real Dovecot, joins the ticket.
"""

import frappe
from frappe.core.doctype.communication.email import make as make_communication

from machhelpdesk.outbound import send_automatic
from machhelpdesk.testing.smtp_sink import SMTPSink
from machhelpdesk.tests.factories import flush_outgoing_mail, ledger, make_message, outgoing_mail_to
from machhelpdesk.tests.test_intake import IntakeTestCase


class TestOutboundMail(IntakeTestCase):
	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		cls.sink = SMTPSink()
		cls.sink.start()

	@classmethod
	def tearDownClass(cls):
		cls.sink.stop()
		super().tearDownClass()

	def setUp(self):
		super().setUp()
		self.sink.clear()

	def ticket_from_customer(self) -> str:
		self.deliver(
			make_message(subject="Printer on fire", message_id="<question-1@example.com>", to=self.address)
		)
		self.pull()
		return ledger(self.account.name)[0].ticket

	@property
	def address(self) -> str:
		return self.account.email_address

	def agent_reply(self, ticket: str, text: str = "Have you tried turning it off?") -> str:
		result = make_communication(
			doctype="MH Ticket",
			name=ticket,
			content=text,
			subject="Re: Printer on fire",
			recipients="carla@example.com",
			send_email=True,
		)
		frappe.db.commit()  # the queue is flushed in its own transaction, as by the scheduler
		return result["name"]

	def test_agent_reply_is_threaded_numbered_and_routed_back_to_the_parser(self):
		ticket = self.ticket_from_customer()
		with outgoing_mail_to(self.sink):
			communication = self.agent_reply(ticket)
			flush_outgoing_mail()
			[mail] = self.sink.wait_for(1)
		headers = mail.message
		self.assertIn(f"[#{ticket}]", headers["Subject"])
		self.assertEqual(headers["In-Reply-To"], "<question-1@example.com>")
		self.assertIn("<question-1@example.com>", headers["References"])
		self.assertEqual(
			headers["Reply-To"],
			self.address,
			"sent from the default account, answered to the parser's mailbox",
		)
		self.assertEqual(mail.rcpt_tos, ("carla@example.com",))
		self.assertIsNone(headers["Auto-Submitted"], "a person's reply is not automatic mail")
		sent_id = frappe.db.get_value("Communication", communication, "message_id")
		self.assertEqual(headers["Message-ID"].strip("<>"), sent_id, "the Message-ID we send is recorded")

		# The customer answers the reply, quoting only our Message-ID: it joins the ticket.
		self.deliver(
			make_message(
				subject="Re: Printer on fire",
				body="Still on fire.",
				headers={"In-Reply-To": headers["Message-ID"]},
				to=self.address,
			)
		)
		summary = self.pull()
		self.assertEqual((summary["replies"], summary["tickets"]), (1, 0), summary["text"])
		self.assertEqual(frappe.db.count("MH Ticket"), 1)

	def test_reply_leaves_from_the_imap_address_when_an_outgoing_account_has_it(self):
		ticket = self.ticket_from_customer()
		with outgoing_mail_to(self.sink, email_id=self.address):
			self.agent_reply(ticket)
			flush_outgoing_mail()
			[mail] = self.sink.wait_for(1)
		self.assertIn(self.address, mail.message["From"])
		self.assertIsNone(mail.message["Reply-To"], "no Reply-To needed when it leaves from the address")

	def test_automatic_mail_carries_auto_submitted(self):
		with outgoing_mail_to(self.sink):
			for kind in ("auto-generated", "auto-replied"):
				send_automatic(
					recipients=["carla@example.com"],
					subject=f"Notice ({kind})",
					message="<p>Your ticket was closed.</p>",
					kind=kind,
					imap_account=self.account.name,
				)
			frappe.db.commit()  # queued mail is flushed in its own transaction
			flush_outgoing_mail()
			mails = self.sink.wait_for(2)
		kinds = {m.message["Subject"]: (m.message["Auto-Submitted"], m.message["Reply-To"]) for m in mails}
		self.assertEqual(
			kinds,
			{
				"Notice (auto-generated)": ("auto-generated", self.address),
				"Notice (auto-replied)": ("auto-replied", self.address),
			},
		)
		self.assertTrue(all(m.message["X-Auto-Response-Suppress"] == "All" for m in mails))

	def test_received_mail_is_on_the_senders_contact_timeline(self):
		contact = frappe.get_doc(
			{"doctype": "Contact", "first_name": "Carla", "email_ids": [{"email_id": "carla@example.com"}]}
		).insert(ignore_permissions=True)
		frappe.db.commit()
		ticket = self.ticket_from_customer()
		communication = frappe.get_doc(
			"Communication", {"reference_doctype": "MH Ticket", "reference_name": ticket}
		)
		self.assertEqual(
			[(link.link_doctype, link.link_name) for link in communication.timeline_links],
			[("Contact", contact.name)],
		)
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket, "contact"), contact.name)
