"""/mh/tickets/<name> (route rule in hooks.py): one ticket of the signed-in person. See machhelpdesk.portal."""

import html
from urllib.parse import quote

import frappe
from frappe import _
from frappe.utils import cint

from machhelpdesk.intake import effective_attachment_limit, human_size
from machhelpdesk.machhelpdesk.doctype.mh_settings.mh_settings import get_settings
from machhelpdesk.portal import (
	MAX_FILES,
	customer_ticket,
	ensure_portal_open,
	send_guest_to_login,
	ticket_files,
	ticket_messages,
)
from machhelpdesk.status_flow import status_category

no_cache = 1
sitemap = 0


def get_context(context):
	ensure_portal_open()
	name = frappe.form_dict.get("name") or ""
	send_guest_to_login(f"/mh/tickets/{quote(name)}")
	doc = customer_ticket(name)
	settings = get_settings()
	category = status_category(doc.status)
	limit = effective_attachment_limit(settings)
	context.no_cache = 1
	context.show_sidebar = True
	context.title = doc.name  # the subject is the customer's text: it is shown escaped, in the page only
	context.parents = [{"route": "mh/tickets", "title": _("My tickets")}]
	context.doc = doc
	# Frappe stores Data fields with tags filtered to entities; the page escapes the plain text itself.
	context.subject = html.unescape(doc.subject or "")
	context.category = category
	context.status_color = (
		frappe.get_cached_value("MH Ticket Status", doc.status, "color") if doc.status else None
	)
	context.messages = ticket_messages(doc.name)
	context.files = ticket_files(doc.name)
	context.can_reply = category != "Closed"
	context.can_reopen = category == "Closed" and bool(cint(settings.allow_reopen))
	context.limit_bytes = limit
	context.limit_label = human_size(limit)
	context.max_files = MAX_FILES
	return context
