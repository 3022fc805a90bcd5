"""Behaviour of engine/threads.py: ticket numbers in subjects and choosing the thread of a reply."""

import pytest

from machhelpdesk.engine.message import Address, ParsedMessage, parse_message
from machhelpdesk.engine.threads import (
	ThreadCandidate,
	choose_thread,
	find_ticket_numbers,
	strip_reply_prefixes,
	tag_subject,
	thread_message_ids,
	ticket_number_regex,
)

PREFIXES = ["MP", "OLD"]
POSTFIXES = ["EU", "US"]


def test_regex_matches_tagged_hash_and_bare_forms() -> None:
	pattern = ticket_number_regex(["MP"])
	for subject in ("Re: [#MP-000123] printer", "about #MP-000123", "MP-000123: printer", "(MP-000123)"):
		match = pattern.search(subject)
		assert match is not None, subject
		assert (match.group("prefix"), match.group("number")) == ("MP", "000123")


@pytest.mark.parametrize(
	"subject",
	["XMP-000123", "MP-00012", "MP-000123X", "AB-MP-000123", "MP_000123", "MP-000123-US"],
)
def test_regex_rejects_near_misses(subject: str) -> None:
	assert ticket_number_regex(["MP"], ["EU"]).search(subject) is None


def test_regex_with_several_prefixes_and_postfixes() -> None:
	pattern = ticket_number_regex(PREFIXES, POSTFIXES)
	match = pattern.search("[#old-004567-eu] moved")
	assert match is not None
	assert (match.group("prefix"), match.group("number"), match.group("postfix")) == ("old", "004567", "eu")


def test_regex_escapes_metacharacters_and_never_matches_without_prefixes() -> None:
	assert ticket_number_regex(["H.D"]).search("HxD-000001") is None
	assert ticket_number_regex(["H.D"]).search("H.D-000001") is not None
	assert ticket_number_regex([]).search("MP-000123") is None


def test_find_ticket_numbers_canonical_in_order_without_repeats() -> None:
	subject = "Fwd: [#mp-000123] and OLD-000009-us, again #MP-000123"
	assert find_ticket_numbers(subject, PREFIXES, POSTFIXES) == ["MP-000123", "OLD-000009-US"]


def test_old_prefix_is_still_recognised() -> None:
	assert find_ticket_numbers("Re: [#HD-000042] old ticket", ["MP", "HD"]) == ["HD-000042"]


def test_tag_subject_adds_the_tag_after_reply_prefixes() -> None:
	assert tag_subject("Re: AW: printer", "MP-000123") == "Re: AW: [#MP-000123] printer"
	assert tag_subject("printer", "MP-000123") == "[#MP-000123] printer"
	assert tag_subject("", "MP-000123") == "[#MP-000123]"


def test_tag_subject_is_idempotent() -> None:
	once = tag_subject("Re: printer", "MP-000123-EU")
	assert tag_subject(once, "MP-000123-EU") == once
	assert tag_subject("Re: about mp-000123-eu", "MP-000123-EU") == "Re: about mp-000123-eu"


def test_tag_subject_adds_a_different_ticket() -> None:
	assert tag_subject("[#MP-000001] old", "MP-000002") == "[#MP-000002] [#MP-000001] old"


@pytest.mark.parametrize(
	("subject", "expected"),
	[
		("Re: RE: Fwd: printer", "printer"),
		("AW: WG: SV: Antw: printer", "printer"),
		("Re[2]: FW : printer", "printer"),
		("Re: [#MP-000123] printer  broken", "printer broken"),
		("[#MP-000123] Re: printer", "printer"),
		("Regarding the printer", "Regarding the printer"),
		("", ""),
	],
)
def test_strip_reply_prefixes(subject: str, expected: str) -> None:
	assert strip_reply_prefixes(subject) == expected


def reply(subject: str, sender: str, in_reply_to: str = "", references: str = "") -> ParsedMessage:
	"""Parse a reply with the given threading headers."""
	headers = f"From: {sender}\nSubject: {subject}\n"
	if in_reply_to:
		headers += f"In-Reply-To: {in_reply_to}\n"
	if references:
		headers += f"References: {references}\n"
	return parse_message((headers + "\nbody\n").encode())


def test_thread_message_ids_in_reply_to_first_then_newest_reference() -> None:
	msg = reply("x", "a@x", in_reply_to="<c@x>", references="<a@x> <b@x> <c@x>")
	assert thread_message_ids(msg) == ["<c@x>", "<b@x>", "<a@x>"]


def test_message_id_match_wins_over_subject() -> None:
	msg = reply("Re: [#MP-000002] x", "anna@customer.example", in_reply_to="<ack-1@helpdesk.example>")
	candidate = choose_thread(
		msg,
		by_message_id={"<ack-1@helpdesk.example>": "MP-000001"},
		subject_tickets={"MP-000002": {"anna@customer.example"}},
		prefixes=["MP"],
	)
	assert candidate == ThreadCandidate(ticket="MP-000001", via="message-id")


def test_subject_match_counts_for_an_allowed_sender() -> None:
	msg = reply("Re: [#MP-000002] x", "Anna@Customer.Example")
	candidate = choose_thread(
		msg, by_message_id={}, subject_tickets={"MP-000002": {"anna@customer.example"}}, prefixes=["MP"]
	)
	assert candidate == ThreadCandidate(ticket="MP-000002", via="subject")


def test_strangers_subject_match_does_not_thread() -> None:
	msg = reply("Re: [#MP-000002] give me access", "mallory@attacker.example")
	candidate = choose_thread(
		msg, by_message_id={}, subject_tickets={"MP-000002": {"anna@customer.example"}}, prefixes=["MP"]
	)
	assert candidate is None


def test_unknown_message_ids_and_no_number_open_a_new_ticket() -> None:
	msg = reply("printer", "anna@customer.example", in_reply_to="<unknown@x>")
	assert choose_thread(msg, by_message_id={}, subject_tickets={}, prefixes=["MP"]) is None


def test_subject_match_needs_a_sender() -> None:
	msg = ParsedMessage(subject="[#MP-000002] x", sender=None)
	assert choose_thread(msg, by_message_id={}, subject_tickets={"MP-000002": {""}}, prefixes=["MP"]) is None


def test_subject_match_with_postfix_and_old_prefix() -> None:
	msg = ParsedMessage(subject="Re: [#HD-000007-EU]", sender=Address("", "anna@customer.example"))
	candidate = choose_thread(
		msg,
		by_message_id={},
		subject_tickets={"HD-000007-EU": {"anna@customer.example"}},
		prefixes=["MP", "HD"],
		postfixes=["EU"],
	)
	assert candidate == ThreadCandidate(ticket="HD-000007-EU", via="subject")
