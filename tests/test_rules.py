"""Tests for machhelpdesk.engine.rules: conditions, operators, fields, ordering, validation, traces."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machhelpdesk.engine.message import parse_message
from machhelpdesk.engine.rules import (
	ACTIONS,
	FIELDS,
	OPERATORS,
	Action,
	Condition,
	Decision,
	Rule,
	RuleError,
	apply_rules,
	validate_rule,
)

# --- helpers ----------------------------------------------------------------------------------------


def make_message(headers: str = "", body: str = "Hello, my server is down.\n") -> bytes:
	"""Return a small plain-text raw message; ``headers`` lines replace the defaults of the same name."""
	defaults = {
		"From": "Alice Example <alice@example.com>",
		"To": "support@xyzhosting.com",
		"Subject": "Server down",
		"Date": "Sat, 01 Mar 2025 12:00:00 +0000",
		"Message-ID": "<m1@example.com>",
		"MIME-Version": "1.0",
		"Content-Type": "text/plain; charset=utf-8",
	}
	extra = []
	for line in headers.strip().splitlines():
		name, _, value = line.partition(":")
		if name.strip() in defaults:
			defaults[name.strip()] = value.strip()
		else:
			extra.append(line.strip())
	lines = [f"{name}: {value}" for name, value in defaults.items() if value] + extra
	return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode("utf-8")


def parse(headers: str = "", body: str = "Hello, my server is down.\n"):
	"""Parse a message built by :func:`make_message`."""
	return parse_message(make_message(headers, body))


WITH_ATTACHMENT = b"""From: alice@example.com\r
To: support@xyzhosting.com\r
Subject: invoice\r
Message-ID: <att@example.com>\r
MIME-Version: 1.0\r
Content-Type: multipart/mixed; boundary="XYZ"\r
\r
--XYZ\r
Content-Type: text/plain; charset=utf-8\r
\r
Invoice attached.\r
--XYZ\r
Content-Type: application/pdf; name="invoice.pdf"\r
Content-Disposition: attachment; filename="invoice.pdf"\r
Content-Transfer-Encoding: base64\r
\r
JVBERi0xLjQKJcOkw7zDtsOfCg==\r
--XYZ--\r
"""

INLINE_IMAGE_ONLY = b"""From: alice@example.com\r
To: support@xyzhosting.com\r
Subject: logo\r
Message-ID: <inline@example.com>\r
MIME-Version: 1.0\r
Content-Type: multipart/related; boundary="REL"\r
\r
--REL\r
Content-Type: text/html; charset=utf-8\r
\r
<p>Our logo: <img src="cid:logo@example.com"></p>\r
--REL\r
Content-Type: image/png\r
Content-Disposition: inline; filename="logo.png"\r
Content-ID: <logo@example.com>\r
Content-Transfer-Encoding: base64\r
\r
iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==\r
--REL--\r
"""


def cond(field: str, operator: str, value: str = "", header_name: str = "") -> Condition:
	"""Shorthand for a Condition."""
	return Condition(field=field, operator=operator, value=value, header_name=header_name)


def rule(name: str, *conditions: Condition, actions: list[Action] | None = None, **options) -> Rule:
	"""Return a rule; by default it forwards to a department named after the rule."""
	if actions is None:
		actions = [Action("Forward to Department", name)]
	return Rule(name=name, conditions=list(conditions), actions=actions, **options)


def matches(condition: Condition, msg, **options) -> bool:
	"""Return whether a one-condition rule matches ``msg``."""
	return apply_rules([rule("R", condition, **options)], msg).trace[0].matched


THREE_TO = "To: Alice <alice@example.com>, Bob Smith <bob@xyzhosting.com>, carol@example.org"

# --- operators --------------------------------------------------------------------------------------


OPERATOR_CASES = [
	("contains", "server", True),
	("contains", "database", False),
	("does not contain", "database", True),
	("does not contain", "server", False),
	("equals", "Server down", True),
	("equals", "server", False),
	("does not equal", "Server", True),
	("does not equal", "server DOWN", False),
	("starts with", "Server", True),
	("starts with", "down", False),
	("ends with", "down", True),
	("ends with", "Server", False),
	("matches regex", r"^serv\w+\s+d", True),
	("matches regex", r"^down", False),
	("does not match regex", r"\d{3}", True),
	("does not match regex", r"d[aeiou]wn$", False),
]


@pytest.mark.parametrize(("operator", "value", "expected"), OPERATOR_CASES)
def test_operator_on_subject(operator, value, expected):
	msg = parse("Subject: Server down")
	assert matches(cond("Subject", operator, value), msg) is expected


def test_every_operator_is_covered():
	assert {operator for operator, _value, _expected in OPERATOR_CASES} == set(OPERATORS)
	assert len(OPERATORS) == 8


# --- fields -----------------------------------------------------------------------------------------


def test_field_to():
	msg = parse("To: support@xyzhosting.com")
	assert matches(cond("To", "equals", "support@xyzhosting.com"), msg)
	assert not matches(cond("To", "equals", "sales@xyzhosting.com"), msg)


def test_field_cc():
	msg = parse("Cc: Manager <boss@example.com>")
	assert matches(cond("Cc", "contains", "boss@"), msg)
	assert not matches(cond("Cc", "contains", "support@"), msg)


def test_field_from():
	msg = parse("From: Alice Example <alice@example.com>")
	assert matches(cond("From", "ends with", "@example.com"), msg)
	assert matches(cond("From", "starts with", "Alice Example"), msg)
	assert not matches(cond("From", "contains", "bob"), msg)


def test_field_reply_to():
	msg = parse("Reply-To: Helpdesk Robot <robot@tickets.example.net>")
	assert matches(cond("Reply-To", "matches regex", r"@tickets\.example\.net$"), msg)
	assert not matches(cond("From", "contains", "robot"), msg)


def test_field_subject():
	assert matches(cond("Subject", "contains", "[Spam]"), parse("Subject: [Spam] cheap pills"))
	assert not matches(cond("Subject", "contains", "[Spam]"), parse("Subject: Spam folder question"))


def test_field_body():
	msg = parse(body="Dear support,\nmy invoice #4711 is wrong.\n")
	assert matches(cond("Body", "contains", "invoice #4711"), msg)
	assert matches(cond("Body", "matches regex", r"#\d{4}\b"), msg)
	assert not matches(cond("Subject", "contains", "invoice"), msg)


def test_field_header():
	msg = parse("X-Customer-Tier: gold")
	assert matches(cond("Header", "equals", "gold", header_name="X-Customer-Tier"), msg)
	assert not matches(cond("Header", "equals", "silver", header_name="X-Customer-Tier"), msg)


def test_field_has_attachments():
	with_attachment = parse_message(WITH_ATTACHMENT)
	without = parse()
	for value in ("yes", "1", "Yes"):
		assert matches(cond("Has Attachments", "equals", value), with_attachment)
		assert not matches(cond("Has Attachments", "equals", value), without)
	for value in ("no", "0"):
		assert matches(cond("Has Attachments", "equals", value), without)
		assert not matches(cond("Has Attachments", "equals", value), with_attachment)
	assert matches(cond("Has Attachments", "does not equal", "yes"), without)
	assert matches(cond("Has Attachments", "does not equal", "no"), with_attachment)


def test_inline_images_are_not_attachments():
	msg = parse_message(INLINE_IMAGE_ONLY)
	assert any(attachment.inline for attachment in msg.attachments)
	assert matches(cond("Has Attachments", "equals", "no"), msg)


def test_every_field_is_covered():
	assert set(FIELDS) == {"To", "Cc", "From", "Reply-To", "Subject", "Body", "Header", "Has Attachments"}


# --- address lists ----------------------------------------------------------------------------------


def test_to_with_three_addresses_matches_the_second():
	msg = parse(THREE_TO)
	result = apply_rules([rule("R", cond("To", "equals", "bob@xyzhosting.com"))], msg).trace[0]
	assert result.matched
	assert "bob@xyzhosting.com" in result.conditions[0].detail


def test_address_display_form_is_compared_too():
	msg = parse(THREE_TO)
	assert matches(cond("To", "equals", "Bob Smith <bob@xyzhosting.com>"), msg)
	assert matches(cond("To", "starts with", "bob smith"), msg)
	assert matches(cond("To", "contains", "carol@"), msg)
	assert not matches(cond("To", "contains", "dave"), msg)


def test_address_emails_are_compared_lower_case():
	msg = parse("To: Support <SUPPORT@XyzHosting.com>")
	assert matches(cond("To", "equals", "support@xyzhosting.com"), msg, case_sensitive=True)


def test_negative_operators_hold_only_if_no_address_satisfies_the_positive():
	msg = parse(THREE_TO)
	assert not matches(cond("To", "does not contain", "bob"), msg)
	assert not matches(cond("To", "does not equal", "carol@example.org"), msg)
	assert not matches(cond("To", "does not match regex", r"^alice@"), msg)
	assert matches(cond("To", "does not contain", "dave"), msg)
	assert matches(cond("To", "does not equal", "example.org"), msg)
	assert matches(cond("To", "does not match regex", r"^dave@"), msg)


def test_empty_address_list_positive_false_negative_true():
	msg = parse()  # no Cc, no Reply-To
	for field in ("Cc", "Reply-To"):
		assert not matches(cond(field, "contains", "@"), msg)
		assert not matches(cond(field, "matches regex", "."), msg)
		assert matches(cond(field, "does not contain", "@"), msg)
		assert matches(cond(field, "does not equal", "x@example.com"), msg)
		assert matches(cond(field, "does not match regex", "."), msg)


# --- encoded subjects -------------------------------------------------------------------------------


def test_rfc2047_quoted_printable_subject_is_matched_decoded():
	msg = parse("Subject: =?utf-8?q?Caf=C3=A9_au_lait_order?=")
	assert matches(cond("Subject", "equals", "Café au lait order"), msg)
	assert matches(cond("Subject", "contains", "CAFÉ"), msg)
	assert not matches(cond("Subject", "contains", "=C3=A9"), msg)


def test_rfc2047_base64_latin1_subject_is_matched_decoded():
	# "Grüße aus Köln" in ISO-8859-1, base64-encoded
	msg = parse("Subject: =?iso-8859-1?b?R3L832UgYXVzIEv2bG4=?=")
	assert matches(cond("Subject", "starts with", "Grüße"), msg)
	assert matches(cond("Subject", "matches regex", r"k.ln$"), msg)
	assert not matches(cond("Subject", "contains", "R3L832"), msg)


# --- all / any --------------------------------------------------------------------------------------


def test_match_all_needs_every_condition():
	msg = parse("Subject: Server down")
	trace = apply_rules(
		[rule("R", cond("Subject", "contains", "server"), cond("To", "contains", "sales@"))], msg
	).trace[0]
	assert not trace.matched
	assert trace.decided_by == 2
	assert [result.matched for result in trace.conditions] == [True, False]


def test_match_all_with_every_condition_true():
	msg = parse("Subject: Server down")
	trace = apply_rules(
		[rule("R", cond("Subject", "contains", "server"), cond("To", "contains", "support@"))], msg
	).trace[0]
	assert trace.matched
	assert trace.decided_by is None


def test_match_any_needs_one_condition():
	msg = parse("Subject: Server down")
	conditions = (cond("Subject", "contains", "billing"), cond("To", "contains", "support@"))
	trace = apply_rules([rule("R", *conditions, match="any")], msg).trace[0]
	assert trace.matched
	assert trace.decided_by == 2
	none = apply_rules([rule("R", cond("Subject", "contains", "billing"), match="any")], msg).trace[0]
	assert not none.matched


def test_empty_conditions():
	msg = parse()
	assert apply_rules([rule("R")], msg).trace[0].matched
	assert not apply_rules([rule("R", match="any")], msg).trace[0].matched


# --- order, override, stop --------------------------------------------------------------------------


def test_later_actions_override_earlier_ones():
	msg = parse()
	rules = [
		rule("First", actions=[Action("Forward to Department", "Support"), Action("Set Status", "Open")]),
		rule(
			"Second", actions=[Action("Forward to Department", "Billing"), Action("Assign To", "ann@x.com")]
		),
	]
	decision = apply_rules(rules, msg)
	assert decision.department == "Billing"
	assert decision.status == "Open"
	assert decision.assign_to == "ann@x.com"
	assert decision.matched_rules == ["First", "Second"]


def test_rules_are_evaluated_in_the_given_order():
	msg = parse()
	first = rule("A", actions=[Action("Override Priority", "Low")])
	second = rule("B", actions=[Action("Override Priority", "Urgent")])
	assert apply_rules([first, second], msg).priority == "Urgent"
	assert apply_rules([second, first], msg).priority == "Low"


def test_stop_processing_skips_the_remaining_rules():
	msg = parse("Subject: [Spam] pills")
	rules = [
		rule("Dept", actions=[Action("Forward to Department", "Support")]),
		rule(
			"Spam",
			cond("Subject", "contains", "[spam]"),
			actions=[Action("Delete Message"), Action("Stop Processing")],
		),
		rule("Later", actions=[Action("Forward to Department", "Sales")]),
		rule("Last", actions=[Action("Set Status", "Closed")]),
	]
	decision = apply_rules(rules, msg)
	assert decision.delete
	assert decision.deleted_by == "Spam"
	assert decision.department == "Support"
	assert decision.status is None
	assert decision.matched_rules == ["Dept", "Spam"]
	assert [trace.skipped for trace in decision.trace] == ["", "", "stopped by Spam", "stopped by Spam"]


def test_stop_processing_in_an_unmatched_rule_does_not_stop():
	msg = parse("Subject: Hello")
	rules = [
		rule("Spam", cond("Subject", "contains", "[spam]"), actions=[Action("Stop Processing")]),
		rule("Dept", actions=[Action("Forward to Department", "Support")]),
	]
	decision = apply_rules(rules, msg)
	assert decision.department == "Support"
	assert not decision.delete


def test_every_action_is_applied():
	msg = parse()
	actions = [
		Action("Forward to Department", "Support"),
		Action("Assign To", "agent@xyzhosting.com"),
		Action("Set Status", "Replied"),
		Action("Override Priority", "High"),
		Action("Delete Message"),
	]
	decision = apply_rules([rule("All", actions=actions)], msg)
	assert (decision.department, decision.assign_to, decision.status, decision.priority) == (
		"Support",
		"agent@xyzhosting.com",
		"Replied",
		"High",
	)
	assert decision.delete and decision.deleted_by == "All"
	assert set(ACTIONS) == {action.action for action in actions} | {"Stop Processing"}


# --- headers ----------------------------------------------------------------------------------------


def test_list_id_header():
	msg = parse('List-Id: "Developers" <dev.lists.example.org>')
	assert matches(cond("Header", "contains", "dev.lists.example.org", header_name="List-Id"), msg)
	assert matches(cond("Header", "matches regex", r"<dev\.lists\.", header_name="list-id"), msg)
	assert not matches(cond("Header", "contains", "users.lists", header_name="List-Id"), msg)


def test_x_spam_flag_header():
	spam = parse("X-Spam-Flag: YES")
	assert matches(cond("Header", "equals", "yes", header_name="X-Spam-Flag"), spam)
	assert not matches(cond("Header", "equals", "yes", header_name="X-Spam-Flag"), parse("X-Spam-Flag: NO"))


def test_header_name_is_case_insensitive():
	msg = parse("X-Spam-Flag: YES")
	assert matches(cond("Header", "equals", "YES", header_name="x-spam-FLAG"), msg)


def test_missing_header_positive_false_negative_true():
	msg = parse()
	assert not matches(cond("Header", "contains", "", header_name="X-Spam-Flag"), msg)
	assert not matches(cond("Header", "equals", "", header_name="X-Spam-Flag"), msg)
	assert matches(cond("Header", "does not contain", "YES", header_name="X-Spam-Flag"), msg)
	assert matches(cond("Header", "does not equal", "YES", header_name="X-Spam-Flag"), msg)


def test_header_with_several_values_uses_every_value():
	msg = parse("X-Tag: alpha\nX-Tag: beta\nX-Tag: gamma")
	assert matches(cond("Header", "equals", "beta", header_name="X-Tag"), msg)
	assert not matches(cond("Header", "does not equal", "gamma", header_name="X-Tag"), msg)
	assert matches(cond("Header", "does not equal", "delta", header_name="X-Tag"), msg)


# --- case sensitivity -------------------------------------------------------------------------------


def test_case_insensitive_by_default():
	msg = parse("Subject: URGENT: Server down")
	assert matches(cond("Subject", "contains", "urgent"), msg)
	assert matches(cond("Subject", "starts with", "urgent:"), msg)
	assert matches(cond("Subject", "matches regex", r"^urgent"), msg)
	assert not matches(cond("Subject", "does not contain", "urgent"), msg)


def test_case_sensitive_rules():
	msg = parse("Subject: URGENT: Server down")
	assert not matches(cond("Subject", "contains", "urgent"), msg, case_sensitive=True)
	assert matches(cond("Subject", "contains", "URGENT"), msg, case_sensitive=True)
	assert not matches(cond("Subject", "matches regex", r"^urgent"), msg, case_sensitive=True)
	assert matches(cond("Subject", "does not match regex", r"^urgent"), msg, case_sensitive=True)


def test_casefold_matches_german_sharp_s():
	msg = parse("Subject: =?utf-8?q?STRASSE_closed?=")
	assert matches(cond("Subject", "contains", "straße"), msg)


# --- skipping ---------------------------------------------------------------------------------------


def test_disabled_rules_are_skipped():
	msg = parse()
	decision = apply_rules([rule("Off", enabled=False), rule("On")], msg)
	assert decision.trace[0].skipped == "disabled"
	assert not decision.trace[0].matched
	assert decision.matched_rules == ["On"]


def test_replies_skip_rules_not_meant_for_replies():
	msg = parse("In-Reply-To: <earlier@example.com>")
	rules = [rule("New only"), rule("Replies too", also_on_replies=True)]
	reply = apply_rules(rules, msg, is_reply=True)
	assert [trace.skipped for trace in reply.trace] == ["reply", ""]
	assert reply.department == "Replies too"
	assert apply_rules(rules, msg).matched_rules == ["New only", "Replies too"]


# --- validation -------------------------------------------------------------------------------------


def test_valid_rule_passes():
	validate_rule(
		rule(
			"Good",
			cond("Subject", "matches regex", r"^\[(spam|junk)\]"),
			cond("Header", "equals", "YES", header_name="X-Spam-Flag"),
			cond("Has Attachments", "equals", "no"),
			actions=[Action("Delete Message"), Action("Stop Processing")],
		)
	)


def test_invalid_regex_names_rule_condition_and_position():
	bad = rule("Spam", cond("Subject", "contains", "x"), cond("Subject", "matches regex", "ab(cd"))
	with pytest.raises(RuleError) as caught:
		validate_rule(bad)
	assert (
		str(caught.value) == 'Rule "Spam": condition 2: invalid regular expression at position 5: missing )'
	)
	assert isinstance(caught.value, ValueError)


def test_header_without_name_is_refused():
	with pytest.raises(
		RuleError, match=r'^Rule "Lists": condition 1: a Header condition needs a header name$'
	):
		validate_rule(rule("Lists", cond("Header", "contains", "x")))


def test_forward_without_department_is_refused():
	bad = rule("Route", actions=[Action("Set Status", "Open"), Action("Forward to Department", " ")])
	with pytest.raises(
		RuleError, match=r'^Rule "Route": action 2: Forward to Department needs a department$'
	):
		validate_rule(bad)


@pytest.mark.parametrize(
	("bad", "message"),
	[
		(rule("R", cond("Size", "equals", "1")), 'condition 1: unknown field "Size"'),
		(rule("R", cond("Subject", "is", "1")), 'condition 1: unknown operator "is"'),
		(rule("R", actions=[Action("Escalate", "x")]), 'action 1: unknown action "Escalate"'),
		(rule("R", actions=[Action("Assign To")]), "action 1: Assign To needs an agent"),
		(rule("R", actions=[Action("Set Status")]), "action 1: Set Status needs a status"),
		(rule("R", actions=[Action("Override Priority")]), "action 1: Override Priority needs a priority"),
		(rule("R", cond("Subject", "contains", "")), 'condition 1: "contains" needs a value'),
		(rule("R", cond("Has Attachments", "equals", "maybe")), 'Has Attachments takes "yes" or "no"'),
		(rule("R", cond("Has Attachments", "contains", "yes")), 'only supports "equals"'),
		(rule("R", match="most"), 'match must be "all" or "any"'),
	],
)
def test_validate_rule_messages(bad, message):
	with pytest.raises(RuleError) as caught:
		validate_rule(bad)
	assert str(caught.value).startswith('Rule "R": ')
	assert message in str(caught.value)


# --- bad rules at evaluation time -------------------------------------------------------------------


def test_bad_rules_never_raise_during_apply_rules():
	msg = parse()
	rules = [
		rule("Regex", cond("Subject", "matches regex", "(unclosed")),
		rule("Field", cond("Size", "equals", "1")),
		rule("Operator", cond("Subject", "resembles", "x")),
		rule("Mode", match="sometimes"),
		rule("Action", actions=[Action("Escalate", "x"), Action("Forward to Department", "")]),
		rule("Nones", Condition(field=None, operator=None, value=None)),  # type: ignore[arg-type]
		Rule(name="Empty lists", conditions=None, actions=None),  # type: ignore[arg-type]
	]
	decision = apply_rules(rules, msg)
	regex_result = decision.trace[0].conditions[0]
	assert not regex_result.matched
	assert regex_result.detail.startswith("invalid regular expression at position")
	assert decision.trace[1].conditions[0].detail == 'unknown field "Size"'
	assert not decision.trace[2].matched
	assert decision.trace[3].skipped.startswith("invalid match mode")
	assert decision.trace[4].matched
	assert "ignored" in decision.trace[4].detail
	assert decision.department is None
	assert not decision.trace[5].matched
	assert decision.trace[6].matched


# --- regex timeout ----------------------------------------------------------------------------------


def test_catastrophic_regex_is_stopped_by_the_timeout():
	msg = parse(body="a" * 100_000 + "!")
	rules = [
		rule("Evil", cond("Body", "matches regex", r"(a+)+$")),
		rule("Evil negated", cond("Body", "does not match regex", r"(a+)+$")),
		rule("After", cond("Subject", "contains", "server")),
	]
	decision = apply_rules(rules, msg, timeout=0.25)
	for trace in decision.trace[:2]:
		result = trace.conditions[0]
		assert result.timed_out
		assert not result.matched
		assert result.detail == "regular expression timed out after 0.25 s"
		assert not trace.matched
	assert decision.matched_rules == ["After"]
	json.dumps(decision.as_dict())


# --- decision output --------------------------------------------------------------------------------


def test_as_dict_is_json_serialisable():
	msg = parse(THREE_TO + "\nX-Spam-Flag: YES")
	rules = [
		rule("Support", cond("To", "contains", "bob@")),
		rule(
			"Spam",
			cond("Header", "equals", "yes", header_name="X-Spam-Flag"),
			actions=[Action("Delete Message")],
		),
		rule("Off", enabled=False),
	]
	data = apply_rules(rules, msg).as_dict()
	restored = json.loads(json.dumps(data))
	assert restored["department"] == "Support"
	assert restored["delete"] is True
	assert restored["deleted_by"] == "Spam"
	assert restored["matched_rules"] == ["Support", "Spam"]
	assert restored["trace"][2]["skipped"] == "disabled"
	assert restored["trace"][0]["conditions"][0]["field"] == "To"


def test_summary_has_one_line_per_matched_rule():
	msg = parse(THREE_TO + "\nX-Spam-Flag: YES")
	rules = [
		rule("Support", cond("To", "contains", "support@x")),
		rule("Bob", cond("To", "contains", "bob@")),
		rule(
			"Spam",
			cond("Subject", "contains", "viagra"),
			cond("Header", "equals", "yes", header_name="X-Spam-Flag"),
			match="any",
			actions=[Action("Delete Message"), Action("Stop Processing")],
		),
		rule("Both", cond("Subject", "contains", "server"), cond("From", "ends with", "example.com")),
	]
	summary = apply_rules(rules, msg).summary()
	assert summary.splitlines() == [
		'Rule "Bob": To contains "bob@" -> Forward to Department Bob',
		'Rule "Spam": Header X-Spam-Flag equals "yes" -> Delete Message; Stop Processing',
	]
	assert Decision().summary() == ""


def test_summary_for_all_conditions_and_for_no_conditions():
	msg = parse()
	rules = [
		rule("Both", cond("Subject", "contains", "server"), cond("From", "ends with", "example.com")),
		rule("Always", actions=[Action("Set Status", "Open")]),
	]
	assert apply_rules(rules, msg).summary().splitlines() == [
		'Rule "Both": Subject contains "server" and From ends with "example.com" -> Forward to Department Both',
		'Rule "Always": always -> Set Status Open',
	]


def test_summary_example_from_the_spec():
	msg = parse("To: support@xyzhosting.com")
	decision = apply_rules([rule("Support", cond("To", "contains", "support@x"))], msg)
	assert decision.summary() == 'Rule "Support": To contains "support@x" -> Forward to Department Support'


# --- property test ----------------------------------------------------------------------------------

FUZZ_MESSAGE = make_message(
	THREE_TO + "\nX-Spam-Flag: YES\nList-Id: <dev.example.org>", "Body text\nline 2\n"
)
FIELD_NAMES = st.sampled_from([*FIELDS, "Bogus", ""])
OPERATOR_NAMES = st.sampled_from([*OPERATORS, "bogus"])
HEADER_NAMES = st.sampled_from(["", "X-Spam-Flag", "List-Id", "Received", "x-missing"])
CONDITIONS = st.builds(
	Condition, field=FIELD_NAMES, operator=OPERATOR_NAMES, value=st.text(), header_name=HEADER_NAMES
)
ACTION_LISTS = st.lists(
	st.builds(Action, action=st.sampled_from([*ACTIONS, "Bogus"]), value=st.text(max_size=10))
)
RULES = st.builds(
	Rule,
	name=st.text(max_size=20),
	conditions=st.lists(CONDITIONS, max_size=4),
	actions=ACTION_LISTS,
	match=st.sampled_from(["all", "any", "ANY", "none"]),
	case_sensitive=st.booleans(),
	enabled=st.booleans(),
	also_on_replies=st.booleans(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(RULES, max_size=5), is_reply=st.booleans())
def test_apply_rules_never_raises(rules, is_reply):
	msg = parse_message(FUZZ_MESSAGE)
	decision = apply_rules(rules, msg, is_reply=is_reply, timeout=0.05)
	assert len(decision.trace) == len(rules)
	json.dumps(decision.as_dict())
	decision.summary()
	for candidate in rules:
		try:
			validate_rule(candidate)
		except RuleError as exc:
			assert str(exc).startswith(f'Rule "{candidate.name}": ')
