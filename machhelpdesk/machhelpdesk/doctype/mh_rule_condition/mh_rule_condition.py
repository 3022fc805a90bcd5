# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

from frappe.model.document import Document


class MHRuleCondition(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		field: DF.Literal["To", "Cc", "From", "Reply-To", "Subject", "Body", "Header", "Has Attachments"]
		header_name: DF.Data | None
		operator: DF.Literal[
			"contains",
			"does not contain",
			"equals",
			"does not equal",
			"starts with",
			"ends with",
			"matches regex",
			"does not match regex",
		]
		parent: DF.Data
		parentfield: DF.Data
		parenttype: DF.Data
		value: DF.Data | None
	# end: auto-generated types

	pass
