"""Tickets in the desk: status flow on replies (keyed on categories), internal notes, assignment, visibility."""

import frappe
from frappe.core.doctype.communication.email import make as make_communication
from frappe.desk.form.assign_to import add as add_assignment
from frappe.desk.form.utils import add_comment
from frappe.tests.utils import FrappeTestCase

from machhelpdesk.permissions import ticket_has_permission
from machhelpdesk.portal import add_customer_message
from machhelpdesk.status_flow import choose_status_after_reply
from machhelpdesk.tests.factories import ledger, make_message, make_ticket, make_user, reset_intake_data
from machhelpdesk.tests.test_intake import IntakeTestCase

AGENT = "flow.agent@helpdesk.test"
OTHER_AGENT = "flow.other.agent@helpdesk.test"
MANAGER = "flow.manager@helpdesk.test"
CUSTOMER = "flow.customer@example.com"


def agent_reply(
	ticket: str, agent: str = AGENT, status: str | None = None, recipients: str = CUSTOMER
) -> str:
	"""An agent's reply from the ticket's email composer: ``frappe...communication.email.make``."""
	frappe.set_user(agent)
	try:
		if status:
			choose_status_after_reply(ticket, status)
		return make_communication(
			doctype="MH Ticket",
			name=ticket,
			content="<p>Have you tried turning it off and on again?</p>",
			subject="Re: Printer on fire",
			recipients=recipients,
			send_email=False,
		)["name"]
	finally:
		frappe.set_user("Administrator")


class TestStatusFlow(FrappeTestCase):
	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		reset_intake_data()
		make_user(AGENT, ("MH Agent",))
		make_user(CUSTOMER, ("MH Customer",), user_type="Website User")
		frappe.db.commit()

	@classmethod
	def tearDownClass(cls):
		frappe.set_user("Administrator")
		reset_intake_data()
		super().tearDownClass()

	def tearDown(self):
		frappe.set_user("Administrator")
		frappe.db.rollback()

	def test_agent_reply_sets_the_waiting_default(self):
		ticket = make_ticket(raised_by=CUSTOMER)
		self.assertEqual(ticket.status, "Open")
		agent_reply(ticket.name)
		ticket.reload()
		self.assertEqual(ticket.status, "Replied")
		self.assertEqual(ticket.status_category, "Waiting")
		self.assertIsNotNone(ticket.last_agent_message_on)
		self.assertIsNotNone(ticket.first_responded_on)

	def test_agent_may_choose_waiting_on_customer_for_one_reply(self):
		ticket = make_ticket(raised_by=CUSTOMER)
		agent_reply(ticket.name, status="Waiting on Customer")
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket.name, "status"), "Waiting on Customer")
		agent_reply(ticket.name)
		self.assertEqual(
			frappe.db.get_value("MH Ticket", ticket.name, "status"),
			"Replied",
			"the choice holds for one reply",
		)

	def test_customer_reply_hands_the_ticket_back_to_the_agents(self):
		ticket = make_ticket(raised_by=CUSTOMER)
		agent_reply(ticket.name, status="Waiting on Customer")
		frappe.set_user(CUSTOMER)
		add_customer_message(frappe.get_doc("MH Ticket", ticket.name), "Still on fire.", [], CUSTOMER, "Flow")
		frappe.set_user("Administrator")
		ticket.reload()
		self.assertEqual(ticket.status, "Open")
		self.assertIsNotNone(ticket.last_customer_message_on)

	def test_flows_follow_categories_not_names(self):
		# A new Waiting status sorted first becomes what a reply sets; a renamed Open status still opens.
		frappe.get_doc(
			{"doctype": "MH Ticket Status", "status_name": "Answered", "category": "Waiting", "sort_order": 1}
		).insert(ignore_permissions=True)
		frappe.get_doc(
			{"doctype": "MH Ticket Status", "status_name": "New", "category": "Open", "sort_order": 1}
		).insert(ignore_permissions=True)
		ticket = make_ticket(raised_by=CUSTOMER)
		self.assertEqual(ticket.status, "New")
		agent_reply(ticket.name)
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket.name, "status"), "Answered")
		add_customer_message(frappe.get_doc("MH Ticket", ticket.name), "Hello?", [], CUSTOMER, "Flow")
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket.name, "status"), "New")

	def test_only_someone_who_may_write_the_ticket_chooses_its_status(self):
		ticket = make_ticket(raised_by=CUSTOMER)
		frappe.set_user(CUSTOMER)
		with self.assertRaises(frappe.PermissionError):
			choose_status_after_reply(ticket.name, "Closed")

	def test_internal_notes_are_never_mailed(self):
		ticket = make_ticket(raised_by=CUSTOMER)
		frappe.set_user(AGENT)
		queued = frappe.db.count("Email Queue")
		add_comment(
			"MH Ticket",
			ticket.name,
			"<p>Internal: the customer's printer is a toaster.</p>",
			AGENT,
			"Flow Agent",
		)
		frappe.set_user("Administrator")
		self.assertEqual(frappe.db.count("Email Queue"), queued)
		self.assertEqual(
			frappe.db.count("Communication", {"reference_name": ticket.name}), 0, "a note is not a message"
		)
		self.assertEqual(
			frappe.db.get_value("MH Ticket", ticket.name, "status"), "Open", "a note moves no status"
		)


class TestAssignmentAndVisibility(FrappeTestCase):
	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		reset_intake_data()
		make_user(AGENT, ("MH Agent",))
		make_user(OTHER_AGENT, ("MH Agent",))
		make_user(MANAGER, ("MH Manager",))
		for agent in (AGENT, OTHER_AGENT):
			frappe.get_doc("User", agent).remove_roles("MH Manager", "System Manager")
		for name, agent in (("Flow Billing", AGENT), ("Flow Hardware", OTHER_AGENT)):
			if not frappe.db.exists("MH Department", name):
				frappe.get_doc(
					{"doctype": "MH Department", "department_name": name, "agents": [{"agent": agent}]}
				).insert(ignore_permissions=True)
		frappe.db.commit()

	@classmethod
	def tearDownClass(cls):
		frappe.set_user("Administrator")
		reset_intake_data()
		for name in ("Flow Billing", "Flow Hardware"):
			frappe.delete_doc("MH Department", name, force=True, ignore_permissions=True)
		frappe.db.commit()
		super().tearDownClass()

	def tearDown(self):
		frappe.set_user("Administrator")
		frappe.db.rollback()

	def visible_to(self, user: str) -> set[str]:
		frappe.set_user(user)
		try:
			return set(frappe.get_list("MH Ticket", pluck="name"))
		finally:
			frappe.set_user("Administrator")

	def test_department_agents_see_their_department_and_managers_see_all(self):
		billing = make_ticket("Invoice", department="Flow Billing").name
		hardware = make_ticket("Toaster", department="Flow Hardware").name
		unassigned = make_ticket("Who handles this?").name
		self.assertEqual(self.visible_to(AGENT), {billing, unassigned})
		self.assertEqual(self.visible_to(OTHER_AGENT), {hardware, unassigned})
		self.assertEqual(self.visible_to(MANAGER), {billing, hardware, unassigned})
		self.assertFalse(ticket_has_permission(frappe.get_doc("MH Ticket", hardware), "read", AGENT))

	def test_assignment_is_a_todo_and_opens_the_ticket_to_the_assignee(self):
		hardware = make_ticket("Toaster", department="Flow Hardware").name
		self.assertNotIn(hardware, self.visible_to(AGENT))
		add_assignment({"assign_to": [AGENT], "doctype": "MH Ticket", "name": hardware})
		todo = frappe.get_all(
			"ToDo",
			filters={"reference_type": "MH Ticket", "reference_name": hardware, "status": "Open"},
			pluck="allocated_to",
		)
		self.assertEqual(todo, [AGENT], "the agent sees the ticket in their ToDo list")
		self.assertIn(hardware, self.visible_to(AGENT))


class TestConversationRoundTrip(IntakeTestCase):
	"""Mail in, the agent's reply out, the customer's answer in: Open, Replied, Open."""

	def test_status_follows_the_conversation(self):
		make_user(AGENT, ("MH Agent",))
		self.deliver(make_message(subject="Printer on fire", to=self.account.email_address))
		self.pull()
		ticket = ledger(self.account.name)[0].ticket
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket, "status"), "Open")
		add_assignment({"assign_to": [AGENT], "doctype": "MH Ticket", "name": ticket})
		agent_reply(ticket, recipients="carla@example.com")
		frappe.db.commit()
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket, "status"), "Replied")
		self.deliver(
			make_message(
				subject=f"Re: [#{ticket}] Printer on fire",
				body="Still on fire.",
				to=self.account.email_address,
			)
		)
		self.pull()
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket, "status"), "Open")
		self.assertEqual(
			frappe.db.count("Communication", {"reference_doctype": "MH Ticket", "reference_name": ticket}), 3
		)

	def test_tags_in_subject_or_sender_name_stay_text_and_fail_nothing(self):
		# Intake inserts Communications without the controller (and its XSS filter); the desk prints the
		# subject and the sender's name as HTML, so their < and > are stored as entities.
		self.deliver(
			make_message(
				subject="<img src=x onerror=alert(1)> printer",
				sender='"<b>Carla</b>" <carla@example.com>',
				to=self.account.email_address,
			)
		)
		self.pull()
		[row] = ledger(self.account.name)
		self.assertEqual(row.state, "Ticketed", row.reason)
		[message] = frappe.get_all(
			"Communication", filters={"reference_name": row.ticket}, fields=["subject", "sender_full_name"]
		)
		self.assertEqual(message.subject, "&lt;img src=x onerror=alert(1)&gt; printer")
		self.assertEqual(message.sender_full_name, "&lt;b&gt;Carla&lt;/b&gt;")
		contact = frappe.db.get_value("MH Ticket", row.ticket, "contact")
		self.assertEqual(
			frappe.db.get_value("Contact", contact, "first_name"), "b Carla /b", "no < or > in names"
		)
