"""Install, migrate and uninstall steps: default records and roles, created idempotently."""

import frappe

ROLES = ("MH Agent", "MH Manager", "MH Customer")

# (name, category, sort order, indicator colour)
DEFAULT_STATUSES = (
	("Open", "Open", 10, "red"),
	("Replied", "Waiting", 10, "blue"),
	("Waiting on Customer", "Waiting", 20, "orange"),
	("Resolved", "Resolved", 10, "green"),
	("Closed", "Closed", 10, "gray"),
)

# (name, rank, default)
DEFAULT_PRIORITIES = (
	("Low", 10, 0),
	("Medium", 20, 1),
	("High", 30, 0),
	("Urgent", 40, 0),
)

DEFAULT_DEPARTMENT = "Support"


def after_install() -> None:
	create_defaults()


def after_migrate() -> None:
	"""Keep roles in the shape the app needs; records an admin edited or removed are left alone."""
	set_up_roles()


def before_tests() -> None:
	"""Give a fresh test site what the app's tests expect, without the setup wizard."""
	from frappe.desk.page.setup_wizard.setup_wizard import setup_complete

	if not frappe.db.get_single_value("System Settings", "setup_complete"):
		setup_complete(
			{
				"language": "English",
				"country": "India",
				"timezone": "UTC",
				"currency": "USD",
				"full_name": "Test Admin",
				"email": "admin@example.com",
				"password": "admin",
			}
		)
	create_defaults()
	frappe.db.commit()  # nosemgrep: tests start from this state


def create_defaults() -> None:
	"""Create the default roles, statuses, priorities, department and settings once.

	Running it again changes nothing: existing records are never overwritten.
	"""
	set_up_roles()
	for name, category, sort_order, color in DEFAULT_STATUSES:
		if not frappe.db.exists("MH Ticket Status", name):
			frappe.get_doc(
				{
					"doctype": "MH Ticket Status",
					"status_name": name,
					"category": category,
					"sort_order": sort_order,
					"color": color,
				}
			).insert(ignore_permissions=True)
	for name, rank, is_default in DEFAULT_PRIORITIES:
		if not frappe.db.exists("MH Ticket Priority", name):
			frappe.get_doc(
				{
					"doctype": "MH Ticket Priority",
					"priority_name": name,
					"rank": rank,
					"is_default": is_default,
				}
			).insert(ignore_permissions=True)
	if not frappe.db.exists("MH Department", DEFAULT_DEPARTMENT) and not frappe.db.count("MH Department"):
		frappe.get_doc({"doctype": "MH Department", "department_name": DEFAULT_DEPARTMENT}).insert(
			ignore_permissions=True
		)
	if not frappe.db.exists("Singles", {"doctype": "MH Settings"}):
		settings = frappe.new_doc("MH Settings")  # new_doc applies the JSON defaults
		settings.insert(ignore_permissions=True)


def set_up_roles() -> None:
	"""Frappe makes roles named in DocType permissions; customers' role must not open the desk."""
	for role in ROLES:
		if not frappe.db.exists("Role", role):
			frappe.get_doc(
				{"doctype": "Role", "role_name": role, "desk_access": role != "MH Customer"}
			).insert(ignore_permissions=True)
	frappe.db.set_value("Role", "MH Customer", "desk_access", 0)


def before_uninstall() -> None:
	"""Remove what Frappe's uninstall leaves behind: the app's roles and its ticket counter."""
	for role in ROLES:
		frappe.db.delete("Has Role", {"role": role})
		frappe.db.delete("Custom DocPerm", {"role": role})
		if frappe.db.exists("Role", role):
			frappe.delete_doc("Role", role, ignore_permissions=True, force=True)
	frappe.db.delete("Series", {"name": "MH Ticket"})
