# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

from frappe.model.document import Document


class MHTicketStatus(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		category: DF.Literal["Open", "Waiting", "Resolved", "Closed"]
		color: DF.Literal["blue", "orange", "green", "gray", "red", "yellow", "purple", "cyan"]
		sort_order: DF.Int
		status_name: DF.Data
	# end: auto-generated types

	pass
