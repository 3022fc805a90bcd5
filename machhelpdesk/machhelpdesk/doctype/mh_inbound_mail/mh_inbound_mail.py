# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

import frappe
from frappe import _
from frappe.model.document import Document


class MHInboundMail(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		attempts: DF.Int
		automation: DF.Data | None
		challenge: DF.Link | None
		challenge_status: DF.Literal["", "Outstanding", "Not Sent", "Confirmed", "Expired", "Superseded"]
		communication: DF.Link | None
		duplicate_of: DF.Link | None
		error: DF.Code | None
		folder: DF.Data | None
		from_email: DF.Data | None
		from_name: DF.Data | None
		held_on: DF.Datetime | None
		imap_account: DF.Link | None
		mailbox_key: DF.Data | None
		message_id: DF.Data | None
		message_key: DF.Data | None
		raw_path: DF.Data | None
		reason: DF.SmallText | None
		received_at: DF.Datetime | None
		rule_trace: DF.Code | None
		server_action: DF.Literal["Pending", "Moved", "Deleted", "Left in Folder", "None"]
		size: DF.Int
		state: DF.Literal[
			"Processing",
			"Ticketed",
			"Replied",
			"Ignored",
			"Bounced",
			"Blocked",
			"Held",
			"Discarded",
			"Deleted by Rule",
			"Duplicate",
			"Failed",
			"Expired",
		]
		subject: DF.Data | None
		ticket: DF.Link | None
		uid: DF.Int
		uidvalidity: DF.Data | None
	# end: auto-generated types

	@frappe.whitelist()
	def reprocess(self) -> str:
		"""Run a failed message again from its raw copy (managers only)."""
		self.check_permission("write")
		from machhelpdesk.intake import reprocess

		state = reprocess(self.name)
		return _("The message is now {0}.").format(_(state))
