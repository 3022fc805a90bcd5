"""Machine-sent mail: auto-replies, bounces, bulk and list mail (RFC 3834, RFC 3464, RFC 2369/2919).

The helpdesk must never answer a machine: an acknowledgement sent to an out-of-office reply is answered
again, and a bounce that opens a ticket acknowledges a mailbox that does not exist. `classify_automation`
says what kind of sender wrote a message and why; `Automation` says what the helpdesk may do with it.
`bounced_message_ids` finds the mail a bounce is about, so that the bounce lands on that mail's ticket.
"""

import re
from dataclasses import dataclass

from machhelpdesk.engine.message import ParsedMessage, normalize_message_id

__all__ = ["KINDS", "Automation", "bounced_message_ids", "classify_automation"]

KINDS = ("none", "auto-reply", "bounce", "list", "bulk")


@dataclass(frozen=True)
class Automation:
	"""What kind of sender wrote a message ("none", "auto-reply", "bounce", "list", "bulk") and the header
	or structure that showed it (`reason`, e.g. "Auto-Submitted: auto-replied")."""

	kind: str
	reason: str

	@property
	def is_automated(self) -> bool:
		"""True unless a person wrote the message."""
		return self.kind != "none"

	@property
	def may_auto_reply(self) -> bool:
		"""True only for mail a person wrote: nothing automatic (acknowledgement, challenge) is ever sent
		to an auto-reply, a bounce, bulk mail or a mailing list."""
		return self.kind == "none"

	@property
	def may_open_ticket(self) -> bool:
		"""True for personal and list mail (a list post may be a real request); False for auto-replies,
		bounces and bulk mail, which attach to an existing ticket or are dropped."""
		return self.kind in ("none", "list")


NOT_AUTOMATED = Automation("none", "")

# Local parts of the addresses MTAs send non-delivery reports from.
_BOUNCE_LOCAL_PARTS = frozenset(
	{"mailer-daemon", "mailer_daemon", "mailerdaemon", "postmaster", "post_master", "mdaemon"}
)
# Display names MTAs give their reports ("Mail Delivery Subsystem <MAILER-DAEMON@...>").
_BOUNCE_DISPLAY_NAMES = frozenset({"mail delivery subsystem", "mail delivery system"})
# Subjects of non-delivery reports; trusted only together with another sign of automatic mail, since
# "Delivery failure" is also what a shop's customer may write.
_BOUNCE_SUBJECT = re.compile(
	r"^\s*(undeliverable|undelivered mail|delivery status notification|delivery (?:failure|has failed)"
	r"|delivery notification|mail delivery failed|returned mail|failure notice|non-?delivery"
	r"|delivery report|mail could not be delivered|warning: .{0,200}user unknown)",
	re.IGNORECASE,
)
_REPORT_PART_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
# Exchange's X-Auto-Response-Suppress values that mark an automatic message.
_SUPPRESS_VALUES = frozenset({"all", "oof", "autoreply", "dr", "rn", "nrn"})
_COMMENT = re.compile(r"\([^()]*\)")
_REPORT_TYPE = re.compile(r"""report-type\s*=\s*"?([A-Za-z0-9_.-]+)""", re.IGNORECASE)
# Subject openers that only auto-responders write (Outlook, Exchange, Gmail, Thunderbird in a few languages).
_AUTO_REPLY_SUBJECT = re.compile(
	r"^\s*(automatic reply|auto(?:matic)?[- ]?reply|autoreply|auto-response|out of (?:the )?office"
	r"|abwesenheitsnotiz|automatische antwort|r[ée]ponse automatique|respuesta autom[áa]tica"
	r"|risposta automatica|automatisch antwoord)\s*:",
	re.IGNORECASE,
)


def _first_token(value: str) -> str:
	"""Return the first word of a header value with comments removed, lower-case ("No (x)" -> "no")."""
	value = value[:256]  # the keyword comes first; the bound keeps nested-comment removal cheap
	while True:
		stripped = _COMMENT.sub(" ", value)
		if stripped == value:
			break
		value = stripped
	parts = value.replace(";", " ").split()
	return parts[0].lower() if parts else ""


def _local_part(address: str) -> str:
	"""Return the lower-case local part of an address ("MAILER-DAEMON@x" -> "mailer-daemon")."""
	return address.strip().strip("<>").rpartition("@")[0].lower() or address.strip().strip("<>").lower()


def _bounce_reason(msg: ParsedMessage) -> str | None:
	"""Return why `msg` is a non-delivery report, or None. Structure first (RFC 3464), then senders."""
	if msg.content_type == "multipart/report":
		match = _REPORT_TYPE.search(msg.first_header("Content-Type"))
		report_type = match.group(1).lower() if match else "unknown"
		return f"multipart/report; report-type={report_type}"
	for part_type in msg.part_content_types:
		if part_type in _REPORT_PART_TYPES:
			return f"Content-Type: {part_type}"
	failed = msg.first_header("X-Failed-Recipients").strip()
	if failed:
		return f"X-Failed-Recipients: {failed[:100]}"
	if msg.sender is not None and _local_part(msg.sender.email) in _BOUNCE_LOCAL_PARTS:
		return f"From: {msg.sender.email}"
	if msg.sender is not None and msg.sender.name.strip().lower() in _BOUNCE_DISPLAY_NAMES:
		return f"From: {msg.sender.name}"
	if msg.sender is None:
		from_value = msg.first_header("From").strip()
		if from_value.replace(" ", "").endswith("<>"):
			return f"From: {from_value[:100]}"
		token = from_value.split()[0].strip("<>\"'").lower() if from_value.split() else ""
		if token and _local_part(token) in _BOUNCE_LOCAL_PARTS:
			return f"From: {from_value[:100]}"
	return_paths = msg.header("Return-Path")
	if return_paths and _local_part(return_paths[0]) in _BOUNCE_LOCAL_PARTS:
		return f"Return-Path: {return_paths[0].strip()[:100]}"
	return None


def _null_return_path(msg: ParsedMessage) -> bool:
	"""Tell whether the envelope sender was null (Return-Path: <>), as for bounces and many auto-replies."""
	return_paths = msg.header("Return-Path")
	return bool(return_paths) and return_paths[0].strip().replace(" ", "") in ("<>", "")


def _auto_reply_reason(msg: ParsedMessage) -> str | None:
	"""Return why `msg` is an automatic reply (RFC 3834 and the vendor headers), or None."""
	for value in msg.header("Auto-Submitted"):
		keyword = _first_token(value)
		if keyword and keyword != "no":
			return f"Auto-Submitted: {value.strip()[:100]}"
	for name in ("X-Autoreply", "X-Autorespond", "X-Autogenerated", "X-AutoReply-From", "X-Mail-Autoreply"):
		value = msg.first_header(name).strip()
		if value and _first_token(value) not in ("no", "false", "0"):
			return f"{name}: {value[:100]}"
	for value in msg.header("X-Auto-Response-Suppress"):
		tokens = {token.strip().lower() for token in re.split(r"[,;\s]+", value) if token.strip()}
		if tokens & _SUPPRESS_VALUES:
			return f"X-Auto-Response-Suppress: {value.strip()[:100]}"
	for name in ("Precedence", "X-Precedence"):
		if _first_token(msg.first_header(name)) in ("auto_reply", "auto-reply", "autoreply"):
			return f"{name}: {msg.first_header(name).strip()[:100]}"
	match = _AUTO_REPLY_SUBJECT.match(msg.subject)
	if match:
		return f"Subject: {match.group(0).strip()}"
	return None


def _bulk_reason(msg: ParsedMessage) -> str | None:
	"""Return why `msg` is bulk mail (Precedence: bulk or junk), or None."""
	for name in ("Precedence", "X-Precedence"):
		value = msg.first_header(name)
		if _first_token(value) in ("bulk", "junk"):
			return f"{name}: {value.strip()[:100]}"
	return None


def _list_reason(msg: ParsedMessage) -> str | None:
	"""Return why `msg` came through a mailing list (List-Id, List-Unsubscribe, Precedence: list), or None."""
	for name in ("List-Id", "List-Unsubscribe"):
		value = msg.first_header(name).strip()
		if value:
			return f"{name}: {value[:100]}"
	for name in ("Precedence", "X-Precedence"):
		value = msg.first_header(name)
		if _first_token(value) == "list":
			return f"{name}: {value.strip()[:100]}"
	return None


def classify_automation(msg: ParsedMessage) -> Automation:
	"""Say whether `msg` was written by a person or sent automatically, and what showed it.

	Precedence: bounce > auto-reply > bulk > list > none. A bounce is a delivery report (multipart/report,
	a message/delivery-status part), X-Failed-Recipients, or mail from MAILER-DAEMON/postmaster (or a
	null From). A non-delivery subject counts only together with an auto-reply/bulk header or a null
	Return-Path. A null Return-Path alone counts as a bounce only when nothing marks the message as an
	auto-reply, since RFC 3834 responders also send with a null envelope sender and an out-of-office reply
	is no bounce. `Auto-Submitted: no` (with or without comments) is a person's mail.
	"""
	reason = _bounce_reason(msg)
	if reason:
		return Automation("bounce", reason)
	auto_reply = _auto_reply_reason(msg)
	bulk = _bulk_reason(msg)
	null_return_path = _null_return_path(msg)
	if auto_reply or bulk or null_return_path:
		match = _BOUNCE_SUBJECT.match(msg.subject)
		if match:
			weak = auto_reply or bulk or "Return-Path: <>"
			return Automation("bounce", f"Subject: {match.group(0).strip()[:60]} ({weak})")
	if auto_reply:
		return Automation("auto-reply", auto_reply)
	if null_return_path:
		return Automation("bounce", "Return-Path: <>")
	if bulk:
		return Automation("bulk", bulk)
	reason = _list_reason(msg)
	if reason:
		return Automation("list", reason)
	return NOT_AUTOMATED


# "Message-ID: <...>" as quoted in the text of bounces that include the original headers inline.
_QUOTED_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID\s*:\s*(<[^<>\s]{3,900}>)", re.IGNORECASE | re.MULTILINE)
_SCANNED_TEXT = 200_000


def bounced_message_ids(msg: ParsedMessage) -> list[str]:
	"""Return the Message-IDs a bounce refers to, best first, without repeats and without its own id.

	In order: ids of enclosed message/rfc822 and text/rfc822-headers parts, "Message-ID:" lines quoted in
	the body text (bounces that paste the original headers), then In-Reply-To and References. Meant for
	messages classified as bounces; on other mail it returns what those mails refer to.
	"""
	found: list[str] = []

	def add(value: str) -> None:
		message_id = normalize_message_id(value)
		if message_id and message_id != msg.message_id and message_id not in found:
			found.append(message_id)

	for value in msg.enclosed_message_ids:
		add(value)
	for match in _QUOTED_MESSAGE_ID.finditer(msg.text[:_SCANNED_TEXT]):
		add(match.group(1))
	for value in msg.in_reply_to:
		add(value)
	for value in reversed(msg.references):
		add(value)
	return found
