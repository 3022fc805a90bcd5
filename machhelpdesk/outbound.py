"""Mail the helpdesk sends: agents' replies from the ticket, and automatic mail (challenges, notices).

- Replies leave from the outgoing Email Account that has the IMAP account's address, when there is one;
  otherwise from the default outgoing account with Reply-To set to the IMAP account's address, so that
  the customer's answer comes back to a mailbox the Email Parser reads.
- Their subject carries the ticket number, and their Message-ID is recorded on the Communication, so the
  answer threads by number and by In-Reply-To. They carry In-Reply-To and References naming the
  customer's last message, so mail clients show one thread.
- Automatic mail carries ``Auto-Submitted`` (RFC 3834): ``auto-replied`` when it answers a message,
  ``auto-generated`` otherwise. Frappe 15's ``sendmail`` takes no extra headers; its
  ``make_email_body_message`` hook may edit the message before it is sent, and the Message-ID we choose
  tells that hook which kind of automatic mail it is.
"""

from __future__ import annotations

import secrets

import frappe
from frappe.utils import get_url

from machhelpdesk.engine.threads import tag_subject

AUTO_KINDS = ("auto-replied", "auto-generated")
_AUTO_PREFIX = "mh-auto."


def make_auto_message_id(kind: str) -> str:
	"""A Message-ID (without brackets, as Frappe stores them) that marks automatic mail of this kind."""
	if kind not in AUTO_KINDS:
		raise ValueError(f"unknown automatic mail kind {kind!r}")
	domain = (get_url().split("://")[-1].split("/")[0].split(":")[0]) or "localhost"
	return f"{_AUTO_PREFIX}{kind}.{secrets.token_hex(12)}@{domain}"


def auto_kind_of(message_id: str | None) -> str | None:
	"""The automatic-mail kind a Message-ID of ours carries, if any."""
	value = (message_id or "").strip().strip("<>")
	if not value.startswith(_AUTO_PREFIX):
		return None
	kind = value[len(_AUTO_PREFIX) :].split(".", 1)[0]
	return kind if kind in AUTO_KINDS else None


def adjust_outgoing_mail(email) -> None:
	"""``make_email_body_message`` hook, run on every mail the site sends, just before sending.

	Automatic mail of ours gets ``Auto-Submitted`` (RFC 3834). An agent's reply on a ticket gets
	In-Reply-To and References (Frappe 15 sends a Communication without them), and Reply-To the
	ticket's IMAP address when it leaves from another account.
	"""
	message_id = (email.msg_root.get("Message-Id") or "").strip()
	kind = auto_kind_of(message_id)
	if kind:
		email.set_header("Auto-Submitted", kind)
		# Ask Exchange-style responders not to answer it either.
		email.set_header("X-Auto-Response-Suppress", "All")
		return
	if message_id:
		add_ticket_thread_headers(email, message_id.strip("<>"))


def add_ticket_thread_headers(email, message_id: str) -> None:
	reply = frappe.db.get_value(
		"Communication",
		{"message_id": message_id, "reference_doctype": "MH Ticket", "sent_or_received": "Sent"},
		["reference_name", "creation"],
		as_dict=True,
	)
	if not reply:
		return
	thread = thread_message_ids_of(reply.reference_name, before=reply.creation)
	if thread:
		email.set_header("In-Reply-To", thread[-1])
		email.set_header("References", " ".join(thread[-10:]))
	# Frappe sets Reply-To to one of its own incoming accounts; the answer belongs in the mailbox the
	# ticket came from. Leaving from that very address, no Reply-To is needed.
	_sender, reply_to = reply_route(frappe.db.get_value("MH Ticket", reply.reference_name, "imap_account"))
	if reply_to:
		email.set_header("Reply-To", reply_to)
	elif "Reply-To" in email.msg_root:
		del email.msg_root["Reply-To"]


def thread_message_ids_of(ticket: str, before=None) -> list[str]:
	"""The ticket's Message-IDs (``<…>``), oldest first: the first mail, then each message of its thread."""
	filters = {"reference_doctype": "MH Ticket", "reference_name": ticket, "message_id": ("is", "set")}
	if before:
		filters["creation"] = ("<", before)
	ids = []
	first = frappe.db.get_value("MH Ticket", ticket, "first_message_id")
	if first:
		ids.append(first if first.startswith("<") else f"<{first}>")
	for value in frappe.get_all(
		"Communication", filters=filters, order_by="creation asc", pluck="message_id", limit=50
	):
		wrapped = value if value.startswith("<") else f"<{value}>"
		if wrapped not in ids:
			ids.append(wrapped)
	return ids


def reply_route(imap_account: str | None) -> tuple[str | None, str | None]:
	"""(sender, reply_to) for mail about a ticket that came in through ``imap_account``."""
	if not imap_account:
		return None, None
	address = frappe.db.get_value("MH IMAP Account", imap_account, "email_address")
	if not address:
		return None, None
	if frappe.db.exists("Email Account", {"email_id": address, "enable_outgoing": 1}):
		return address, None
	return None, address


def send_automatic(
	*,
	recipients: list[str],
	subject: str,
	message: str,
	kind: str,
	reference_doctype: str | None = None,
	reference_name: str | None = None,
	imap_account: str | None = None,
	in_reply_to: str | None = None,
	now: bool = False,
) -> str:
	"""Queue an automatic mail through Frappe's Email Queue; returns its Message-ID (without brackets)."""
	message_id = make_auto_message_id(kind)
	sender, reply_to = reply_route(imap_account)
	frappe.sendmail(
		recipients=recipients,
		sender=sender,
		reply_to=reply_to,
		subject=subject,
		message=message,
		reference_doctype=reference_doctype,
		reference_name=reference_name,
		message_id=message_id,
		in_reply_to=in_reply_to,
		add_unsubscribe_link=0,
		now=now,
		delayed=not now,
	)
	return message_id


def prepare_ticket_reply(communication, method=None) -> None:
	"""Communication ``before_insert`` hook: an agent's mail from a ticket carries its number and route."""
	if not (
		communication.reference_doctype == "MH Ticket"
		and communication.reference_name
		and communication.communication_medium == "Email"
		and communication.sent_or_received == "Sent"
	):
		return
	communication.subject = tag_subject(communication.subject or "", communication.reference_name)
	sender, _reply_to = reply_route(
		frappe.db.get_value("MH Ticket", communication.reference_name, "imap_account")
	)
	if sender:
		communication.sender = sender
