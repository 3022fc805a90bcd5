"""Property tests of the framework-free engine (message, threads, loops, rules), seeded with the corpus.

Mutated corpus messages (bit flips, truncation, header duplication, boundary damage, charset and encoding
swaps, NUL and invalid UTF-8 injection: the mutators of ``benchmarks/fuzz.py``) go through the whole
engine, and every result is checked against the engine's promises (``benchmarks.fuzz.check_engine``):
parse_message returns a ParsedMessage or raises MessageParseError for input that is not a message, and
nothing else; outputs hold no NUL or undecoded bytes; the safe HTML has nothing active; file names are
safe. The threading, loop and rule functions get random input of their own.

Run longer with ``MH_FUZZ_PROFILE=mh-fuzz-long`` (ten times the examples). The default profile keeps this
file under a minute on two cores. Each example runs under a generous hang guard, never a timing assertion.
The messages in ``fixtures/fuzz-*.eml`` are findings of ``benchmarks/fuzz.py``, each with a test below.
"""

import os
import re
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz import (
	HEADER_NAMES,
	INJECTIONS,
	MUTATORS,
	check_engine,
	hang_guard,
	load_seeds,
	mutate,
)
from machhelpdesk.engine.loops import KINDS, bounced_message_ids, classify_automation
from machhelpdesk.engine.message import Address, ParsedMessage, parse_message
from machhelpdesk.engine.rules import (
	ACTIONS,
	FIELDS,
	MATCH_MODES,
	OPERATORS,
	Action,
	Condition,
	Rule,
	RuleError,
	apply_rules,
	validate_rule,
)
from machhelpdesk.engine.threads import (
	ThreadCandidate,
	choose_thread,
	find_ticket_numbers,
	strip_reply_prefixes,
	tag_subject,
	thread_message_ids,
)

settings.register_profile(
	"mh-fuzz",
	max_examples=40,
	deadline=None,
	suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
settings.register_profile("mh-fuzz-long", parent=settings.get_profile("mh-fuzz"), max_examples=400)
PROFILE = settings.get_profile(os.environ.get("MH_FUZZ_PROFILE", "mh-fuzz"))
SCALE = PROFILE.max_examples // 40


def examples(count: int) -> settings:
	"""Settings of the active profile with `count` examples (times ten in the long profile)."""
	return settings(PROFILE, max_examples=count * SCALE)


HANG_SECONDS = 60  # a guard against hangs only: an example takes milliseconds
SEED_BYTES = 64 * 1024  # seeds are cut to this, as in the fuzz campaign


@cache
def seeds() -> tuple[bytes, ...]:
	"""The corpus messages and fixtures, cut to SEED_BYTES."""
	return tuple(load_seeds(SEED_BYTES)[0])


def draw_function(data: st.DataObject):
	"""Return draw(lo, hi) for the mutators, backed by hypothesis (so failures shrink)."""
	return lambda low, high: data.draw(st.integers(low, high))


# --- mutated corpus messages through the whole engine -----------------------------------------------------


@pytest.mark.parametrize("mutator", MUTATORS, ids=[mutator.__name__ for mutator in MUTATORS])
@examples(150)
@given(data=st.data())
def test_one_mutation_of_a_corpus_message_keeps_every_promise(corpus_dir: Path, mutator, data) -> None:
	seed = data.draw(st.sampled_from(seeds()), label="seed")
	raw = mutator(seed, draw_function(data))
	with hang_guard(HANG_SECONDS):
		check_engine(raw)


@examples(800)
@given(data=st.data())
def test_stacked_mutations_of_corpus_messages_keep_every_promise(corpus_dir: Path, data) -> None:
	seed = data.draw(st.sampled_from(seeds()), label="seed")
	raw = mutate(seed, draw_function(data), seeds(), SEED_BYTES)
	with hang_guard(HANG_SECONDS):
		check_engine(raw)


HEADER_VALUES = st.one_of(
	st.binary(max_size=300),
	st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
	st.sampled_from(INJECTIONS),
)


@examples(100)
@given(
	headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUES), max_size=12),
	body=st.one_of(st.binary(max_size=500), st.sampled_from(INJECTIONS)),
)
def test_generated_header_soup_keeps_every_promise(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
	raw = b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body
	with hang_guard(HANG_SECONDS):
		check_engine(raw)


BASE64_BODY = st.lists(
	st.one_of(
		st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", max_size=80),
		st.sampled_from(["\n", "\r\n", " ", "=", "==", "!", "\t", "é", "-", "*"]),
	),
	max_size=30,
).map("".join)


@examples(300)
@given(body=BASE64_BODY, limit=st.integers(0, 40))
def test_oversized_base64_attachment_reports_the_size_decoding_would_give(body: str, limit: int) -> None:
	"""An attachment over max_attachment_size is measured without decoding; the size must be exact."""
	raw = (
		"From: a@example.org\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
		"hi\n--b\nContent-Type: application/octet-stream\nContent-Disposition: attachment; filename=f.bin\n"
		f"Content-Transfer-Encoding: base64\n\n{body}\n--b--\n"
	).encode()
	[decoded] = parse_message(raw).attachments
	[measured] = parse_message(raw, max_attachment_size=limit).attachments
	assert measured.size == decoded.size == len(decoded.content)
	assert measured.oversized is (decoded.size > limit)
	assert measured.content == (b"" if measured.oversized else decoded.content)


FIXTURES = sorted((Path(__file__).resolve().parent.parent / "fixtures").glob("*.eml"))


@pytest.mark.parametrize("path", FIXTURES, ids=[path.name for path in FIXTURES])
def test_fixture_keeps_every_promise(path: Path) -> None:
	"""Every fixture, the fuzz findings included, passes the campaign's checks."""
	with hang_guard(HANG_SECONDS):
		check_engine(path.read_bytes())


# --- findings of benchmarks/fuzz.py -----------------------------------------------------------------------


def test_addresses_with_control_characters_are_dropped(fixtures_dir: Path) -> None:
	"""fuzz-control-chars-in-address.eml: a NUL, ^A or DEL inside an address made it an "address"."""
	msg = parse_message((fixtures_dir / "fuzz-control-chars-in-address.eml").read_bytes())
	assert msg.sender is None
	assert msg.to == [Address(name="", email="support@example.com")]
	assert msg.cc == []
	assert "From: no readable address" in msg.defects
	assert "To: 1 unreadable address(es) dropped" in msg.defects


def test_unusable_rfc2231_charset_labels_read_as_utf8(fixtures_dir: Path) -> None:
	"""fuzz-rfc2231-bad-charset-label.eml: an 8-bit byte in the label of `boundary*=` made the stdlib
	parser raise UnicodeEncodeError, so the whole message failed; idna or punycode labels did the same."""
	msg = parse_message((fixtures_dir / "fuzz-rfc2231-bad-charset-label.eml").read_bytes())
	assert msg.part_content_types == ["multipart/mixed", "text/plain", "text/plain"]
	assert msg.text == "The printer on floor 2 is broken."
	[attachment] = msg.attachments
	assert (attachment.filename, attachment.content) == ("notes.txt", b"see above")
	assert msg.defects == []


def test_nested_ticket_tags_are_stripped_completely() -> None:
	"""Found by test_strip_reply_prefixes_leaves_no_tag_and_no_prefix: removing the inner tag of
	"[#[#a]]" left the outer one."""
	assert strip_reply_prefixes("[#[#a]] printer") == "printer"
	assert strip_reply_prefixes("Re: [#[#[#MP-000123]]] Re: printer") == "printer"
	with hang_guard(HANG_SECONDS):  # one pass, not one per nesting level
		assert strip_reply_prefixes("[#" * 100_000 + "a" + "]" * 100_000 + " printer") == "printer"


TICKET_TAG = re.compile(r"\[#[^\[\]]{1,64}\]")


@examples(300)
@given(
	subject=st.lists(st.sampled_from(["[#", "[", "]", "#", "a", " ", "Re:", "x" * 40]), max_size=20).map(
		"".join
	)
)
def test_ticket_tags_are_stripped_as_by_repeated_substitution(subject: str) -> None:
	expected = subject
	while TICKET_TAG.search(expected):
		expected = TICKET_TAG.sub(" ", expected)
	assert strip_reply_prefixes(subject) == strip_reply_prefixes(expected)


# --- threads -----------------------------------------------------------------------------------------------

AFFIX = st.text(alphabet="ABCmp01.+*?()[]{}|^$\\#_ ß", min_size=1, max_size=6)
SUBJECT = st.one_of(
	st.text(max_size=120),
	st.lists(
		st.one_of(
			st.sampled_from(
				["Re:", "AW :", "Fwd[2]:", "回复\uff1a", "[#", "]", "#", "-", " ", "MP-", "mp-", "-EU"]
			),
			st.from_regex(r"[0-9]{5,13}", fullmatch=True),
			st.text(max_size=8),
		),
		max_size=12,
	).map("".join),
)


def clean_affixes(values: list[str]) -> list[str]:
	"""The affixes as find_ticket_numbers reads them: without surrounding space and dashes."""
	return [value.strip().strip("-").strip() for value in values if value.strip().strip("-").strip()]


@examples(300)
@given(subject=SUBJECT, prefixes=st.lists(AFFIX, max_size=3), postfixes=st.lists(AFFIX, max_size=2))
def test_ticket_numbers_found_are_configured_names(
	subject: str, prefixes: list[str], postfixes: list[str]
) -> None:
	with hang_guard(HANG_SECONDS):
		names = find_ticket_numbers(subject, prefixes, postfixes)
	assert len(names) == len(set(names))
	prefix_group = "|".join(re.escape(prefix) for prefix in clean_affixes(prefixes)) or "(?!)"
	postfix_group = "|".join(re.escape(postfix) for postfix in clean_affixes(postfixes)) or "(?!)"
	for name in names:
		assert re.fullmatch(rf"(?:{prefix_group})-[0-9]{{6,12}}(?:-(?:{postfix_group}))?", name)
		assert name.casefold().replace("#", "") in subject.casefold().replace("#", "")


@examples(300)
@given(
	subject=SUBJECT,
	prefix=st.text(alphabet="ABCmp01.+*?()|^$_ß", min_size=1, max_size=6),
	number=st.from_regex(r"[0-9]{6,12}", fullmatch=True),
)
def test_a_tagged_subject_carries_its_ticket_number(subject: str, prefix: str, number: str) -> None:
	name = f"{prefix}-{number}"
	tagged = tag_subject(subject, name)
	assert tag_subject(tagged, name) == tagged
	assert name.casefold() in [found.casefold() for found in find_ticket_numbers(tagged, [prefix])]


@examples(300)
@given(subject=SUBJECT)
def test_strip_reply_prefixes_leaves_no_tag_and_no_prefix(subject: str) -> None:
	stripped = strip_reply_prefixes(subject)
	assert not TICKET_TAG.search(stripped)
	assert stripped == " ".join(stripped.split())
	assert strip_reply_prefixes(stripped) == stripped


MESSAGE_ID_VALUES = st.one_of(
	st.text(max_size=60),
	st.from_regex(r"<[a-z0-9.$-]{1,12}@[a-z.]{1,10}>", fullmatch=True),
	st.sampled_from(["<>", "< a@b >", "a@b", "<a@b> <c@d>", "<a\x00@b>", "<<a@b>>", "<a@b", "(c) <x@y>"]),
)


@examples(300)
@given(
	in_reply_to=st.lists(MESSAGE_ID_VALUES, max_size=3),
	references=st.lists(MESSAGE_ID_VALUES, max_size=6),
	known=st.lists(MESSAGE_ID_VALUES, max_size=3),
	sender=st.one_of(st.none(), st.emails()),
	allowed=st.lists(st.emails(), max_size=2),
	subject=SUBJECT,
)
def test_threading_prefers_message_ids_and_trusts_subjects_only_from_allowed_senders(
	in_reply_to: list[str],
	references: list[str],
	known: list[str],
	sender: str | None,
	allowed: list[str],
	subject: str,
) -> None:
	msg = ParsedMessage(
		in_reply_to=in_reply_to,
		references=references,
		subject=subject,
		sender=Address(name="", email=sender.lower()) if sender else None,
	)
	ids = thread_message_ids(msg)
	assert len(ids) == len(set(ids))
	assert all(found.startswith("<") and found.endswith(">") and " " not in found for found in ids)
	by_message_id = {value: f"MP-{index:06d}" for index, value in enumerate(known)}
	subject_tickets = {name: set(allowed) for name in find_ticket_numbers(subject, ["MP"])}
	candidate = choose_thread(
		msg, by_message_id=by_message_id, subject_tickets=subject_tickets, prefixes=["MP"]
	)
	expected_by_id = next((by_message_id[found] for found in ids if found in by_message_id), None)
	if expected_by_id is not None:
		assert candidate == ThreadCandidate(ticket=expected_by_id, via="message-id")
	elif candidate is not None:
		assert candidate.via == "subject"
		assert msg.sender is not None and msg.sender.email in {address.lower() for address in allowed}


# --- loops -------------------------------------------------------------------------------------------------

LOOP_HEADERS = (
	"Auto-Submitted",
	"X-Autoreply",
	"X-Autorespond",
	"X-Auto-Response-Suppress",
	"Precedence",
	"X-Precedence",
	"List-Id",
	"List-Unsubscribe",
	"Return-Path",
	"X-Failed-Recipients",
	"Content-Type",
	"From",
)
LOOP_VALUES = st.one_of(
	st.text(max_size=80),
	st.sampled_from(
		["no", "No (x)", "auto-replied", "(((a)))", "bulk", "list", "junk", "<>", " < > ", "OOF, AutoReply"]
	),
)


@examples(300)
@given(
	headers=st.lists(st.tuples(st.sampled_from(LOOP_HEADERS), LOOP_VALUES), max_size=6),
	subject=st.text(max_size=80),
	content_type=st.sampled_from(["text/plain", "multipart/report", "multipart/mixed"]),
	parts=st.lists(st.sampled_from(["text/plain", "message/delivery-status", "message/rfc822"]), max_size=3),
	sender=st.one_of(st.none(), st.builds(Address, st.text(max_size=30), st.emails())),
	text=st.text(max_size=300),
	enclosed=st.lists(MESSAGE_ID_VALUES, max_size=3),
	message_id=st.one_of(st.none(), st.sampled_from(["<a@b>", "<x@y>"])),
)
def test_automation_is_classified_consistently_and_bounces_name_other_messages(
	headers, subject, content_type, parts, sender, text, enclosed, message_id
) -> None:
	msg = ParsedMessage(
		headers=headers,
		subject=subject,
		content_type=content_type,
		part_content_types=[content_type, *parts],
		sender=sender,
		text=text,
		enclosed_message_ids=enclosed,
		in_reply_to=enclosed[:1],
		message_id=message_id,
	)
	with hang_guard(HANG_SECONDS):
		automation = classify_automation(msg)
		bounced = bounced_message_ids(msg)
	assert automation.kind in KINDS
	assert automation.is_automated is bool(automation.reason)
	assert automation.may_auto_reply is not automation.is_automated
	if content_type == "multipart/report" or "message/delivery-status" in parts:
		assert automation.kind == "bounce"
	assert len(bounced) == len(set(bounced))
	assert message_id not in bounced
	assert all(found.startswith("<") and found.endswith(">") for found in bounced)


@examples(200)
@given(comment=st.text(alphabet="()abc \\", max_size=40))
def test_auto_submitted_no_with_any_comment_is_a_person(comment: str) -> None:
	msg = ParsedMessage(headers=[("Auto-Submitted", f"no {comment}")], subject="Hello")
	assert classify_automation(msg).kind == "none"


# --- rules -------------------------------------------------------------------------------------------------

REGEX_TEXT = st.text(alphabet="()[]{}*+?|\\^$.,:-=!<>0123456789aAbB(?i)\\d\\w\\s\\p{L}", max_size=30)
RULE_NAMES = st.one_of(st.sampled_from(FIELDS + OPERATORS + ACTIONS), st.text(max_size=20))
CONDITIONS = st.builds(
	Condition,
	field=st.one_of(
		st.sampled_from(FIELDS), st.sampled_from([f.upper() for f in FIELDS]), st.text(max_size=10)
	),
	operator=st.one_of(st.sampled_from(OPERATORS), st.text(max_size=10)),
	value=st.one_of(st.text(max_size=20), REGEX_TEXT, st.sampled_from(["yes", "no", "1", "", " "])),
	header_name=st.one_of(st.sampled_from(["", "Subject", "X-Spam", "auto-submitted"]), st.text(max_size=10)),
)
ACTIONS_STRATEGY = st.builds(
	Action, action=st.one_of(st.sampled_from(ACTIONS), st.text(max_size=10)), value=st.text(max_size=10)
)
RULES = st.builds(
	Rule,
	name=st.text(max_size=15),
	conditions=st.lists(CONDITIONS, max_size=4),
	actions=st.lists(ACTIONS_STRATEGY, max_size=3),
	match=st.one_of(st.sampled_from([*MATCH_MODES, "ALL", " Any "]), st.text(max_size=5)),
	case_sensitive=st.booleans(),
	enabled=st.booleans(),
	also_on_replies=st.booleans(),
)


@examples(200)
@given(rules=st.lists(RULES, max_size=5), is_reply=st.booleans(), data=st.data())
def test_random_rules_never_raise_and_valid_rules_evaluate_cleanly(
	corpus_dir: Path, rules: list[Rule], is_reply: bool, data
) -> None:
	seed = data.draw(st.sampled_from(seeds()), label="seed")
	msg = parse_message(seed)
	with hang_guard(HANG_SECONDS):
		decision = apply_rules(rules, msg, is_reply=is_reply, timeout=0.05)
	assert [trace.rule for trace in decision.trace] == [rule.name for rule in rules]
	assert decision.matched_rules == [trace.rule for trace in decision.trace if trace.matched]
	assert decision.as_dict()["trace"] is not None
	decision.summary()
	for rule, trace in zip(rules, decision.trace, strict=True):
		try:
			validate_rule(rule)
		except RuleError:
			continue
		assert not trace.skipped.startswith("invalid")
		for condition in trace.conditions:
			assert not condition.detail.startswith(("error while evaluating", "invalid", "unknown"))


@examples(400)
@given(pattern=st.one_of(REGEX_TEXT, st.text(max_size=40)), case_sensitive=st.booleans())
def test_validate_rule_raises_only_rule_error_for_any_regex(pattern: str, case_sensitive: bool) -> None:
	rule = Rule("r", [Condition("Subject", "matches regex", pattern)], [], case_sensitive=case_sensitive)
	with hang_guard(HANG_SECONDS):
		try:
			validate_rule(rule)
		except RuleError as error:
			assert str(error).startswith('Rule "r": condition 1: ')
			return
		decision = apply_rules([rule], parse_message(b"Subject: abc 123\n\nbody\n"), timeout=0.05)
	assert not decision.trace[0].conditions[0].detail.startswith("error")
