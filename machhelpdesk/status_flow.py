"""How a ticket's status follows its conversation.

- An agent's reply (a sent Communication on the ticket) sets the lowest-sorted status of the Waiting
  category ("Replied" by default), or the status the agent picked in the reply dialog ("Waiting on
  Customer", say).
- A customer's reply (by mail through intake, or from the portal) sets the lowest-sorted status of the
  Open category, unless it is Open already: the agents' turn.
- A customer may re-open a closed ticket from the portal when the settings allow it.

Flows are keyed on a status's category, never on its name, so renaming statuses keeps them working.
"""

from __future__ import annotations

import frappe
from frappe import _
from frappe.utils import get_datetime, now_datetime

from machhelpdesk.machhelpdesk.doctype.mh_ticket.mh_ticket import default_status

# The status an agent picked for their next reply is kept this long (the reply is sent right after).
CHOICE_SECONDS = 10 * 60


def status_category(status: str | None) -> str | None:
	return frappe.get_cached_value("MH Ticket Status", status, "category") if status else None


def is_agent_reply(communication) -> bool:
	return (
		communication.communication_type == "Communication"
		and communication.communication_medium == "Email"
		and communication.sent_or_received == "Sent"
	)


def is_customer_message(communication) -> bool:
	return (
		communication.communication_type == "Communication"
		and communication.communication_medium == "Email"
		and communication.sent_or_received == "Received"
	)


def _choice_key(ticket: str, user: str) -> str:
	return f"machhelpdesk:status-after-reply:{ticket}:{user}"


@frappe.whitelist(methods=["POST"])
def choose_status_after_reply(ticket: str, status: str) -> None:
	"""Remember the status the agent's reply, sent next, should leave the ticket in."""
	frappe.get_doc("MH Ticket", ticket).check_permission("write")
	if not frappe.db.exists("MH Ticket Status", status):
		frappe.throw(_("Unknown ticket status {0}").format(frappe.bold(status)))
	frappe.cache.set_value(_choice_key(ticket, frappe.session.user), status, expires_in_sec=CHOICE_SECONDS)


def pop_status_choice(ticket: str, user: str) -> str | None:
	key = _choice_key(ticket, user)
	status = frappe.cache.get_value(key)
	if status:
		frappe.cache.delete_value(key)
	return status if status and frappe.db.exists("MH Ticket Status", status) else None


def record_communication(ticket, communication) -> None:
	"""``MHTicket.on_communication_update``: a new message on the ticket moves its status.

	Intake inserts received mail without the Communication controller and sets the status itself;
	this covers replies from the desk and messages from the portal.
	"""
	if not communication.flags.in_insert:
		return  # a later save of an old message (delivery status, links) is no new message
	when = get_datetime(communication.communication_date or now_datetime())
	if is_agent_reply(communication):
		record_agent_reply(ticket, communication.user or frappe.session.user, when)
	elif is_customer_message(communication):
		record_customer_reply(ticket, when)


def record_agent_reply(ticket, agent: str, when) -> None:
	ticket.status = pop_status_choice(ticket.name, agent) or default_status("Waiting")
	ticket.last_agent_message_on = when
	if not ticket.first_responded_on:
		ticket.first_responded_on = when
	ticket.flags.ignore_permissions = True
	ticket.save()


def record_customer_reply(ticket, when) -> None:
	ticket.last_customer_message_on = when
	if status_category(ticket.status) != "Open":
		ticket.status = default_status("Open")
	ticket.flags.ignore_permissions = True
	ticket.save()


def reopen(ticket, note: str) -> None:
	"""Set a closed or resolved ticket back to the Open category, with a note in its timeline."""
	ticket.status = default_status("Open")
	ticket.flags.ignore_permissions = True
	ticket.save()
	ticket.add_comment("Info", note)
