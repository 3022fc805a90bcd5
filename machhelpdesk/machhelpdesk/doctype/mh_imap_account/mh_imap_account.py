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
		auth_method: DF.Literal["Password", "OAuth2"]
		connected_app: DF.Link | None
		connected_user: DF.Link | None
		default_department: DF.Link | None
		email_address: DF.Data
		enabled: DF.Check
		encryption: DF.Literal["SSL/TLS", "STARTTLS", "None"]
		folder: DF.Data
		imap_server: DF.Data
		last_error: DF.SmallText | None
		last_pulled_on: DF.Datetime | None
		last_push_on: DF.Datetime | None
		last_uid: DF.Int
		login_failures: DF.Int
		move_parsed_email: DF.Check
		move_to_folder: DF.Data | None
		password: DF.Password | None
		port: DF.Int
		uidvalidity: DF.Data | None
		username: DF.Data
		watch_confirmed_on: DF.Datetime | None
		watch_mode: DF.Literal["", "Push", "Polling"]
	# end: auto-generated types

	def validate(self):
		self.validate_address()
		self.set_port()
		self.validate_port()
		self.validate_folders()
		self.validate_authentication()
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

	def validate_authentication(self):
		"""Password accounts need a password; OAuth2 accounts a Connected App and the user who authorizes it."""
		if self.auth_method == "OAuth2":
			if not self.connected_app or not self.connected_user:
				frappe.throw(
					_(
						"OAuth2 needs a Connected App and a Connected User (the desk user who authorizes access)."
					),
					title=_("OAuth2 incomplete"),
				)
		elif not self.password:
			frappe.throw(_("Enter the mailbox's password."), title=_("Password missing"))

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
		"""The account as plain transport settings for engine.imap.

		For OAuth2 this reads (and, when it has expired, renews) the access token from the Connected User's
		Token Cache; machhelpdesk.oauth.OAuthTokenError says why when there is none.
		"""
		from machhelpdesk.engine.imap import IMAPSettings

		if self.auth_method == "OAuth2":
			from machhelpdesk.oauth import access_token

			password, token = "", access_token(self)
		else:
			password, token = self.get_password("password", raise_exception=False) or "", ""
		return IMAPSettings(
			host=self.imap_server,
			port=int(self.port),
			username=self.username,
			password=password,
			encryption=self.encryption,
			allow_self_signed=bool(self.allow_self_signed),
			access_token=token,
		)

	@frappe.whitelist()
	def test_connection(self) -> dict:
		"""Log in, list folders and report problems in plain words. Changes nothing."""
		self.check_permission("write")
		from machhelpdesk.engine.imap import test_connection
		from machhelpdesk.oauth import OAuthTokenError

		try:
			settings = self.imap_settings()
		except OAuthTokenError as e:
			return {"ok": False, "message": str(e), "folders": [], "capabilities": []}
		report = test_connection(settings, folder=self.folder)
		return {
			"ok": report.ok,
			"message": report.message,
			"folders": report.folders,
			"capabilities": report.capabilities,
		}

	@frappe.whitelist()
	def authorize_oauth(self) -> str:
		"""Start the OAuth2 authorization of the Connected App for the Connected User; returns the URL to open.

		Frappe's Connected App callback stores the token for the user who comes back from the provider, so the
		person pressing the button must be the Connected User.
		"""
		self.check_permission("write")
		if self.auth_method != "OAuth2" or not self.connected_app or not self.connected_user:
			frappe.throw(_("Choose OAuth2, a Connected App and a Connected User first, and save."))
		if frappe.session.user != self.connected_user:
			frappe.throw(
				_("Log in as {0} to authorize: the token is stored for the user who signs in.").format(
					self.connected_user
				),
				title=_("Not the Connected User"),
			)
		app = frappe.get_doc("Connected App", self.connected_app)
		return app.initiate_web_application_flow(
			user=self.connected_user, success_uri=f"/app/mh-imap-account/{self.name}"
		)

	@frappe.whitelist()
	def oauth_status(self) -> dict:
		"""Whether the Connected User's token exists, for the form's headline."""
		self.check_permission("read")
		if self.auth_method != "OAuth2" or not self.connected_app or not self.connected_user:
			return {"authorized": False}
		app = frappe.get_doc("Connected App", self.connected_app)
		cache = app.get_token_cache(self.connected_user)
		return {"authorized": bool(cache and cache.get_password("access_token", raise_exception=False))}

	@frappe.whitelist()
	def pull_now(self) -> str:
		"""Queue a pull of this mailbox now."""
		self.check_permission("write")
		from machhelpdesk.tasks import enqueue_pull

		enqueue_pull(self.name)
		return _("A pull of {0} was queued. The intake ledger shows each message as it is read.").format(
			self.email_address
		)
