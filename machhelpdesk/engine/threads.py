"""Ticket numbers in subjects and Message-ID threading: which ticket does an incoming mail belong to?

Ticket names look like "MP-000123" or, with a postfix, "MP-000123-EU". Outgoing mail carries the name
as "[#MP-000123]" in the subject. A reply is matched to its ticket by Message-ID first (In-Reply-To and
References point at mail we sent or received), and only then by the number in the subject, and the
subject counts only when the sender is allowed to reply on that ticket: anyone can type a ticket number.
"""

import re
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from machhelpdesk.engine.message import ParsedMessage, normalize_message_id

__all__ = [
	"ThreadCandidate",
	"choose_thread",
	"find_ticket_numbers",
	"normalize_message_id",
	"strip_reply_prefixes",
	"tag_subject",
	"thread_message_ids",
	"ticket_number_regex",
]

# Digits of the running number: at least 6 (the naming series pads to 6), at most 12.
_NUMBER = r"(?P<number>[0-9]{6,12})"
# Before a name: start, whitespace or punctuation, but not a letter, digit, "_" or "-" (so "XMP-000123"
# and "AB-MP-000123" are not "MP-000123"). After it: no further word character, "-word" included, so an
# unknown postfix ("MP-000123-US" when only EU is configured) does not match the bare name either.
_BEFORE = r"(?<![\w-])"
_AFTER = r"(?!-?\w)"
_NEVER = re.compile(r"(?!x)x")


def _clean_affixes(values: Iterable[str]) -> list[str]:
	"""Return the non-empty prefixes/postfixes without surrounding space or dashes, longest first."""
	cleaned = {value.strip().strip("-").strip() for value in values if value and value.strip().strip("-")}
	return sorted(cleaned, key=lambda value: (-len(value), value))


def ticket_number_regex(prefixes: Iterable[str], postfixes: Iterable[str] = ()) -> re.Pattern[str]:
	"""Return a case-insensitive pattern for ticket names with one of `prefixes` (and optional `postfixes`).

	It matches "[#MP-000123]", "#MP-000123" and a bare "MP-000123" on a word boundary, with an optional
	"-POSTFIX". Groups: "prefix", "number" and, when postfixes are given, "postfix" (None when absent). Prefixes and postfixes are
	escaped, so they may contain regex metacharacters. With no prefixes, the pattern matches nothing.
	"""
	prefix_list = _clean_affixes(prefixes)
	if not prefix_list:
		return _NEVER
	prefix_group = "|".join(re.escape(prefix) for prefix in prefix_list)
	postfix_list = _clean_affixes(postfixes)
	postfix_group = ""
	if postfix_list:
		postfix_group = "(?:-(?P<postfix>" + "|".join(re.escape(postfix) for postfix in postfix_list) + "))?"
	pattern = rf"{_BEFORE}#?(?P<prefix>{prefix_group})-{_NUMBER}{postfix_group}{_AFTER}"
	return re.compile(pattern, re.IGNORECASE)


def _canonical_spelling(found: str, spellings: list[str]) -> str:
	"""Return the configured spelling of a prefix/postfix matched case-insensitively."""
	folded = found.casefold()
	for spelling in spellings:
		if spelling.casefold() == folded:
			return spelling
	return found


def find_ticket_numbers(subject: str, prefixes: Iterable[str], postfixes: Iterable[str] = ()) -> list[str]:
	"""Return the ticket names in `subject`, in order of appearance, without repeats.

	Names are canonical: "PREFIX-NNNNNN[-POSTFIX]" with the prefix and postfix spelled as passed in,
	whatever case the subject used.
	"""
	prefix_list = _clean_affixes(prefixes)
	postfix_list = _clean_affixes(postfixes)
	pattern = ticket_number_regex(prefix_list, postfix_list)
	names: list[str] = []
	for match in pattern.finditer(subject or ""):
		name = f"{_canonical_spelling(match.group('prefix'), prefix_list)}-{match.group('number')}"
		postfix = match.groupdict().get("postfix")
		if postfix:
			name += f"-{_canonical_spelling(postfix, postfix_list)}"
		if name not in names:
			names.append(name)
	return names


def _name_pattern(ticket_name: str) -> re.Pattern[str]:
	"""Return a pattern for one exact ticket name, "#" optional, on the same boundaries as above."""
	return re.compile(rf"{_BEFORE}#?{re.escape(ticket_name.strip())}{_AFTER}", re.IGNORECASE)


_REPLY_WORDS = (
	"re",
	"aw",  # German "Antwort"
	"antw",  # Dutch
	"sv",  # Scandinavian "svar"
	"vs",  # Finnish "vastaus"
	"ref",
	"réf",
	"rif",  # Italian "riferimento"
	"odp",  # Polish "odpowiedź"
	"ynt",  # Turkish "yanit"
	"res",  # Portuguese "resposta"
	"fwd",
	"fw",
	"wg",  # German "weitergeleitet"
	"tr",  # French "transféré"
	"enc",  # Portuguese "encaminhado"
	"doorst",  # Dutch "doorsturen"
	"回复",
	"答复",
	"转发",
)
# One "Re:", "RE :", "Re[2]:", "Re(3):" or "AW" with a full-width colon (U+FF1A); use with .match().
_REPLY_PREFIX = re.compile(
	r"\s*(?:"
	+ "|".join(re.escape(word) for word in _REPLY_WORDS)
	+ r")\s*(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]\s*",
	re.IGNORECASE,
)
_TICKET_TAG = re.compile(r"\[#[^\[\]]{1,64}\]")


def tag_subject(subject: str, ticket_name: str) -> str:
	"""Return `subject` carrying "[#TICKET]", e.g. "Re: [#MP-000123] printer broken".

	The tag goes after any leading reply prefixes. A subject that already carries this ticket's number
	(tagged or bare, any case) is returned unchanged, so the function is idempotent.
	"""
	subject = subject or ""
	name = ticket_name.strip()
	if not name or _name_pattern(name).search(subject):
		return subject
	position = 0
	while True:
		match = _REPLY_PREFIX.match(subject, position)
		if match is None or match.end() == position:
			break
		position = match.end()
	head, rest = subject[:position], subject[position:].strip()
	tag = f"[#{name}]"
	return f"{head}{tag} {rest}" if rest else f"{head}{tag}"


def _drop_ticket_tags(text: str) -> str:
	"""Replace each "[#...]" tag (_TICKET_TAG) with a space, and again each tag that this makes
	("[#[#a]]" -> "[# ]" -> " "), in one linear pass: what repeated _TICKET_TAG.sub would give."""
	out: list[str] = []
	frames: list[list[int]] = []  # open "[#": [its index in out, characters inside it so far]
	position = 0
	while position < len(text):
		char = text[position]
		position += 1
		if char == "[" and text.startswith("#", position):
			frames.append([len(out), 0])
			out.append("[#")
			position += 1
			continue
		if char == "]" and frames:
			start, inside = frames.pop()
			if 1 <= inside <= 64:
				del out[start:]
				char = " "
			else:
				frames.clear()  # every open "[#" now holds a bracket and can no longer be a tag
		elif char == "[":
			frames.clear()
		if frames:
			frames[-1][1] += 1
		out.append(char)
	return "".join(out)


def strip_reply_prefixes(subject: str) -> str:
	"""Return `subject` without leading reply/forward prefixes (repeated, any language listed above) and
	without "[#...]" ticket tags anywhere, whitespace collapsed. For display and subject matching."""
	text = _drop_ticket_tags(subject or "")
	while True:
		match = _REPLY_PREFIX.match(text)
		if match is None or not match.group(0):
			break
		text = text[match.end() :]
	return " ".join(text.split())


def thread_message_ids(msg: ParsedMessage) -> list[str]:
	"""Return the Message-IDs this message replies to, most specific first, without repeats.

	In-Reply-To comes first, then References newest-first (the last reference is the direct parent).
	"""
	ordered: list[str] = []
	for value in [*msg.in_reply_to, *reversed(msg.references)]:
		message_id = normalize_message_id(value)
		if message_id and message_id not in ordered:
			ordered.append(message_id)
	return ordered


@dataclass
class ThreadCandidate:
	"""The ticket an incoming message belongs to, and how that was found: "message-id" or "subject"."""

	ticket: str
	via: str


def choose_thread(
	msg: ParsedMessage,
	*,
	by_message_id: Mapping[str, str],
	subject_tickets: Mapping[str, Set[str]],
	prefixes: Iterable[str],
	postfixes: Iterable[str] = (),
) -> ThreadCandidate | None:
	"""Return the ticket `msg` continues, or None when it should open a new ticket.

	`by_message_id` maps Message-IDs we sent or received to ticket names (the caller looks up
	thread_message_ids(msg)). `subject_tickets` maps ticket names found in the subject to the lower-case
	addresses allowed to reply by subject (requester and CCs). A Message-ID match wins; a subject number
	counts only when the sender is in that ticket's allowed set, so a stranger quoting a ticket number
	cannot write into someone else's ticket.
	"""
	for message_id in thread_message_ids(msg):
		ticket = by_message_id.get(message_id)
		if ticket:
			return ThreadCandidate(ticket=ticket, via="message-id")
	if msg.sender is None or not msg.sender.email:
		return None
	sender = msg.sender.email.strip().lower()
	allowed_by_ticket = {name.casefold(): allowed for name, allowed in subject_tickets.items()}
	for name in find_ticket_numbers(msg.subject, prefixes, postfixes):
		allowed = allowed_by_ticket.get(name.casefold())
		if allowed and sender in {address.strip().lower() for address in allowed}:
			return ThreadCandidate(ticket=name, via="subject")
	return None
