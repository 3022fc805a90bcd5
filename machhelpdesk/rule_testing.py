"""Dry runs of processing rules: what the rules (saved, disabled or still being edited) would do to past or
pasted mail. Nothing is written, on the server or in the database.
"""

from __future__ import annotations

import json

import frappe
from frappe import _
from frappe.utils import cint, escape_html

from machhelpdesk.engine.message import MessageParseError, parse_message
from machhelpdesk.engine.rules import RuleError, validate_rule
from machhelpdesk.intake import plan_message, read_raw

MAX_MESSAGES = 200
MAX_RAW_BYTES = 25 * 1024 * 1024


def dry_run(
	account: str,
	*,
	rule_names: list[str] | None = None,
	draft_rules: list[dict] | None = None,
	last: int = 0,
	raw: bytes | None = None,
) -> list[dict]:
	"""Run rules against the last ``last`` ledger messages with raw copies, or one raw message.

	``rule_names`` picks saved rules (enabled or not). ``draft_rules`` are unsaved MH Processing Rule
	documents as dicts (a form's current state); they run as if enabled, after the picked ones. With
	neither, the account's enabled rules run. Returns one plain dict per message.
	"""
	from machhelpdesk.machhelpdesk.doctype.mh_processing_rule.mh_processing_rule import rules_for_account

	account_doc = frappe.get_doc("MH IMAP Account", account)
	if rule_names is None and not draft_rules:
		docs = rules_for_account(account)
	else:
		docs = [frappe.get_doc("MH Processing Rule", name) for name in rule_names or ()]
	rules = []
	for doc in docs:
		rule = doc.as_engine_rule()
		rule.enabled = True  # picked on purpose: a disabled rule is tried as if it were on
		rules.append(rule)
	for draft in draft_rules or []:
		doc = frappe.get_doc({**draft, "doctype": "MH Processing Rule"})
		rule = doc.as_engine_rule()
		rule.enabled = True
		try:
			validate_rule(rule)
		except RuleError as e:
			frappe.throw(str(e), title=_("Invalid processing rule"))
		rules.append(rule)

	messages: list[tuple[str, bytes]] = []
	if raw is not None:
		if len(raw) > MAX_RAW_BYTES:
			frappe.throw(_("The message is larger than {0} MB.").format(MAX_RAW_BYTES // (1024 * 1024)))
		messages.append((_("pasted message"), raw))
	else:
		rows = frappe.get_all(
			"MH Inbound Mail",
			filters={"imap_account": account, "raw_path": ("is", "set")},
			fields=["name", "raw_path"],
			order_by="creation desc",
			limit=min(max(cint(last), 1), MAX_MESSAGES),
		)
		for row in rows:
			try:
				messages.append((row.name, read_raw(row.raw_path)))
			except OSError:
				continue

	results = []
	for source, data in messages:
		try:
			parsed = parse_message(data)
		except MessageParseError as e:
			results.append(
				{"source": source, "subject": "", "from": "", "outcome": "Failed", "reason": str(e)}
			)
			continue
		plan = plan_message(account_doc, parsed, rules=rules)
		results.append(
			{
				"source": source,
				"subject": parsed.subject,
				"from": parsed.sender.email if parsed.sender else "",
				"outcome": plan.state,
				"reason": plan.reason,
				"ticket": plan.ticket,
				"department": plan.decision.department if plan.decision else None,
				"assign_to": plan.decision.assign_to if plan.decision else None,
				"status": plan.decision.status if plan.decision else None,
				"priority": plan.decision.priority if plan.decision else None,
				"summary": plan.decision.summary() if plan.decision else "",
				"trace": plan.decision.as_dict()["trace"] if plan.decision else [],
			}
		)
	return results


def results_html(results: list[dict]) -> str:
	"""The dry run as an HTML table for the desk; every value is escaped."""
	if not results:
		return f'<p class="text-muted">{escape_html(_("No messages with a raw copy in the ledger."))}</p>'
	rows = []
	for r in results:
		trace = "<br>".join(
			escape_html(f"{t['rule']}: {t['skipped'] or (_('matched') if t['matched'] else _('no match'))}")
			for t in r["trace"]
		)
		rows.append(
			"<tr>"
			f"<td>{escape_html(r['from'])}<br><small>{escape_html(r['subject'])}</small></td>"
			f"<td><b>{escape_html(_(r['outcome']))}</b> {escape_html(r['reason'] or '')}"
			f"<br><small>{escape_html(r.get('summary') or '')}</small></td>"
			f"<td><small>{trace}</small></td>"
			"</tr>"
		)
	head = "".join(f"<th>{escape_html(h)}</th>" for h in (_("Message"), _("Would be"), _("Trace")))
	return f'<table class="table table-bordered"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


@frappe.whitelist(methods=["POST"])
def dry_run_rules(
	account: str,
	rule_names: str | list | None = None,
	draft_rules: str | list | None = None,
	last: int = 20,
	raw: str | None = None,
) -> dict:
	"""Desk action "Test rules" (managers): nothing is changed. Returns the results and an HTML table."""
	frappe.get_doc("MH IMAP Account", account).check_permission("write")
	if not frappe.has_permission("MH Processing Rule", "write"):
		frappe.throw(_("Only helpdesk managers can test processing rules."), frappe.PermissionError)
	names = json.loads(rule_names) if isinstance(rule_names, str) else rule_names
	drafts = json.loads(draft_rules) if isinstance(draft_rules, str) else draft_rules
	if isinstance(drafts, dict):
		drafts = [drafts]
	data = raw.encode("utf-8", "surrogateescape") if raw else None
	results = dry_run(account, rule_names=names or None, draft_rules=drafts, last=cint(last), raw=data)
	return {"results": results, "html": results_html(results)}
