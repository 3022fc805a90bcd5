# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

import frappe
from frappe import _
from frappe.model.document import Document
from frappe.utils import validate_email_address


class MHDepartment(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		from machhelpdesk.machhelpdesk.doctype.mh_department_agent.mh_department_agent import (
			MHDepartmentAgent,
		)

		agents: DF.TableMultiSelect[MHDepartmentAgent]
		department_name: DF.Data
		description: DF.SmallText | None
		email: DF.Data | None
		enabled: DF.Check
	# end: auto-generated types

	def validate(self):
		self.validate_email()
		self.validate_agents()

	def validate_email(self):
		if self.email:
			self.email = self.email.strip().lower()
			if not validate_email_address(self.email):
				frappe.throw(_("{0} is not a valid email address.").format(frappe.bold(self.email)))

	def validate_agents(self):
		seen = set()
		for row in self.agents:
			if row.agent in seen:
				frappe.throw(
					_("{0} is listed twice.").format(frappe.bold(row.agent)), title=_("Duplicate agent")
				)
			seen.add(row.agent)


def departments_of(user: str) -> list[str]:
	"""The departments whose agent list names this user."""
	return frappe.get_all(
		"MH Department Agent",
		filters={"agent": user, "parenttype": "MH Department"},
		pluck="parent",
		distinct=True,
	)
