# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

import frappe
from frappe import _
from frappe.model.document import Document
from frappe.model.naming import getseries
from frappe.utils import now_datetime

from machhelpdesk.machhelpdesk.doctype.mh_settings.mh_settings import format_ticket_name, get_settings

SERIES_KEY = "MH Ticket"


class MHTicket(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		auto_close_warned_on: DF.Datetime | None
		cc: DF.SmallText | None
		closed_on: DF.Datetime | None
		contact: DF.Link | None
		department: DF.Link | None
		first_message_id: DF.Data | None
		first_responded_on: DF.Datetime | None
		imap_account: DF.Link | None
		intake_note: DF.SmallText | None
		last_agent_message_on: DF.Datetime | None
		last_customer_message_on: DF.Datetime | None
		opened_on: DF.Datetime | None
		priority: DF.Link | None
		raised_by: DF.Data | None
		raised_by_name: DF.Data | None
		resolved_on: DF.Datetime | None
		status: DF.Link | None
		status_category: DF.Data | None
		subject: DF.Data
	# end: auto-generated types

	def autoname(self):
		settings = get_settings()
		sequence = int(getseries(SERIES_KEY, 6))  # one global counter, whatever the prefix
		self.name = format_ticket_name(settings.ticket_prefix or "MP", sequence, settings.ticket_postfix)

	def validate(self):
		self.set_defaults()
		self.set_status_dates()

	def set_defaults(self):
		if self.raised_by:
			self.raised_by = self.raised_by.strip().lower()
		if not self.status:
			self.status = default_status("Open")
		if not self.priority:
			self.priority = default_priority()
		if not self.opened_on:
			self.opened_on = now_datetime()
		if self.status and not self.status_category:
			self.status_category = frappe.get_cached_value("MH Ticket Status", self.status, "category")

	def set_status_dates(self):
		if not self.has_value_changed("status") or not self.status:
			return
		category = frappe.get_cached_value("MH Ticket Status", self.status, "category")
		self.status_category = category
		if category == "Resolved" and not self.resolved_on:
			self.resolved_on = now_datetime()
		if category == "Closed":
			self.closed_on = now_datetime()
		elif self.closed_on:
			self.closed_on = None

	def on_communication_update(self, communication):
		"""Called by Communication.on_update: an agent's reply or a customer's message moves the status."""
		from machhelpdesk.status_flow import record_communication

		record_communication(self, communication)


def default_status(category: str) -> str | None:
	"""The status the helpdesk picks by itself for a category: the lowest sort order wins."""
	status = frappe.get_all(
		"MH Ticket Status",
		filters={"category": category},
		order_by="sort_order asc, creation asc",
		pluck="name",
		limit=1,
	)
	if not status:
		frappe.throw(
			_("No ticket status in the {0} category exists. Add one under Manage Statuses.").format(
				_(category)
			),
			title=_("Missing ticket status"),
		)
	return status[0]


def default_priority() -> str | None:
	priority = frappe.get_all(
		"MH Ticket Priority", filters={"is_default": 1}, order_by="rank asc", pluck="name", limit=1
	) or frappe.get_all("MH Ticket Priority", order_by="rank asc", pluck="name", limit=1)
	return priority[0] if priority else None
