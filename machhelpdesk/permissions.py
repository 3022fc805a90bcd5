"""Who sees which ticket.

Roles grant access; these hooks narrow it. One query-builder criterion per user serves both the list
(``permission_query_conditions``) and the single document (``has_permission``), so the two never disagree.

- Administrator, System Manager and MH Manager: every ticket.
- MH Agent: tickets of their departments, tickets with no department, and tickets assigned to them.
- Everyone else (customers with MH Customer): tickets they raised, or whose contact is theirs.

The portal (``has_website_permission``) applies the customers' rule to everyone: on /mh/ an agent, too,
sees only the tickets they raised.
"""

from pypika.terms import Criterion

import frappe

FULL_ACCESS_ROLES = {"System Manager", "MH Manager"}


def ticket_criterion(user: str | None = None) -> Criterion | None:
	"""The condition a ticket must meet for ``user`` to see it; None means no restriction."""
	user = user or frappe.session.user
	if user == "Administrator":
		return None
	roles = set(frappe.get_roles(user))
	if roles & FULL_ACCESS_ROLES:
		return None
	ticket = frappe.qb.DocType("MH Ticket")
	if "MH Agent" in roles:
		from machhelpdesk.machhelpdesk.doctype.mh_department.mh_department import departments_of

		criterion = ticket.department.isnull() | (ticket.department == "")
		departments = departments_of(user)
		if departments:
			criterion |= ticket.department.isin(departments)
		return criterion | ticket._assign.like(f'%"{user}"%')
	return customer_criterion(user)


def customer_criterion(user: str) -> Criterion:
	"""The tickets ``user`` raised: by their address, through their contact, or (with ERPNext) through
	another contact of the same Customer. The portal shows exactly these, to everyone."""
	ticket = frappe.qb.DocType("MH Ticket")
	email = (frappe.db.get_value("User", user, "email") or user).lower()
	criterion = ticket.raised_by == email
	contacts = contacts_of(user)
	contacts += contacts_of_same_customer(contacts)
	if contacts:
		criterion |= ticket.contact.isin(contacts)
	return criterion


def contacts_of(user: str) -> list[str]:
	"""Contacts linked to this website user."""
	return frappe.get_all("Contact", filters={"user": user}, pluck="name")


def contacts_of_same_customer(contacts: list[str]) -> list[str]:
	"""With ERPNext, the other contacts of the Customers these contacts are linked to."""
	if not contacts or "erpnext" not in frappe.get_installed_apps():
		return []
	customers = frappe.get_all(
		"Dynamic Link",
		filters={"parenttype": "Contact", "parent": ("in", contacts), "link_doctype": "Customer"},
		pluck="link_name",
	)
	if not customers:
		return []
	return frappe.get_all(
		"Dynamic Link",
		filters={
			"parenttype": "Contact",
			"link_doctype": "Customer",
			"link_name": ("in", customers),
			"parent": ("not in", contacts),
		},
		pluck="parent",
		distinct=True,
	)


def ticket_query_conditions(user: str | None = None) -> str:
	criterion = ticket_criterion(user)
	if criterion is None:
		return ""
	# Backticks: in MariaDB double quotes are string literals, not identifiers.
	return criterion.get_sql(quote_char="`", with_namespace=True)


def ticket_has_permission(doc, ptype: str | None = None, user: str | None = None) -> bool:
	criterion = ticket_criterion(user)
	if criterion is None or doc.is_new() or not doc.name:
		return True
	ticket = frappe.qb.DocType("MH Ticket")
	return bool(
		frappe.qb.from_(ticket).select(ticket.name).where(ticket.name == doc.name).where(criterion).run()
	)


def ticket_has_website_permission(
	doc, ptype: str | None = None, user: str | None = None, verbose=False
) -> bool:
	"""The portal's rule, for everyone including agents: a person sees the tickets they raised."""
	user = user or frappe.session.user
	if user == "Guest" or not doc.name:
		return False
	ticket = frappe.qb.DocType("MH Ticket")
	return bool(
		frappe.qb.from_(ticket)
		.select(ticket.name)
		.where(ticket.name == doc.name)
		.where(customer_criterion(user))
		.run()
	)


def keep_notes_off_the_ticket(comment, method=None) -> None:
	"""Comment ``on_update``/``on_trash`` hook: no note text in the ticket's ``_comments``.

	Frappe copies the start of each comment into the document's ``_comments`` (for the list view's
	comment count), and customers may read their own tickets through the API. Internal notes must not
	reach them that way: the entries stay, so the count does, without their text.
	"""
	if comment.reference_doctype != "MH Ticket" or not comment.reference_name:
		return
	cached = frappe.db.get_value("MH Ticket", comment.reference_name, "_comments")
	if not cached:
		return
	entries = frappe.parse_json(cached) or []
	if any(entry.get("comment") for entry in entries):
		for entry in entries:
			entry["comment"] = ""
		frappe.db.set_value(
			"MH Ticket", comment.reference_name, "_comments", frappe.as_json(entries), update_modified=False
		)
