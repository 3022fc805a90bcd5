# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

import frappe
from frappe import _
from frappe.model.document import Document
from frappe.utils import validate_email_address

POP3_PORTS = (110, 995)
DEFAULT_PORTS = {"SSL/TLS": 993, "STARTTLS": 143, "None": 143}


class MHIMAPAccount(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		allow_self_signed: DF.Check
		default_department: DF.Link | None
		email_address: DF.Data
		enabled: DF.Check
		encryption: DF.Literal["SSL/TLS", "STARTTLS", "None"]
		folder: DF.Data
		imap_server: DF.Data
		last_error: DF.SmallText | None
		last_pulled_on: DF.Datetime | None
		last_uid: DF.Int
		login_failures: DF.Int
		move_parsed_email: DF.Check
		move_to_folder: DF.Data | None
		password: DF.Password
		port: DF.Int
		uidvalidity: DF.Data | None
		username: DF.Data
	# end: auto-generated types

	def validate(self):
		self.validate_address()
		self.set_port()
		self.validate_port()
		self.validate_folders()
		self.reset_sync_state()

	def validate_address(self):
		self.email_address = (self.email_address or "").strip().lower()
		if not validate_email_address(self.email_address):
			frappe.throw(
				_("{0} is not a valid email address.").format(frappe.bold(self.email_address)),
				title=_("Invalid email address"),
			)

	def set_port(self):
		"""The port follows the encryption while it is still another encryption's default."""
		if not self.port or (self.has_value_changed("encryption") and self.port in DEFAULT_PORTS.values()):
			self.port = DEFAULT_PORTS.get(self.encryption, 993)

	def validate_port(self):
		if self.port in POP3_PORTS:
			frappe.throw(
				_(
					"Port {0} is a POP3 port, and the Email Parser reads mail over IMAP."
					" Use 993 for SSL/TLS, or 143 for STARTTLS or no encryption."
				).format(self.port),
				title=_("POP3 port"),
			)
		if not 1 <= int(self.port) <= 65535:
			frappe.throw(_("The port must be a number from 1 to 65535."), title=_("Invalid port"))

	def validate_folders(self):
		self.folder = (self.folder or "").strip()
		self.move_to_folder = (self.move_to_folder or "").strip()
		if not self.folder:
			frappe.throw(_("Say which folder to read, for example INBOX."), title=_("Folder to read missing"))
		if self.move_parsed_email:
			if not self.move_to_folder:
				frappe.throw(
					_(
						"Say which folder parsed email moves to, or turn off Move parsed email to delete it instead."
					),
					title=_("Folder missing"),
				)
			if self.move_to_folder.casefold() == self.folder.casefold():
				frappe.throw(
					_("Parsed email cannot move to the folder it is read from."), title=_("Same folder twice")
				)

	def reset_sync_state(self):
		"""A different server, user or folder is a different mailbox: start its UID bookkeeping afresh."""
		if self.is_new():
			return
		if any(self.has_value_changed(f) for f in ("imap_server", "port", "username", "folder")):
			self.uidvalidity = None
			self.last_uid = 0
		if self.has_value_changed("enabled") and self.enabled:
			self.login_failures = 0

	def after_insert(self):
		self.create_default_rule()

	def create_default_rule(self):
		"""The seed's "Default Rule #1": everything from this mailbox goes to its default department."""
		if not self.default_department:
			return
		frappe.get_doc(
			{
				"doctype": "MH Processing Rule",
				"rule_name": "Default Rule #1",
				"imap_account": self.name,
				"sequence": 0,  # first, so that later rules can override its department
				"match": "All",
				"actions": [{"action": "Forward to Department", "department": self.default_department}],
			}
		).insert(ignore_permissions=True)

	def imap_settings(self):
		"""The account as plain transport settings for engine.imap."""
		from machhelpdesk.engine.imap import IMAPSettings

		return IMAPSettings(
			host=self.imap_server,
			port=int(self.port),
			username=self.username,
			password=self.get_password("password"),
			encryption=self.encryption,
			allow_self_signed=bool(self.allow_self_signed),
		)

	@frappe.whitelist()
	def test_connection(self) -> dict:
		"""Log in, list folders and report problems in plain words. Changes nothing."""
		self.check_permission("write")
		from machhelpdesk.engine.imap import test_connection

		report = test_connection(self.imap_settings(), folder=self.folder)
		return {
			"ok": report.ok,
			"message": report.message,
			"folders": report.folders,
			"capabilities": report.capabilities,
		}

	@frappe.whitelist()
	def pull_now(self) -> str:
		"""Queue a pull of this mailbox now."""
		self.check_permission("write")
		from machhelpdesk.tasks import enqueue_pull

		enqueue_pull(self.name)
		return _("A pull of {0} was queued. The intake ledger shows each message as it is read.").format(
			self.email_address
		)
