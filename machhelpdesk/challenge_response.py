"""Challenge-response for unknown senders: their mail is held until they confirm their address once.

With *Require registration*, *Auto-generate accounts* and *Require confirmation* on (the defaults),
intake holds mail from an unknown sender and calls :func:`hold_message` inside its transaction.

- **Hold.** The ledger row stays *Held* with its raw copy, and says why a challenge was or was not sent.
- **Challenge.** At most one outstanding challenge per address (a unique column makes two workers
  unable to issue two), at most 3 per address in 24 hours, and the hourly cap of MH Settings overall.
  Machine-sent mail (list mail is the only kind that reaches here) is never challenged, nor, with
  *Only challenge senders that pass SPF or DKIM*, a sender the receiving server could not authenticate.
  The challenge mail answers the held message (In-Reply-To, ``Auto-Submitted: auto-replied``) and is
  queued through the Email Queue in intake's transaction, so it is sent only if the row is committed.
- **Token.** 256 random bits; the database keeps only its SHA-256 (:mod:`machhelpdesk.engine.challenge`).
  The Email Queue holds the mail until it is sent; :func:`scrub_sent_challenge_mail` empties it afterwards.
- **Confirm.** ``/mh/confirm`` shows the address and the held subjects on GET; only a POST carrying a
  nonce from that page confirms (see :func:`confirmation_page`). Confirming gives the sender a Contact
  and Website User, which is what makes a sender known to intake for good, and releases every held
  message from the address into tickets dated by their arrival, oldest first.
- **Kill.** :func:`expire_held_mail` (daily) expires held mail older than the kill period, deletes its
  raw copy and invalidates the challenge.
- **Desk.** Agents release one message, always allow a sender, or block a sender
  (:func:`release_held_mail`, :func:`always_allow_senders`, :func:`block_senders`).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

import frappe
from frappe import _
from frappe.utils import (
	add_days,
	add_to_date,
	cint,
	escape_html,
	format_datetime,
	get_datetime,
	get_url,
	now_datetime,
	validate_email_address,
)
from frappe.utils.password import get_encryption_key

from machhelpdesk.engine.challenge import (
	challenge_allowed,
	form_nonce_valid,
	hash_token,
	issue_token,
	looks_like_token,
	make_form_nonce,
	passes_spf_or_dkim,
	read_authentication_results,
	token_matches,
)
from machhelpdesk.intake import (
	BLOCKED,
	EXPIRED,
	FAILED,
	HELD,
	PROCESSING,
	TICKETED,
	contact_for,
	create_customer_user,
	ensure_contact,
	is_known_sender,
	persist,
	raw_root,
	ticket_from_held,
)

# Challenge statuses (MH Sender Challenge) and the ledger's challenge_status for held mail.
OUTSTANDING = "Outstanding"
CONFIRMED = "Confirmed"
CHALLENGE_EXPIRED = "Expired"
SUPERSEDED = "Superseded"
NOT_SENT = "Not Sent"

PER_ADDRESS_DAILY_CAP = 3
TOKEN_DAYS_WITHOUT_KILL = 30  # when held mail is never killed (kill period 0), links still expire
CONFIRM_ROUTE = "/mh/confirm"
DESK_ROLES = ("MH Agent", "MH Manager", "System Manager")
HELD_SUBJECTS_SHOWN = 20
SCRUBBED_MESSAGE = "(Removed after sending: this mail carried a one-time confirmation link.)"


class ChallengeOutstanding(Exception):
	"""Another worker issued a challenge for this address first (the unique column said so)."""


# --- holding mail (called by intake) -----------------------------------------------------------------


def hold_message(account, row, parsed, plan) -> None:
	"""Hold an unknown sender's message and challenge the sender when that is allowed.

	Called by intake inside its transaction, which commits the row (state from ``plan.state``, reason
	from ``plan.reason``) together with whatever this writes, the queued challenge mail included.
	"""
	address = normalize_address(parsed.sender.email if parsed.sender else "")
	if confirmed_meanwhile(address):
		# The sender confirmed after this pull looked them up (the link, another worker): no need to hold.
		plan.state = TICKETED
		plan.reason = _("the sender confirmed while this message was being read")
		plan.create_contact = True
		persist(account, row, parsed, plan)
		return
	now = now_datetime()
	challenge, reason = challenge_for(account, row, parsed, plan, address, now)
	plan.reason = reason
	frappe.db.set_value(
		"MH Inbound Mail",
		row.name,
		{
			"held_on": now,
			"challenge": challenge,
			"challenge_status": OUTSTANDING if challenge else NOT_SENT,
		},
		update_modified=False,
	)


def confirmed_meanwhile(address: str) -> bool:
	"""A fresh look (intake caches who is known for the length of a pull) at whether the sender is known."""
	return bool(address) and not frappe.get_hooks("mh_unknown_sender_policy") and is_known_sender(address)


def challenge_for(account, row, parsed, plan, address: str, now: datetime) -> tuple[str | None, str]:
	"""Issue a challenge for a held message if allowed. Returns (challenge or None, the row's reason)."""
	automation = plan.automation
	if automation and not automation.may_auto_reply:
		return None, _(
			"unknown sender: held without a challenge, because {0} mail is never challenged ({1})"
		).format(automation.kind, automation.reason)
	if not validate_email_address(address):
		return None, _("unknown sender: held without a challenge, because the address cannot receive mail")
	settings = frappe.get_cached_doc("MH Settings")
	if settings.challenge_only_authenticated:
		authserv_id = (settings.trusted_authserv_id or "").strip()
		result = read_authentication_results(parsed.header("Authentication-Results"), authserv_id)
		if not passes_spf_or_dkim(result):
			return None, _(
				"unknown sender: held without a challenge, because the sender passed neither SPF nor DKIM "
				"at {0} (spf={1}, dkim={2})"
			).format(authserv_id or _("(no trusted server set)"), result.spf or "none", result.dkim or "none")
	expire_lapsed_challenges(now, address)
	outstanding = outstanding_challenge(address)
	decision = challenge_allowed(
		outstanding_for_address=1 if outstanding else 0,
		sent_to_address_last_24h=challenges_issued_since(add_to_date(now, hours=-24), address),
		sent_globally_last_hour=challenges_issued_since(add_to_date(now, hours=-1)),
		per_address_daily_cap=PER_ADDRESS_DAILY_CAP,
		global_hourly_cap=cint(settings.challenge_hourly_cap),
	)
	if outstanding:
		return outstanding, _("unknown sender: held; {0}").format(decision.reason)
	if not decision.allowed:
		return None, _("unknown sender: held without a challenge, because {0}").format(decision.reason)
	try:
		challenge = issue_challenge(account, row, parsed, address, now)
	except ChallengeOutstanding:
		outstanding = outstanding_challenge(address, for_update=True)
		return outstanding, _("unknown sender: held; a challenge is already outstanding for this address")
	except frappe.OutgoingEmailError as e:
		return None, _(
			"unknown sender: held without a challenge, because the challenge mail could not be queued: {0}"
		).format(e)
	return challenge, _("unknown sender: held until the sender confirms; challenge sent to {0}").format(
		address
	)


def issue_challenge(account, row, parsed, address: str, now: datetime) -> str:
	"""Store a new challenge (its token's hash only) and queue the challenge mail; returns its name.

	Raises ChallengeOutstanding when another worker's challenge for the address got in first, and
	frappe.OutgoingEmailError when the site has no outgoing mail account. Both leave nothing behind.
	"""
	issued = issue_token(now, timedelta(days=token_days()))
	messages = len(frappe.local.message_log)
	frappe.db.savepoint("mh_challenge")
	try:
		challenge = frappe.get_doc(
			{
				"doctype": "MH Sender Challenge",
				"email": address,
				"status": OUTSTANDING,
				"active_for": address,
				"token_hash": issued.token_hash,
				"issued_on": now,
				"expires_on": issued.expires_at,
				"imap_account": account.name,
				"held_mail": row.name,
			}
		)
		challenge.insert(ignore_permissions=True)
		message_id = send_challenge_mail(account, parsed, address, issued.token, challenge)
	except frappe.UniqueValidationError as e:
		frappe.db.rollback(save_point="mh_challenge")
		del frappe.local.message_log[messages:]  # Frappe's "must be unique" notice: nobody needs it
		raise ChallengeOutstanding(address) from e
	except frappe.OutgoingEmailError:
		frappe.db.rollback(save_point="mh_challenge")
		del frappe.local.message_log[messages:]  # the ledger row says why
		raise
	frappe.db.set_value(
		"MH Sender Challenge", challenge.name, "challenge_message_id", message_id, update_modified=False
	)
	link_held_mail(address, challenge.name, OUTSTANDING)
	return challenge.name


def send_challenge_mail(account, parsed, address: str, token: str, challenge) -> str:
	"""Queue the challenge mail (it answers the held message); returns its Message-ID."""
	from machhelpdesk.outbound import send_automatic

	subject = (parsed.subject or "").strip() or _("your message")
	link = get_url(f"{CONFIRM_ROUTE}?token={token}")
	days = (get_datetime(challenge.expires_on) - get_datetime(challenge.issued_on)).days
	message = frappe.render_template(
		"machhelpdesk/templates/emails/challenge.html",
		{
			"link": link,
			"received_line": _("We received your message \u201c{0}\u201d.").format(
				escape_html(subject[:200])
			),
			"validity_line": _("The link works for {0} days.").format(days),
		},
	)
	return send_automatic(
		recipients=[address],
		subject=_("Please confirm your email address: {0}").format(subject[:150]),
		message=message,
		kind="auto-replied",
		reference_doctype="MH Sender Challenge",
		reference_name=challenge.name,
		imap_account=account.name,
		in_reply_to=parsed.message_id or None,
	)


def token_days() -> int:
	"""Links expire with the kill period (a link is no use once its mail is gone)."""
	days = cint(frappe.db.get_single_value("MH Settings", "kill_unconfirmed_after_days"))
	return days if days > 0 else TOKEN_DAYS_WITHOUT_KILL


def normalize_address(address: str) -> str:
	return (address or "").strip().lower()


def outstanding_challenge(address: str, for_update: bool = False) -> str | None:
	return frappe.db.get_value(
		"MH Sender Challenge", {"active_for": address, "status": OUTSTANDING}, "name", for_update=for_update
	)


def challenges_issued_since(since: datetime, address: str | None = None) -> int:
	filters = {"issued_on": (">", since)}
	if address:
		filters["email"] = address
	return frappe.db.count("MH Sender Challenge", filters)


def link_held_mail(address: str, challenge: str, status: str) -> None:
	"""Point every held message from the address at this challenge (the confirm page lists them all)."""
	inbound = frappe.qb.DocType("MH Inbound Mail")
	(
		frappe.qb.update(inbound)
		.set(inbound.challenge, challenge)
		.set(inbound.challenge_status, status)
		.where(inbound.state == HELD)
		.where(inbound.from_email == address)
	).run()


def end_challenges(
	address: str | None,
	status: str,
	note: str,
	confirmed_by: str | None = None,
	lapsed_by: datetime | None = None,
) -> None:
	"""Close the address's outstanding challenges (every address's, for None) and tell their held mail.

	With ``lapsed_by``, only the challenges that expired by then.
	"""
	filters = {"status": OUTSTANDING}
	if address:
		filters["email"] = address
	if lapsed_by:
		filters["expires_on"] = ("<=", lapsed_by)
	names = frappe.get_all("MH Sender Challenge", filters=filters, pluck="name")
	if not names:
		return
	challenge = frappe.qb.DocType("MH Sender Challenge")
	update = (
		frappe.qb.update(challenge)
		.set(challenge.status, status)
		.set(challenge.active_for, None)
		.set(challenge.note, note)
		.set(challenge.modified, now_datetime())
		.where(challenge.name.isin(names))
	)
	if status == CONFIRMED:
		update = update.set(challenge.confirmed_on, now_datetime()).set(challenge.confirmed_by, confirmed_by)
	update.run()
	inbound = frappe.qb.DocType("MH Inbound Mail")
	(
		frappe.qb.update(inbound)
		.set(inbound.challenge_status, status)
		.where(inbound.challenge.isin(names))
		.where(inbound.state == HELD)
	).run()


def expire_lapsed_challenges(now: datetime, address: str | None = None) -> None:
	"""Outstanding challenges past their expiry become Expired (and free the address for a new one)."""
	end_challenges(address, CHALLENGE_EXPIRED, _("the link expired unused"), lapsed_by=now)


# --- confirming a sender --------------------------------------------------------------------------------


def confirm_sender(address: str, confirmed_by: str, display_name: str | None = None) -> list[str]:
	"""Confirm an address for good and release its held mail; returns the new tickets. The caller commits.

	The sender gets a Contact linked to a Website User (intake's mark of a known sender); the
	outstanding challenge is closed as Confirmed; every held message from the address becomes a ticket,
	oldest first, each dated by its arrival.
	"""
	address = normalize_address(address)
	if display_name is None:
		display_name = frappe.db.get_value(
			"MH Inbound Mail", {"from_email": address, "from_name": ("is", "set")}, "from_name"
		)
	ensure_customer_account(address, display_name or "")
	end_challenges(
		address,
		CONFIRMED,
		_("confirmed by the sender") if confirmed_by == "link" else _("allowed by {0}").format(confirmed_by),
		confirmed_by=confirmed_by,
	)
	reason = (
		_("the sender confirmed their address")
		if confirmed_by == "link"
		else _("{0} always allows this sender").format(confirmed_by)
	)
	return release_mail_from(address, reason)


def ensure_customer_account(address: str, display_name: str) -> str:
	"""The sender's Contact, linked to a Website User with the customer role; made when missing."""
	sender = frappe._dict(email=address, name=display_name)
	contact = contact_for(address) or ensure_contact(sender)
	if not frappe.db.get_value("Contact", contact, "user"):
		user = frappe.db.get_value("User", address) or create_customer_user(sender)
		frappe.db.set_value("Contact", contact, "user", user)
	return contact


def release_mail_from(address: str, reason: str) -> list[str]:
	"""Every held message from the address becomes a ticket, oldest first; returns the tickets."""
	names = frappe.get_all(
		"MH Inbound Mail",
		filters={"state": HELD, "from_email": address},
		order_by="received_at asc, creation asc",
		pluck="name",
	)
	if names:
		inbound = frappe.qb.DocType("MH Inbound Mail")
		(
			frappe.qb.update(inbound)
			.set(inbound.challenge_status, CONFIRMED)
			.where(inbound.name.isin(names))
			.where(inbound.challenge.isnotnull())
		).run()
	tickets = []
	for name in names:
		ticket = release_one(name, reason, create_contact=True)
		if ticket:
			tickets.append(ticket)
	return tickets


def release_one(name: str, reason: str, create_contact: bool) -> str | None:
	"""Ticket one held message. A message that cannot be released stays held, and its row says why."""
	messages = len(frappe.local.message_log)
	frappe.db.savepoint("mh_release")
	try:
		return ticket_from_held(name, reason, create_contact=create_contact)
	except Exception as e:
		frappe.db.rollback(save_point="mh_release")
		del frappe.local.message_log[messages:]  # the error is on the row, not in a dialog
		frappe.db.set_value(
			"MH Inbound Mail",
			name,
			"reason",
			_("could not be released: {0}").format(str(e) or type(e).__name__)[:1000],
			update_modified=False,
		)
		return None


# --- the confirmation page ------------------------------------------------------------------------------


def confirmation_page(method: str, form: dict) -> dict:
	"""What ``/mh/confirm`` shows. GET (and HEAD) only read; a POST with a valid nonce confirms.

	Returns the page context: ``mh_view`` is one of confirm, confirmed, already, expired, invalid,
	superseded, or error. Any failure is rolled back and shown as a plain page, never a traceback.
	"""
	try:
		if method == "POST":
			return confirm_by_form(form.get("token"), form.get("nonce"))
		return page_for_token(form.get("token"))
	except Exception:
		frappe.db.rollback()
		frappe.clear_messages()
		frappe.log_error(title="MachHelpdesk: the confirmation page failed")
		frappe.db.commit()  # keep the error log: everything else was rolled back above
		return {"mh_view": "error", "http_status_code": 500}


def page_for_token(token) -> dict:
	challenge = find_challenge(token)
	closed = closed_page(challenge)
	if closed:
		return closed
	return confirm_form(challenge, token)


def confirm_by_form(token, nonce) -> dict:
	challenge = find_challenge(token)
	closed = closed_page(challenge)
	if closed:
		return closed
	if not form_nonce_valid(nonce or "", get_encryption_key(), challenge.token_hash, time.time()):
		page = confirm_form(challenge, token)
		page.update(
			note=_(
				"Please press Confirm once more: the page had been open too long, or was not opened first."
			),
			http_status_code=400,
		)
		return page
	# Lock the challenge: two presses of the button (or two tabs) confirm once.
	challenge = find_challenge(token, for_update=True)
	closed = closed_page(challenge)
	if closed:
		return closed
	tickets = confirm_sender(challenge.email, "link")
	frappe.db.commit()  # the sender's account and tickets are durable before the page says so
	return {"mh_view": "confirmed", "address": challenge.email, "tickets": tickets}


def find_challenge(token, for_update: bool = False):
	"""The challenge a token belongs to, or None for a malformed, tampered or unknown token."""
	if not looks_like_token(token):
		return None
	challenge = frappe.db.get_value(
		"MH Sender Challenge",
		{"token_hash": hash_token(token)},
		["name", "email", "status", "expires_on", "token_hash"],
		as_dict=True,
		for_update=for_update,
	)
	if not challenge or not token_matches(token, challenge.token_hash):
		return None
	return challenge


def closed_page(challenge) -> dict | None:
	"""The page for a link that can no longer confirm, or None while it still can."""
	if challenge is None:
		return {"mh_view": "invalid", "http_status_code": 404}
	if challenge.status == CONFIRMED:
		return {"mh_view": "already", "address": challenge.email}
	if challenge.status == SUPERSEDED:
		return {"mh_view": "superseded", "http_status_code": 410}
	if challenge.status == CHALLENGE_EXPIRED or get_datetime(challenge.expires_on) <= now_datetime():
		return {"mh_view": "expired", "http_status_code": 410}
	return None


def confirm_form(challenge, token: str) -> dict:
	held = frappe.get_all(
		"MH Inbound Mail",
		filters={"state": HELD, "from_email": challenge.email},
		fields=["subject", "received_at"],
		order_by="received_at asc",
		limit=HELD_SUBJECTS_SHOWN,
	)
	session = getattr(frappe.local, "session", None)
	csrf_token = session.data.csrf_token if session and session.user != "Guest" and session.data else None
	return {
		"mh_view": "confirm",
		"address": challenge.email,
		"held": [
			{"subject": row.subject or _("(no subject)"), "received": format_datetime(row.received_at)}
			for row in held
		],
		"more_held": max(
			0, frappe.db.count("MH Inbound Mail", {"state": HELD, "from_email": challenge.email}) - len(held)
		),
		"token": token,
		"nonce": make_form_nonce(get_encryption_key(), challenge.token_hash, time.time()),
		"csrf_token": csrf_token,
	}


# --- desk actions -----------------------------------------------------------------------------------------


def check_desk_role() -> None:
	"""Held mail is for agents and managers only (frappe.only_for lets everyone through in tests)."""
	if frappe.session.user != "Administrator" and set(DESK_ROLES).isdisjoint(frappe.get_roles()):
		raise frappe.PermissionError(_("Only agents and managers can act on held mail."))
	frappe.has_permission("MH Inbound Mail", "read", throw=True)


def held_rows(names) -> tuple[list[frappe._dict], int]:
	"""The selected messages that are still held, oldest first, and how many were selected."""
	names = frappe.parse_json(names) if isinstance(names, str) else names
	if not names or not isinstance(names, list) or not all(isinstance(name, str) for name in names):
		frappe.throw(_("Select the held messages first."))
	rows = frappe.get_all(
		"MH Inbound Mail",
		filters={"name": ("in", names), "state": HELD},
		fields=["name", "from_email", "from_name"],
		order_by="received_at asc, creation asc",
	)
	return rows, len(names)


@frappe.whitelist(methods=["POST"])
def release_held_mail(names: str | list[str]) -> dict:
	"""Desk action Release: make each selected held message a ticket now. The sender is not confirmed."""
	check_desk_role()
	rows, asked = held_rows(names)
	reason = _("released by {0}").format(frappe.session.user)
	tickets = [t for t in (release_one(row.name, reason, create_contact=False) for row in rows) if t]
	message = _("Released {0} of {1} selected messages.").format(len(tickets), asked)
	if len(tickets) < asked:
		message += " " + _("The others were not held any more, or could not be released (see their reason).")
	return {"tickets": tickets, "message": message}


@frappe.whitelist(methods=["POST"])
def always_allow_senders(names: str | list[str]) -> dict:
	"""Desk action Always allow sender: confirm the senders of the selected messages without the link."""
	check_desk_role()
	rows, _asked = held_rows(names)
	tickets: list[str] = []
	senders = {}
	for row in rows:
		senders.setdefault(normalize_address(row.from_email), row.from_name or "")
	for address, display_name in senders.items():
		tickets += confirm_sender(address, frappe.session.user, display_name)
	return {
		"tickets": tickets,
		"senders": list(senders),
		"message": _("Allowed {0} senders; {1} held messages are now tickets.").format(
			len(senders), len(tickets)
		),
	}


@frappe.whitelist(methods=["POST"])
def block_senders(names: str | list[str]) -> dict:
	"""Desk action Block sender: add an address blocking filter and drop the sender's held mail."""
	check_desk_role()
	rows, _asked = held_rows(names)
	user = frappe.session.user
	blocked = 0
	filters = []
	for address in dict.fromkeys(normalize_address(row.from_email) for row in rows):
		blocking_filter = ensure_address_filter(address, user)
		filters.append(blocking_filter)
		blocked += drop_held_mail(
			address, _("sender blocked by {0} (filter {1})").format(user, blocking_filter)
		)
		end_challenges(address, SUPERSEDED, _("the sender was blocked by {0}").format(user))
	return {
		"filters": filters,
		"message": _("Blocked {0} senders and dropped {1} held messages.").format(len(filters), blocked),
	}


def ensure_address_filter(address: str, user: str) -> str:
	"""An enabled Address filter for this sender (an existing one is reused)."""
	existing = frappe.db.get_value(
		"MH Blocking Filter", {"filter_type": "Address", "value": address, "enabled": 1}, "name"
	)
	if existing:
		return existing
	doc = frappe.get_doc(
		{
			"doctype": "MH Blocking Filter",
			"enabled": 1,
			"filter_type": "Address",
			"value": address,
			"description": _("Blocked from the held mail by {0}").format(user),
		}
	)
	# Agents may block a sender from the held mail, though only managers edit filters in the desk.
	doc.insert(ignore_permissions=True)
	return doc.name


def drop_held_mail(address: str, reason: str) -> int:
	"""The address's held mail becomes Blocked (its raw copy goes with the retention period)."""
	names = frappe.get_all("MH Inbound Mail", filters={"state": HELD, "from_email": address}, pluck="name")
	if names:
		inbound = frappe.qb.DocType("MH Inbound Mail")
		(
			frappe.qb.update(inbound)
			.set(inbound.state, BLOCKED)
			.set(inbound.reason, reason[:1000])
			.set(inbound.modified, now_datetime())
			.where(inbound.name.isin(names))
		).run()
	return len(names)


# --- scheduled jobs -----------------------------------------------------------------------------------


def expire_held_mail() -> int:
	"""Daily: held mail older than the kill period expires, its raw copy is deleted and its challenge
	invalidated. Returns how many messages expired. A kill period of 0 keeps held mail."""
	now = now_datetime()
	expire_lapsed_challenges(now)
	days = cint(frappe.db.get_single_value("MH Settings", "kill_unconfirmed_after_days"))
	if days <= 0:
		frappe.db.commit()  # scheduled job: the lapsed challenges
		return 0
	cutoff = add_days(now, -days)
	rows = frappe.get_all(
		"MH Inbound Mail",
		filters={"state": HELD, "held_on": ("<", cutoff)},
		fields=["name", "raw_path", "from_email"],
		limit=5000,
	)
	# Held before held_on existed: the row's creation is when it was held.
	rows += frappe.get_all(
		"MH Inbound Mail",
		filters={"state": HELD, "held_on": ("is", "not set"), "creation": ("<", cutoff)},
		fields=["name", "raw_path", "from_email"],
		limit=5000,
	)
	if not rows:
		frappe.db.commit()  # scheduled job: the lapsed challenges
		return 0
	inbound = frappe.qb.DocType("MH Inbound Mail")
	(
		frappe.qb.update(inbound)
		.set(inbound.state, EXPIRED)
		.set(inbound.reason, _("expired: the sender did not confirm within {0} days").format(days))
		.set(inbound.raw_path, "")
		.set(inbound.modified, now)
		.where(inbound.name.isin([row.name for row in rows]))
	).run()
	for address in {normalize_address(row.from_email) for row in rows}:
		if not frappe.db.exists("MH Inbound Mail", {"state": HELD, "from_email": address}):
			end_challenges(address, CHALLENGE_EXPIRED, _("its held mail expired"))
	frappe.db.commit()  # scheduled job: the rows are expired before their raw copies are deleted
	for raw_path in {row.raw_path for row in rows if row.raw_path}:
		delete_raw_copy(raw_path)
	return len(rows)


def delete_raw_copy(raw_path: str) -> None:
	"""Delete a raw copy unless a row that still needs it (held, failed, in progress) points at it."""
	if frappe.db.exists(
		"MH Inbound Mail", {"raw_path": raw_path, "state": ("in", (HELD, FAILED, PROCESSING))}
	):
		return
	path = os.path.realpath(os.path.join(raw_root(), raw_path))
	if path.startswith(os.path.realpath(raw_root()) + os.sep) and os.path.exists(path):
		os.remove(path)


def scrub_sent_challenge_mail() -> int:
	"""Hourly: empty the Email Queue copies of challenge mail that was sent (or given up on), so the
	database holds no token, only its hash. Returns how many were emptied."""
	queue = frappe.qb.DocType("Email Queue")
	condition = (
		(queue.reference_doctype == "MH Sender Challenge")
		& queue.status.isin(("Sent", "Error"))
		& (queue.message != SCRUBBED_MESSAGE)
	)
	names = frappe.qb.from_(queue).select(queue.name).where(condition).run(pluck=True)
	if names:
		frappe.qb.update(queue).set(queue.message, SCRUBBED_MESSAGE).where(queue.name.isin(names)).run()
	frappe.db.commit()  # scheduled job
	return len(names)


def release_mail_of_confirmed_senders() -> int:
	"""Hourly: held mail whose sender has become known since (confirmed in a race with a pull, or given an
	account by an admin) becomes tickets. Returns how many."""
	addresses = frappe.get_all(
		"MH Inbound Mail", filters={"state": HELD}, pluck="from_email", distinct=True, limit=1000
	)
	released = 0
	for address in {normalize_address(a) for a in addresses if a}:
		if is_known_sender(address):
			released += len(release_mail_from(address, _("the sender is known now")))
			frappe.db.commit()  # scheduled job: one sender's tickets at a time
	return released
