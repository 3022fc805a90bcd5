# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

import frappe
from frappe.model.document import Document


class MHTicketPriority(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		is_default: DF.Check
		priority_name: DF.Data
		rank: DF.Int
	# end: auto-generated types

	def on_update(self):
		if self.is_default:
			# One default at a time: the newest choice wins.
			frappe.db.set_value(
				"MH Ticket Priority", {"name": ("!=", self.name), "is_default": 1}, "is_default", 0
			)
