# Copyright (c) 2026, MachHelpdesk contributors
# License: MIT. See license.txt

import frappe
from frappe import _
from frappe.model.document import Document

from machhelpdesk.engine import rules as engine_rules

ACTION_VALUE_FIELDS = {
	"Forward to Department": "department",
	"Assign To": "agent",
	"Set Status": "status",
	"Override Priority": "priority",
}


class MHProcessingRule(Document):
	# begin: auto-generated types
	# This code is auto-generated. Do not modify anything in this block.

	from typing import TYPE_CHECKING

	if TYPE_CHECKING:
		from frappe.types import DF

		from machhelpdesk.machhelpdesk.doctype.mh_rule_action.mh_rule_action import MHRuleAction
		from machhelpdesk.machhelpdesk.doctype.mh_rule_condition.mh_rule_condition import MHRuleCondition

		actions: DF.Table[MHRuleAction]
		also_on_replies: DF.Check
		apply_to_all_accounts: DF.Check
		case_sensitive: DF.Check
		conditions: DF.Table[MHRuleCondition]
		enabled: DF.Check
		hit_count: DF.Int
		imap_account: DF.Link | None
		last_hit_on: DF.Datetime | None
		match: DF.Literal["All", "Any"]
		rule_name: DF.Data
		sequence: DF.Int
	# end: auto-generated types

	def validate(self):
		self.validate_scope()
		self.validate_with_engine()

	def validate_scope(self):
		if self.apply_to_all_accounts:
			self.imap_account = None
		elif not self.imap_account:
			frappe.throw(
				_("Choose the IMAP account this rule belongs to, or tick Apply to all accounts."),
				title=_("IMAP account missing"),
			)

	def validate_with_engine(self):
		"""The engine's own validation, so a rule that saves is a rule the engine can run."""
		try:
			engine_rules.validate_rule(self.as_engine_rule())
		except engine_rules.RuleError as e:
			frappe.throw(str(e), title=_("Invalid processing rule"))

	def as_engine_rule(self) -> engine_rules.Rule:
		"""This rule as plain data for engine.rules."""
		return engine_rules.Rule(
			name=self.rule_name,
			conditions=[
				engine_rules.Condition(
					field=c.field, operator=c.operator, value=c.value or "", header_name=c.header_name or ""
				)
				for c in self.conditions
			],
			actions=[
				engine_rules.Action(action=a.action, value=a.get(ACTION_VALUE_FIELDS.get(a.action, "")) or "")
				for a in self.actions
			],
			match=(self.match or "All").lower(),
			case_sensitive=bool(self.case_sensitive),
			enabled=bool(self.enabled),
			also_on_replies=bool(self.also_on_replies),
		)


def rules_for_account(account: str, include_disabled: bool = False) -> list[MHProcessingRule]:
	"""The account's rules and the global ones, in the order they run."""
	filters = {} if include_disabled else {"enabled": 1}
	names = frappe.get_all(
		"MH Processing Rule",
		filters=filters,
		or_filters={"imap_account": account, "apply_to_all_accounts": 1},
		order_by="sequence asc, creation asc",
		pluck="name",
	)
	return [frappe.get_cached_doc("MH Processing Rule", name) for name in names]
