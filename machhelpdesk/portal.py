"""The customer portal under /mh/: what its pages show and the POST methods its forms call.

- ``/mh/tickets``: the tickets the signed-in person raised, newest first, N per page (0 = all).
- ``/mh/tickets/<name>``: one of them, its conversation (mail only; internal notes are Comments and never
  shown), a reply box with attachments, and Re-open on a closed ticket when the settings allow it.
- ``/mh/new``: a new ticket. Guests are sent to log in, unless registration is not required: then they
  give their address, which goes through the same unknown-sender policy as mail.

Everyone sees only the tickets they raised (``permissions.customer_criterion``), agents included. A
ticket someone may not see answers 403, whether it exists or not. With "Hide Helpdesk from Client" on,
every page and method here answers 404 and the portal menu entry is gone.

Guests have no session, so Frappe checks no CSRF token for them; the guest form carries a one-time
nonce from the page instead.
"""

from __future__ import annotations

import html
import secrets
from urllib.parse import quote, urlencode

import frappe
from frappe import _
from frappe.query_builder.functions import Count
from frappe.rate_limiter import rate_limit
from frappe.utils import cint, escape_html, get_fullname, get_url, now_datetime, validate_email_address

from machhelpdesk.engine.message import safe_filename, sanitize_html
from machhelpdesk.machhelpdesk.doctype.mh_settings.mh_settings import get_settings
from machhelpdesk.permissions import contacts_of, customer_criterion
from machhelpdesk.status_flow import reopen, status_category

MAX_FILES = 10
SUBJECT_LENGTH = 140
MESSAGE_LENGTH = 50000
NONCE_SECONDS = 2 * 60 * 60
PORTAL_ROUTES = ("/mh/tickets", "/mh/new")


class AttachmentTooLargeError(frappe.ValidationError):
	"""An attached file is over the helpdesk's (or Frappe's) size limit."""


class ReopenNotAllowedError(frappe.PermissionError):
	"""Customers may not re-open tickets ("Allow public users to re-open their own tickets" is off)."""


class TicketClosedError(frappe.ValidationError):
	"""A reply to a closed ticket: it has to be re-opened first."""


# --- access -----------------------------------------------------------------------------------------


def portal_hidden() -> bool:
	return bool(cint(get_settings().hide_helpdesk_from_client))


def ensure_portal_open() -> None:
	"""Hide Helpdesk from Client: every portal page and method answers 404."""
	# Frappe remembers a page's 404 (``website_404``) unless told not to; this one may end any time.
	frappe.local.no_cache = 1
	if portal_hidden():
		frappe.throw(_("Page not found"), frappe.PageDoesNotExistError)


def portal_ticket_url(ticket: str) -> str | None:
	"""The ticket's page on the portal, for mail to the customer; None when the portal is hidden."""
	return None if portal_hidden() else get_url(f"/mh/tickets/{quote(ticket)}")


def send_guest_to_login(path: str) -> None:
	if frappe.session.user == "Guest":
		frappe.local.flags.redirect_location = "/login?" + urlencode({"redirect-to": path})
		raise frappe.Redirect(302)


def ensure_customer() -> None:
	"""Signed in, with a role that may read tickets (MH Customer for customers)."""
	if frappe.session.user == "Guest" or not frappe.has_permission("MH Ticket", "read"):
		frappe.throw(_("Your account has no access to support tickets."), frappe.PermissionError)


def customer_ticket(name: str | None):
	"""The ticket, if the signed-in person raised it. Otherwise 403, whether or not it exists."""
	ensure_customer()
	if not name or not frappe.db.exists("MH Ticket", name):
		frappe.throw(_("You are not permitted to see this ticket."), frappe.PermissionError)
	doc = frappe.get_doc("MH Ticket", name)
	if not frappe.has_website_permission(doc):
		frappe.throw(_("You are not permitted to see this ticket."), frappe.PermissionError)
	return doc


# --- what the pages show ------------------------------------------------------------------------------


def my_tickets(page: int = 1) -> frappe._dict:
	"""One page of the signed-in person's tickets, newest first."""
	ticket = frappe.qb.DocType("MH Ticket")
	criterion = customer_criterion(frappe.session.user)
	total = (frappe.qb.from_(ticket).select(Count("*")).where(criterion)).run()[0][0]
	per_page = max(cint(get_settings().tickets_per_page), 0)
	pages = max(1, -(-total // per_page)) if per_page else 1
	page = min(max(cint(page), 1), pages)
	query = (
		frappe.qb.from_(ticket)
		.select(ticket.name, ticket.subject, ticket.status, ticket.opened_on, ticket.modified)
		.where(criterion)
		.orderby(ticket.opened_on, order=frappe.qb.desc)
		.orderby(ticket.creation, order=frappe.qb.desc)
	)
	if per_page:
		query = query.limit(per_page).offset((page - 1) * per_page)
	tickets = query.run(as_dict=True)
	for row in tickets:
		row.subject = html.unescape(row.subject or "")  # stored with tags filtered; the page escapes
		row.category = status_category(row.status)
		row.color = frappe.get_cached_value("MH Ticket Status", row.status, "color") if row.status else None
	return frappe._dict(tickets=tickets, page=page, pages=pages, total=total, per_page=per_page)


def ticket_messages(ticket: str) -> list[frappe._dict]:
	"""The conversation the customer may see: mail in and out, oldest first, sanitized again for display."""
	messages = frappe.get_all(
		"Communication",
		filters={
			"reference_doctype": "MH Ticket",
			"reference_name": ticket,
			"communication_type": "Communication",
			"communication_medium": "Email",
			"sent_or_received": ("in", ("Sent", "Received")),
		},
		fields=["name", "sent_or_received", "sender", "sender_full_name", "content", "communication_date"],
		order_by="communication_date asc, creation asc",
	)
	for message in messages:
		message.from_customer = message.sent_or_received == "Received"
		# Intake keeps < and > of header text as entities; the page escapes the plain text again.
		message.author = html.unescape(message.sender_full_name or message.sender or _("Support"))
		message.html = sanitize_html(message.content or "")
		message.blocked_images = message.html.count("data-remote-src=")
	return messages


def ticket_files(ticket: str) -> list[frappe._dict]:
	return frappe.get_all(
		"File",
		filters={"attached_to_doctype": "MH Ticket", "attached_to_name": ticket, "is_folder": 0},
		fields=["file_name", "file_url", "file_size"],
		order_by="creation asc",
	)


def issue_nonce() -> str:
	"""A one-time token for the guest form (guests have no CSRF token)."""
	nonce = secrets.token_urlsafe(24)
	frappe.cache.set_value(f"machhelpdesk:portal-nonce:{nonce}", 1, expires_in_sec=NONCE_SECONDS)
	return nonce


def consume_nonce(nonce: str | None) -> bool:
	if not nonce:
		return False
	key = f"machhelpdesk:portal-nonce:{nonce}"
	if not frappe.cache.get_value(key):
		return False
	frappe.cache.delete_value(key)
	return True


def update_website_context(context) -> None:
	"""``update_website_context`` hook: with the helpdesk hidden, no page links to the portal."""
	if not portal_hidden():
		return
	if context.sidebar_items:
		context.sidebar_items = [
			item for item in context.sidebar_items if not _is_portal_route(item.get("route"))
		]


def _is_portal_route(route: str | None) -> bool:
	route = "/" + (route or "").strip("/")
	return any(route == r or route.startswith(r + "/") for r in PORTAL_ROUTES)


# --- what the forms do ---------------------------------------------------------------------------------


@frappe.whitelist(methods=["POST"])
def reply_to_ticket(ticket: str, message: str | None = None) -> dict:
	"""The customer's answer from the ticket page, with the files posted as ``attachments``."""
	ensure_portal_open()
	doc = customer_ticket(ticket)
	if status_category(doc.status) == "Closed":
		frappe.throw(_("This ticket is closed. Re-open it first, or open a new ticket."), TicketClosedError)
	text = clean_message(message)
	files = uploaded_files()
	if not text and not files:
		frappe.throw(_("Write a message or attach a file."), title=_("Nothing to send"))
	add_customer_message(doc, text, files, *signed_in_sender())
	return {"ticket": doc.name, "status": frappe.db.get_value("MH Ticket", doc.name, "status")}


@frappe.whitelist(methods=["POST"])
def reopen_ticket(ticket: str) -> dict:
	"""Re-open a closed ticket of one's own, when "Allow public users to re-open" is on."""
	ensure_portal_open()
	doc = customer_ticket(ticket)
	if not cint(get_settings().allow_reopen):
		frappe.throw(
			_("Closed tickets cannot be re-opened. Please open a new ticket."), ReopenNotAllowedError
		)
	if status_category(doc.status) in ("Closed", "Resolved"):
		reopen(doc, _("Re-opened by {0} on the portal.").format(frappe.session.user))
	return {"ticket": doc.name, "status": doc.status}


def _ticket_rate_limit() -> int:
	return 20 if frappe.session.user == "Guest" else 200


@frappe.whitelist(allow_guest=True, methods=["POST"])
@rate_limit(limit=_ticket_rate_limit, seconds=60 * 60)
def create_ticket(
	subject: str,
	description: str,
	email: str | None = None,
	full_name: str | None = None,
	nonce: str | None = None,
) -> dict:
	"""A new ticket from /mh/new, with the files posted as ``attachments``.

	Signed-in people open it under their own address. Guests may only when registration is not
	required; their address then meets the unknown-sender policy mail meets.
	"""
	ensure_portal_open()
	subject = " ".join((subject or "").split())[:SUBJECT_LENGTH]
	text = clean_message(description)
	if not subject or not text:
		frappe.throw(_("Please give a subject and describe your problem."), title=_("Missing details"))
	if frappe.session.user == "Guest":
		sender_email, sender_name, contact = guest_sender(email, full_name, nonce)
	else:
		ensure_customer()
		sender_email, sender_name = signed_in_sender()
		contact = next(iter(contacts_of(frappe.session.user)), None)
	files = uploaded_files()
	account = frappe.get_all(
		"MH IMAP Account",
		filters={"enabled": 1},
		fields=["name", "default_department"],
		order_by="creation asc",
		limit=1,
	)
	now = now_datetime()
	ticket = frappe.get_doc(
		{
			"doctype": "MH Ticket",
			"subject": subject,
			"raised_by": sender_email,
			"raised_by_name": sender_name,
			"contact": contact,
			# Agents' answers leave through the first mailbox, so the customer's mail comes back to it.
			"imap_account": account[0].name if account else None,
			"department": account[0].default_department if account else None,
			"opened_on": now,
			"last_customer_message_on": now,
		}
	)
	ticket.insert(ignore_permissions=True)
	add_customer_message(ticket, text, files, sender_email, sender_name)
	signed_in = frappe.session.user != "Guest"
	return {"ticket": ticket.name, "url": f"/mh/tickets/{quote(ticket.name)}" if signed_in else None}


def guest_sender(email: str | None, full_name: str | None, nonce: str | None) -> tuple[str, str, str | None]:
	from machhelpdesk.intake import TICKETED, contact_for, ensure_contact, unknown_sender_outcome

	if cint(get_settings().require_registration):
		frappe.throw(_("Please log in to open a ticket."), frappe.PermissionError)
	if not consume_nonce(nonce):
		frappe.throw(
			_("This form has expired. Please reload the page and send it again."), frappe.PermissionError
		)
	address = (email or "").strip().lower()
	if not validate_email_address(address):
		frappe.throw(_("Please give a valid email address, so that we can answer you."))
	name = " ".join((full_name or "").split())[:140]
	state, _reason, create_contact = unknown_sender_outcome(address)
	if state != TICKETED:
		frappe.throw(
			_("We cannot take a ticket from this address here. Please log in, or write to us by email."),
			frappe.PermissionError,
		)
	contact = contact_for(address)
	if not contact and create_contact:
		contact = ensure_contact(frappe._dict(email=address, name=name))
	return address, name, contact


def signed_in_sender() -> tuple[str, str]:
	user = frappe.session.user
	return (frappe.db.get_value("User", user, "email") or user).lower(), get_fullname(user)


def clean_message(text: str | None) -> str:
	return (text or "").replace("\r\n", "\n").strip()[:MESSAGE_LENGTH]


def uploaded_files() -> list[tuple[str, bytes]]:
	"""The files posted as ``attachments``, each checked against the size limit before anything is saved."""
	from machhelpdesk.intake import effective_attachment_limit, human_size

	request = getattr(frappe.local, "request", None)
	posted = [f for f in (request.files.getlist("attachments") if request else []) if f and f.filename]
	if len(posted) > MAX_FILES:
		frappe.throw(_("Attach at most {0} files to one message.").format(MAX_FILES))
	limit = effective_attachment_limit(get_settings())
	files = []
	for index, item in enumerate(posted, 1):
		name = safe_filename(item.filename, content_type=item.mimetype or "", index=index)
		content = item.stream.read(limit + 1)
		if len(content) > limit:
			frappe.throw(
				_("{0} is too large: files may be at most {1}.").format(name, human_size(limit)),
				AttachmentTooLargeError,
			)
		if content:
			files.append((name, content))
	return files


def add_customer_message(ticket, text: str, files: list[tuple[str, bytes]], sender: str, sender_name: str):
	"""The customer's message in the ticket's thread, with its files stored privately on the ticket.

	It goes through the Communication controller, whose ``on_update`` lets the ticket move its status.
	"""
	from machhelpdesk.intake import store_attachment

	stored = []
	for name, content in files:
		file_url, _renamed = store_attachment(ticket.name, name, content)
		if not file_url:
			frappe.throw(_("{0} could not be stored.").format(name))
		stored.append(name)
	content = "<p>" + escape_html(text).replace("\n", "<br>") + "</p>" if text else ""
	if stored:
		content += f"<p>{escape_html(_('Attached:'))} {escape_html(', '.join(stored))}</p>"
	recipient = (
		frappe.db.get_value("MH IMAP Account", ticket.imap_account, "email_address")
		if ticket.imap_account
		else None
	)
	communication = frappe.get_doc(
		{
			"doctype": "Communication",
			"communication_type": "Communication",
			"communication_medium": "Email",
			"sent_or_received": "Received",
			"subject": ticket.subject,
			"sender": sender,
			"sender_full_name": sender_name or sender,
			"recipients": recipient,
			"content": content,
			"text_content": text,
			"reference_doctype": "MH Ticket",
			"reference_name": ticket.name,
			"communication_date": now_datetime(),
			"has_attachment": 1 if stored else 0,
		}
	)
	communication.flags.skip_add_signature = True
	communication.insert(ignore_permissions=True)
	return communication
