# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

from frappe.model.document import Document


class MHRuleAction(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		action: DF.Literal[
			"Forward to Department",
			"Assign To",
			"Set Status",
			"Override Priority",
			"Delete Message",
			"Stop Processing",
		]
		agent: DF.Link | None
		department: DF.Link | None
		parent: DF.Data
		parentfield: DF.Data
		parenttype: DF.Data
		priority: DF.Link | None
		status: DF.Link | None
	# end: auto-generated types

	pass
