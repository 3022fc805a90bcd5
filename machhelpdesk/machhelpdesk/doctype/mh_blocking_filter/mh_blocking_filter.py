# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

import re

import regex

import frappe
from frappe import _
from frappe.model.document import Document
from frappe.utils import validate_email_address

DOMAIN_PATTERN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
REGEX_TIMEOUT = 0.05


class MHBlockingFilter(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		description: DF.SmallText | None
		enabled: DF.Check
		filter_type: DF.Literal["Address", "Domain", "Regex"]
		hit_count: DF.Int
		last_hit_on: DF.Datetime | None
		value: DF.Data
	# end: auto-generated types

	def validate(self):
		self.value = (self.value or "").strip()
		if self.filter_type in ("Address", "Domain"):
			self.value = self.value.lower()
		if self.filter_type == "Address" and not validate_email_address(self.value):
			frappe.throw(
				_("{0} is not an email address. To block a whole domain, choose Block By: Domain.").format(
					frappe.bold(self.value)
				),
				title=_("Invalid address"),
			)
		if self.filter_type == "Domain":
			self.value = self.value.lstrip("@").rstrip(".")
			if not DOMAIN_PATTERN.match(self.value):
				frappe.throw(
					_("{0} is not a domain name, such as example.com.").format(frappe.bold(self.value)),
					title=_("Invalid domain"),
				)
		if self.filter_type == "Regex":
			try:
				regex.compile(self.value, regex.IGNORECASE)
			except regex.error as e:
				frappe.throw(
					_("The regular expression is invalid at position {0}: {1}").format(e.pos, e.msg),
					title=_("Invalid regular expression"),
				)

	def matches(self, address: str) -> bool:
		"""Whether this filter blocks the sender address (lower-case)."""
		address = (address or "").lower()
		if self.filter_type == "Address":
			return address == self.value
		if self.filter_type == "Domain":
			domain = address.rpartition("@")[2]
			return domain == self.value or domain.endswith("." + self.value)
		try:
			return bool(regex.search(self.value, address, regex.IGNORECASE, timeout=REGEX_TIMEOUT))
		except (regex.error, TimeoutError):
			return False


def blocking_filter_for(address: str) -> MHBlockingFilter | None:
	"""The first enabled filter that blocks this sender, if any."""
	for name in frappe.get_all(
		"MH Blocking Filter", filters={"enabled": 1}, order_by="creation asc", pluck="name"
	):
		doc = frappe.get_cached_doc("MH Blocking Filter", name)
		if doc.matches(address):
			return doc
	return None
