"""/mh/confirm: an unknown sender confirms their address from the link in the challenge mail.

Works without login. GET shows the address and the held subjects with a Confirm button; only the
button's POST, carrying a nonce from the GET, confirms. The work is in machhelpdesk.challenge_response.
"""

import frappe
from frappe import _

from machhelpdesk.challenge_response import confirmation_page

no_cache = 1
sitemap = 0


def get_context(context):
	context.no_cache = 1
	context.no_breadcrumbs = 1
	context.title = _("Confirm your email address")
	context.update(confirmation_page(frappe.request.method if frappe.request else "GET", frappe.form_dict))
	return context
