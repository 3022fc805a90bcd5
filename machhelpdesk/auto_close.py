"""Auto close: tickets that wait on the customer, and hear nothing back, close by themselves.

Run hourly (``tasks.close_waiting_tickets``), with "Ticket auto close" on:

- a ticket is watched when its status is in the Waiting category and the last message the customer
  could see (a mail in its thread) is ours. A ticket in the Open category, or whose last message is the
  customer's, waits on an agent and is never closed;
- at half the waiting period the customer gets one warning ("this ticket will close in N hours unless
  you reply"), when warnings are on. A ticket warned late (the job was off, or warnings were just
  turned on) still gets half a period after the warning before it closes;
- after the whole period the ticket is set to the Closed category's status, with a note in its timeline,
  and the customer gets a notice. Both mails carry ``Auto-Submitted: auto-generated``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import frappe
from frappe import _
from frappe.utils import cint, format_datetime, get_datetime, now_datetime

from machhelpdesk.engine.threads import tag_subject
from machhelpdesk.machhelpdesk.doctype.mh_settings.mh_settings import get_settings
from machhelpdesk.machhelpdesk.doctype.mh_ticket.mh_ticket import default_status


@dataclass
class AutoCloseRun:
	closed: list[str] = field(default_factory=list)
	warned: list[str] = field(default_factory=list)
	failed: list[str] = field(default_factory=list)


@dataclass
class LastMessage:
	on: datetime
	from_customer: bool


def close_waiting_tickets() -> AutoCloseRun:
	"""Warn and close the tickets whose customers have not answered in time."""
	run = AutoCloseRun()
	settings = get_settings()
	hours = cint(settings.auto_close_after_hours)
	if not settings.auto_close_tickets or hours < 1:
		return run
	now = now_datetime()
	period = timedelta(hours=hours)
	tickets = waiting_tickets()
	last_messages = last_visible_messages([t.name for t in tickets])
	for ticket in tickets:
		last = last_messages.get(ticket.name) or LastMessage(get_datetime(ticket.opened_on), False)
		if last.from_customer:
			continue  # the customer spoke last: the agents owe an answer
		warned_on = get_datetime(ticket.auto_close_warned_on) if ticket.auto_close_warned_on else None
		if warned_on and warned_on < last.on:
			warned_on = None  # a warning from an earlier wait
		close_at = last.on + period
		if settings.auto_close_warning:
			if not warned_on:
				if now >= last.on + period / 2:
					settle(
						run.warned, run, ticket.name, warn_customer, close_at=max(close_at, now + period / 2)
					)
				continue
			close_at = max(close_at, warned_on + period / 2)
		if now >= close_at:
			settle(run.closed, run, ticket.name, close_ticket, hours=hours)
	return run


def settle(done: list[str], run: AutoCloseRun, ticket: str, action, **kwargs) -> None:
	"""Run one ticket's action in a transaction of its own, so one bad ticket does not stop the rest."""
	try:
		action(ticket, **kwargs)
	except Exception:
		frappe.db.rollback()
		frappe.log_error(title=f"Auto close failed for {ticket}", reference_doctype="MH Ticket")
		run.failed.append(ticket)
		return
	frappe.db.commit()  # this ticket's status, note and notice are done; later failures must not undo them
	done.append(ticket)


def waiting_tickets() -> list[frappe._dict]:
	statuses = frappe.get_all("MH Ticket Status", filters={"category": "Waiting"}, pluck="name")
	if not statuses:
		return []
	return frappe.get_all(
		"MH Ticket",
		filters={"status": ("in", statuses)},
		fields=["name", "opened_on", "auto_close_warned_on"],
		order_by="name asc",
	)


def last_visible_messages(tickets: list[str]) -> dict[str, LastMessage]:
	"""Each ticket's latest mail in its thread (internal notes are Comments and do not count)."""
	if not tickets:
		return {}
	found: dict[str, LastMessage] = {}
	for row in frappe.get_all(
		"Communication",
		filters={
			"reference_doctype": "MH Ticket",
			"reference_name": ("in", tickets),
			"communication_type": "Communication",
			"communication_medium": "Email",
			"sent_or_received": ("in", ("Sent", "Received")),
		},
		fields=["reference_name", "communication_date", "creation", "sent_or_received"],
		order_by="communication_date desc, creation desc",
	):
		if row.reference_name not in found:
			found[row.reference_name] = LastMessage(
				get_datetime(row.communication_date or row.creation), row.sent_or_received == "Received"
			)
	return found


def warn_customer(name: str, close_at: datetime) -> None:
	ticket = frappe.get_doc("MH Ticket", name)
	hours_left = max(1, math.ceil((close_at - now_datetime()).total_seconds() / 3600))
	sent = send_notice(
		ticket,
		_("This ticket will close in {0} hours unless you reply: {1}").format(hours_left, ticket.subject),
		"machhelpdesk/templates/emails/auto_close_warning.html",
		hours_left=hours_left,
	)
	# Recorded even when no mail could go out, so the ticket still closes in time.
	ticket.db_set("auto_close_warned_on", now_datetime(), update_modified=False)
	if sent:
		note = _("Auto close: the customer was told that this ticket closes in {0} hours unless they reply.")
	else:
		note = _("Auto close: this ticket closes in {0} hours. The customer could not be told: {1}")
	ticket.add_comment("Info", note.format(hours_left, _("no outgoing Email Account is set up.")))


def close_ticket(name: str, hours: int) -> None:
	ticket = frappe.get_doc("MH Ticket", name)
	ticket.status = default_status("Closed")
	ticket.flags.ignore_permissions = True
	ticket.save()
	sent = send_notice(
		ticket,
		_("Closed: {0}").format(ticket.subject),
		"machhelpdesk/templates/emails/auto_close.html",
		hours=hours,
	)
	note = _("Closed automatically: no answer from the customer for {0} hours (checked {1}).").format(
		hours, format_datetime(now_datetime())
	)
	if not sent:
		note += " " + _("The customer could not be told: {0}").format(
			_("no outgoing Email Account is set up.")
		)
	ticket.add_comment("Info", note)


def send_notice(ticket, subject: str, template: str, **values) -> bool:
	"""Queue an automatic mail to the requester, tagged with the ticket number so answers thread.

	Returns False when there is no outgoing Email Account to send it with: auto close goes on, and
	the note on the ticket says that the customer was not told.
	"""
	from machhelpdesk.outbound import send_automatic
	from machhelpdesk.portal import portal_ticket_url

	if not ticket.raised_by:
		return False
	url = portal_ticket_url(ticket.name)
	message = frappe.render_template(
		template,
		{
			"ticket": ticket.name,
			"subject": ticket.subject,
			"ticket_url": url,
			"reopen_url": url if cint(get_settings().allow_reopen) else None,
			**values,
		},
	)
	try:
		send_automatic(
			recipients=[ticket.raised_by],
			subject=tag_subject(subject, ticket.name),
			message=message,
			kind="auto-generated",
			reference_doctype="MH Ticket",
			reference_name=ticket.name,
			imap_account=ticket.imap_account,
		)
	except frappe.OutgoingEmailError:
		frappe.clear_last_message()
		return False
	return True
