# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

import re

import frappe
from frappe import _
from frappe.model.document import Document

AFFIX_PATTERN = re.compile(r"^[A-Za-z0-9]{1,12}$")


class MHSettings(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		allow_reopen: DF.Check
		auto_close_after_hours: DF.Int
		auto_close_tickets: DF.Check
		auto_close_warning: DF.Check
		auto_create_accounts: DF.Check
		challenge_hourly_cap: DF.Int
		challenge_only_authenticated: DF.Check
		hide_helpdesk_from_client: DF.Check
		kill_unconfirmed_after_days: DF.Int
		known_postfixes: DF.SmallText | None
		known_prefixes: DF.SmallText | None
		max_attachment_size_mb: DF.Int
		raw_retention_days: DF.Int
		require_confirmation: DF.Check
		require_registration: DF.Check
		ticket_postfix: DF.Data | None
		ticket_prefix: DF.Data | None
		tickets_per_page: DF.Int
		trusted_authserv_id: DF.Data | None
	# end: auto-generated types

	def validate(self):
		self.validate_affixes()
		self.validate_limits()
		self.remember_affixes()

	def validate_affixes(self):
		self.ticket_prefix = (self.ticket_prefix or "").strip()
		self.ticket_postfix = (self.ticket_postfix or "").strip()
		if not AFFIX_PATTERN.match(self.ticket_prefix):
			frappe.throw(
				_("Ticket # Prefix must be 1 to 12 letters or digits, for example MP."),
				title=_("Invalid ticket prefix"),
			)
		if self.ticket_postfix and not AFFIX_PATTERN.match(self.ticket_postfix):
			frappe.throw(
				_("Ticket # Postfix must be empty or 1 to 12 letters or digits, for example EU."),
				title=_("Invalid ticket postfix"),
			)

	def validate_limits(self):
		if self.auto_close_tickets and self.auto_close_after_hours < 1:
			frappe.throw(
				_("The auto close waiting period must be at least 1 hour."), title=_("Invalid waiting period")
			)
		if self.require_confirmation and self.auto_create_accounts and self.kill_unconfirmed_after_days < 1:
			frappe.throw(
				_("Held mail must be kept for at least 1 day, so senders have time to confirm."),
				title=_("Invalid kill period"),
			)

	def remember_affixes(self):
		"""Old ticket numbers must stay recognisable in subjects after the prefix or postfix changes."""
		self.known_prefixes = _add_line(self.known_prefixes, self.ticket_prefix)
		if self.ticket_postfix:
			self.known_postfixes = _add_line(self.known_postfixes, self.ticket_postfix)

	def on_update(self):
		frappe.clear_document_cache("MH Settings", "MH Settings")


def _add_line(lines: str | None, value: str) -> str:
	values = [line.strip() for line in (lines or "").splitlines() if line.strip()]
	if value and value not in values:
		values.append(value)
	return "\n".join(values)


def get_settings() -> MHSettings:
	"""The helpdesk's settings, cached per request and cleared when saved."""
	return frappe.get_cached_doc("MH Settings")


def ticket_affixes() -> tuple[list[str], list[str]]:
	"""Every ticket number prefix and postfix ever used, current ones first."""
	settings = get_settings()
	prefixes = [settings.ticket_prefix or "MP"]
	prefixes += [p for p in (settings.known_prefixes or "").split() if p not in prefixes]
	postfixes = [settings.ticket_postfix] if settings.ticket_postfix else []
	postfixes += [p for p in (settings.known_postfixes or "").split() if p not in postfixes]
	return prefixes, postfixes


def format_ticket_name(prefix: str, sequence: int, postfix: str | None = None) -> str:
	"""MP-000123, or MP-000123-EU with a postfix."""
	name = f"{prefix}-{sequence:06d}"
	return f"{name}-{postfix}" if postfix else name
