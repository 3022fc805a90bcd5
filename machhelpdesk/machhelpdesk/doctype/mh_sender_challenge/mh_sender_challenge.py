# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

from frappe.model.document import Document


class MHSenderChallenge(Document):
	"""Written only by machhelpdesk.challenge_response; the desk shows it read-only."""

	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		active_for: DF.Data | None
		challenge_message_id: DF.Data | None
		confirmed_by: DF.Data | None
		confirmed_on: DF.Datetime | None
		email: DF.Data
		expires_on: DF.Datetime
		held_mail: DF.Link | None
		imap_account: DF.Link | None
		issued_on: DF.Datetime
		note: DF.SmallText | None
		status: DF.Literal["Outstanding", "Confirmed", "Expired", "Superseded"]
		token_hash: DF.Data | None
	# end: auto-generated types
