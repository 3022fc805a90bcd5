"""/mh/new: open a ticket from the web. Guests log in first, unless registration is not required."""

import frappe
from frappe import _
from frappe.utils import cint

from machhelpdesk.intake import effective_attachment_limit, human_size
from machhelpdesk.machhelpdesk.doctype.mh_settings.mh_settings import get_settings
from machhelpdesk.portal import (
	MAX_FILES,
	ensure_customer,
	ensure_portal_open,
	issue_nonce,
	send_guest_to_login,
)

no_cache = 1
sitemap = 0


def get_context(context):
	ensure_portal_open()
	settings = get_settings()
	guest = frappe.session.user == "Guest"
	if guest and cint(settings.require_registration):
		send_guest_to_login("/mh/new")
	if not guest:
		ensure_customer()
	limit = effective_attachment_limit(settings)
	context.no_cache = 1
	context.show_sidebar = not guest
	context.title = _("New ticket")
	context.guest = guest
	context.nonce = issue_nonce() if guest else ""
	context.limit_bytes = limit
	context.limit_label = human_size(limit)
	context.max_files = MAX_FILES
	return context
