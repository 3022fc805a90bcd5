"""/mh/tickets: the signed-in person's tickets, newest first, N per page (0 = all). See machhelpdesk.portal."""

import frappe
from frappe import _

from machhelpdesk.portal import ensure_customer, ensure_portal_open, my_tickets, send_guest_to_login

no_cache = 1
sitemap = 0


def get_context(context):
	ensure_portal_open()
	send_guest_to_login("/mh/tickets")
	ensure_customer()
	context.no_cache = 1
	context.show_sidebar = True
	context.title = _("My tickets")
	context.listing = my_tickets(frappe.form_dict.get("page") or 1)
	return context
