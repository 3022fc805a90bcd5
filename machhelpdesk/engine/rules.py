"""Processing rules for inbound mail: ordered rules in, one decision and a full trace out.

A rule is a list of conditions on the message ("To contains support@example.com", "Subject matches
regex ^\\[Spam\\]") joined by "all" or "any", and a list of actions (forward to a department, assign,
set status or priority, delete, stop processing). The caller loads the rules of a mailbox, sorts them
and hands them to :func:`apply_rules` with a parsed message; nothing here touches a database.

Design points:

- ``apply_rules`` never raises because of a bad rule. A rule saved before validation existed, an
  unknown field or a broken regular expression make the condition false and say why in the trace.
  :func:`validate_rule` is what the DocType controller calls to refuse such rules in the first place.
- Regular expressions are compiled once (an LRU cache keyed by pattern and flags) and every search
  is bounded in time with the ``regex`` package's ``timeout=``. A pattern that runs out of time
  counts as "no match", whatever the operator, and the trace says it timed out.
- The trace (:class:`RuleTrace`, :class:`ConditionResult`) is plain data, so that a dry run of a
  rule on past mail can show the admin exactly which condition decided.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import regex

if TYPE_CHECKING:
	from machhelpdesk.engine.message import Address, ParsedMessage

FIELDS = ("To", "Cc", "From", "Reply-To", "Subject", "Body", "Header", "Has Attachments")
OPERATORS = (
	"contains",
	"does not contain",
	"equals",
	"does not equal",
	"starts with",
	"ends with",
	"matches regex",
	"does not match regex",
)
ACTIONS = (
	"Forward to Department",
	"Assign To",
	"Set Status",
	"Override Priority",
	"Delete Message",
	"Stop Processing",
)
MATCH_MODES = ("all", "any")

ADDRESS_FIELDS = ("To", "Cc", "From", "Reply-To")
REGEX_OPERATORS = ("matches regex", "does not match regex")
# Each negative operator is true exactly when its positive form is true for no value at all.
NEGATIVE_OPERATORS = {
	"does not contain": "contains",
	"does not equal": "equals",
	"does not match regex": "matches regex",
}
# Operators whose empty value would match every message, which is never what the admin meant.
NEEDS_VALUE_OPERATORS = ("contains", "does not contain", "starts with", "ends with", *REGEX_OPERATORS)
ATTACHMENT_OPERATORS = ("equals", "does not equal")
YES_VALUES = ("yes", "1", "true")
NO_VALUES = ("no", "0", "false")

# Action -> (Decision attribute it sets, what its value names). Actions absent here take no value.
VALUE_ACTIONS = {
	"Forward to Department": ("department", "a department"),
	"Assign To": ("assign_to", "an agent"),
	"Set Status": ("status", "a status"),
	"Override Priority": ("priority", "a priority"),
}

DEFAULT_TIMEOUT = 0.25
CLIP = 60  # characters of matched text quoted in a trace detail

_FIELD_KEYS = {name.casefold(): name for name in FIELDS}
_OPERATOR_KEYS = {name.casefold(): name for name in OPERATORS}
_ACTION_KEYS = {name.casefold(): name for name in ACTIONS}


class RuleError(ValueError):
	"""Invalid rule: the message names the rule and what is wrong.

	Example: ``Rule "Spam": condition 2: invalid regular expression at position 4: missing )``.
	"""


@dataclass
class Condition:
	"""One test on the message.

	``field`` is one of :data:`FIELDS`, ``operator`` one of :data:`OPERATORS`. ``header_name`` is
	required for the "Header" field. "Has Attachments" takes ``value`` "yes"/"no" (or "1"/"0")
	with the operators "equals" and "does not equal".
	"""

	field: str
	operator: str
	value: str = ""
	header_name: str = ""


@dataclass
class Action:
	"""One thing to do when the rule matches.

	``value`` is the department name, agent user, status or priority; it is "" for
	"Delete Message" and "Stop Processing".
	"""

	action: str
	value: str = ""


@dataclass
class Rule:
	"""A named rule: conditions joined by ``match`` ("all" or "any"), and actions."""

	name: str
	conditions: list[Condition]
	actions: list[Action]
	match: str = "all"
	case_sensitive: bool = False
	enabled: bool = True
	also_on_replies: bool = False


@dataclass
class ConditionResult:
	"""How one condition evaluated. ``index`` is 1-based, as in :class:`RuleError` messages."""

	index: int
	field: str
	operator: str
	value: str
	matched: bool
	timed_out: bool = False
	detail: str = ""
	header_name: str = ""


@dataclass
class RuleTrace:
	"""How one rule evaluated.

	``skipped`` is "" when the rule was evaluated, else why not: "disabled", "reply",
	"stopped by <rule>" or "invalid match mode ...". ``conditions`` holds the conditions evaluated,
	in order; evaluation stops at the condition that decides. ``decided_by`` is the 1-based index
	of that condition (the first failing one for "all", the first matching one for "any"), or
	None when no single condition decided (all matched for "all", none matched for "any", or the
	rule has no conditions). ``actions`` lists the actions applied, in words, when it matched;
	``detail`` notes actions that were ignored because they are invalid.
	"""

	rule: str
	matched: bool
	skipped: str = ""
	conditions: list[ConditionResult] = field(default_factory=list)
	decided_by: int | None = None
	match: str = "all"
	actions: list[str] = field(default_factory=list)
	detail: str = ""


@dataclass
class Decision:
	"""What the rules decided for one message, and the trace of how."""

	department: str | None = None
	assign_to: str | None = None
	status: str | None = None
	priority: str | None = None
	delete: bool = False
	deleted_by: str | None = None
	matched_rules: list[str] = field(default_factory=list)
	trace: list[RuleTrace] = field(default_factory=list)

	def as_dict(self) -> dict[str, Any]:
		"""Return the decision and its trace as JSON-serialisable plain data (for the ledger row)."""
		return dataclasses.asdict(self)

	def summary(self) -> str:
		"""Return one human line per matched rule, e.g.

		``Rule "Support": To contains "support@x" -> Forward to Department Support``.
		Returns "" when no rule matched.
		"""
		return "\n".join(_describe_trace(rule_trace) for rule_trace in self.trace if rule_trace.matched)


# --- validation -------------------------------------------------------------------------------------


def validate_rule(rule: Rule) -> None:
	"""Raise :class:`RuleError` for the first problem found in ``rule``; return None if it is valid.

	Checks: the match mode, every condition's field and operator, the header name of "Header"
	conditions, the values of "Has Attachments" conditions, empty values where they would match
	everything, that regular expressions compile (reporting the error position), every action's
	name and that actions which need a value have one.
	"""
	prefix = f'Rule "{rule.name}"'
	if not (rule.name or "").strip():
		raise RuleError(f"{prefix}: the rule has no name")
	if _canonical_match(rule.match) is None:
		raise RuleError(f'{prefix}: match must be "all" or "any", not "{rule.match}"')
	for index, condition in enumerate(rule.conditions, start=1):
		problem = _condition_problem(condition, rule.case_sensitive)
		if problem:
			raise RuleError(f"{prefix}: condition {index}: {problem}")
	for index, action in enumerate(rule.actions, start=1):
		problem = _action_problem(action)
		if problem:
			raise RuleError(f"{prefix}: action {index}: {problem}")


def _condition_problem(condition: Condition, case_sensitive: bool) -> str:
	"""Return what is wrong with ``condition`` in words, or "" if nothing is."""
	field_name = _FIELD_KEYS.get(_key(condition.field))
	if field_name is None:
		return f'unknown field "{condition.field}"'
	operator = _OPERATOR_KEYS.get(_key(condition.operator))
	if operator is None:
		return f'unknown operator "{condition.operator}"'
	value = condition.value or ""
	if field_name == "Header" and not (condition.header_name or "").strip():
		return "a Header condition needs a header name"
	if field_name == "Has Attachments":
		if operator not in ATTACHMENT_OPERATORS:
			return f'Has Attachments only supports "equals" and "does not equal", not "{operator}"'
		if _attachment_flag(value) is None:
			return f'Has Attachments takes "yes" or "no", not "{value}"'
		return ""
	if operator in NEEDS_VALUE_OPERATORS and value == "":
		return f'"{operator}" needs a value'
	if operator in REGEX_OPERATORS:
		_pattern, error = _compile(value, _regex_flags(case_sensitive))
		if error:
			return error
	return ""


def _action_problem(action: Action) -> str:
	"""Return what is wrong with ``action`` in words, or "" if nothing is."""
	name = _ACTION_KEYS.get(_key(action.action))
	if name is None:
		return f'unknown action "{action.action}"'
	if name in VALUE_ACTIONS and not (action.value or "").strip():
		return f"{name} needs {VALUE_ACTIONS[name][1]}"
	return ""


# --- evaluation -------------------------------------------------------------------------------------


def apply_rules(
	rules: Sequence[Rule],
	msg: ParsedMessage,
	*,
	is_reply: bool = False,
	timeout: float = DEFAULT_TIMEOUT,
) -> Decision:
	"""Evaluate ``rules`` in the given order against ``msg`` and return the combined decision.

	Disabled rules are skipped, and so are rules without ``also_on_replies`` when ``is_reply``.
	Later actions of the same kind override earlier ones; a matched rule with "Stop Processing"
	ends the evaluation after its own actions. ``timeout`` (seconds) bounds the regular-expression
	work of each condition. Bad rules never raise: they fail and the trace says why.
	"""
	if not timeout > 0:
		raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
	decision = Decision()
	view = _MessageView(msg)
	stopped_by: str | None = None
	for rule in rules:
		if stopped_by is not None:
			decision.trace.append(_skipped(rule, f"stopped by {stopped_by}"))
			continue
		if not rule.enabled:
			decision.trace.append(_skipped(rule, "disabled"))
			continue
		if is_reply and not rule.also_on_replies:
			decision.trace.append(_skipped(rule, "reply"))
			continue
		rule_trace = _evaluate_rule(rule, view, timeout)
		decision.trace.append(rule_trace)
		if rule_trace.matched:
			decision.matched_rules.append(rule.name)
			if _apply_actions(rule, decision, rule_trace):
				stopped_by = rule.name
	return decision


def _skipped(rule: Rule, reason: str) -> RuleTrace:
	"""Return the trace of a rule that was not evaluated."""
	return RuleTrace(rule=rule.name, matched=False, skipped=reason, match=str(rule.match))


def _evaluate_rule(rule: Rule, view: _MessageView, timeout: float) -> RuleTrace:
	"""Evaluate the conditions of one rule, stopping at the condition that decides."""
	match = _canonical_match(rule.match)
	if match is None:
		return _skipped(rule, f'invalid match mode "{rule.match}"')
	rule_trace = RuleTrace(rule=rule.name, matched=match == "all", match=match)
	for index, condition in enumerate(rule.conditions or [], start=1):
		result = _evaluate_condition(index, condition, rule.case_sensitive, view, timeout)
		rule_trace.conditions.append(result)
		if match == "all" and not result.matched:
			rule_trace.matched, rule_trace.decided_by = False, index
			break
		if match == "any" and result.matched:
			rule_trace.matched, rule_trace.decided_by = True, index
			break
	return rule_trace


def _apply_actions(rule: Rule, decision: Decision, rule_trace: RuleTrace) -> bool:
	"""Apply the actions of a matched rule to ``decision``; return True if it stops processing."""
	stop = False
	ignored = []
	for index, action in enumerate(rule.actions or [], start=1):
		problem = _action_problem(action)
		if problem:
			ignored.append(f"action {index} ignored: {problem}")
			continue
		name = _ACTION_KEYS[_key(action.action)]
		if name in VALUE_ACTIONS:
			value = action.value.strip()
			setattr(decision, VALUE_ACTIONS[name][0], value)
			rule_trace.actions.append(f"{name} {value}")
		elif name == "Delete Message":
			decision.delete, decision.deleted_by = True, rule.name
			rule_trace.actions.append(name)
		elif name == "Stop Processing":
			stop = True
			rule_trace.actions.append(name)
	rule_trace.detail = "; ".join(ignored)
	return stop


def _evaluate_condition(
	index: int, condition: Condition, case_sensitive: bool, view: _MessageView, timeout: float
) -> ConditionResult:
	"""Evaluate one condition; any problem makes it false with the reason in ``detail``."""
	result = ConditionResult(
		index=index,
		field=str(condition.field),
		operator=str(condition.operator),
		value=str(condition.value or ""),
		matched=False,
		header_name=str(condition.header_name or ""),
	)
	try:
		problem = _condition_problem(condition, case_sensitive)
		if problem:
			result.detail = problem
			return result
		field_name = _FIELD_KEYS[_key(condition.field)]
		operator = _OPERATOR_KEYS[_key(condition.operator)]
		if field_name == "Has Attachments":
			wanted = _attachment_flag(condition.value)
			result.matched = (view.has_attachments == wanted) == (operator == "equals")
			result.detail = "has attachments" if view.has_attachments else "has no attachments"
			return result
		values = view.values(field_name, condition.header_name or "")
		folded = (
			values if case_sensitive else view.values(field_name, condition.header_name or "", folded=True)
		)
		_evaluate_values(result, operator, condition.value or "", values, folded, case_sensitive, timeout)
	except Exception as exc:  # a bad rule must never stop mail intake; the trace carries the reason
		result.matched, result.detail = False, f"error while evaluating: {type(exc).__name__}: {exc}"
	return result


def _evaluate_values(
	result: ConditionResult,
	operator: str,
	value: str,
	values: list[str],
	folded: list[str],
	case_sensitive: bool,
	timeout: float,
) -> None:
	"""Set ``result`` from testing ``operator`` against every value of the field (any/none semantics).

	``folded`` holds the same values case-folded (or the values themselves for a case-sensitive rule).
	"""
	positive = NEGATIVE_OPERATORS.get(operator, operator)
	negative = positive != operator
	if positive == "matches regex":
		found, timed_out, detail = _search_any(value, values, case_sensitive, timeout)
		if timed_out:
			result.timed_out, result.detail = True, detail
			return
	else:
		found = _find_any(positive, value if case_sensitive else value.casefold(), values, folded)
		detail = f'"{_clip(found)}"' if found is not None else ""
	if not values:
		result.detail = "no value"
	elif found is not None:
		result.detail = f"found {detail}" if negative else f"matched {detail}"
	result.matched = (found is None) if negative else (found is not None)


def _find_any(operator: str, needle: str, values: list[str], folded: list[str]) -> str | None:
	"""Return the first of ``values`` whose form in ``folded`` satisfies ``operator`` with ``needle``."""
	test = _STRING_TESTS[operator]
	for candidate, comparable in zip(values, folded, strict=True):
		if test(comparable, needle):
			return candidate
	return None


_STRING_TESTS: dict[str, Callable[[str, str], bool]] = {
	"contains": lambda candidate, needle: needle in candidate,
	"equals": lambda candidate, needle: candidate.strip() == needle.strip(),
	"starts with": lambda candidate, needle: candidate.lstrip().startswith(needle),
	"ends with": lambda candidate, needle: candidate.rstrip().endswith(needle),
}


def _search_any(
	pattern: str, values: list[str], case_sensitive: bool, timeout: float
) -> tuple[str | None, bool, str]:
	"""Search ``pattern`` in each value within one time budget.

	Returns (the matched text or None, whether the budget ran out, a detail for the trace).
	"""
	compiled, error = _compile(pattern, _regex_flags(case_sensitive))
	if compiled is None:
		return None, False, error
	deadline = time.monotonic() + timeout
	for candidate in values:
		remaining = deadline - time.monotonic()
		try:
			if remaining <= 0:
				raise TimeoutError
			found = compiled.search(candidate, timeout=remaining)
		except TimeoutError:
			return None, True, f"regular expression timed out after {timeout:g} s"
		if found is not None:
			return found.group(0), False, f'"{_clip(found.group(0))}"'
	return None, False, ""


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str, flags: int) -> tuple[regex.Pattern[str] | None, str]:
	"""Compile ``pattern`` once; return (pattern, "") or (None, the error in words)."""
	try:
		return regex.compile(pattern, flags), ""
	except regex.error as exc:
		position = f" at position {exc.pos}" if exc.pos is not None else ""
		return None, f"invalid regular expression{position}: {exc.msg}"
	except Exception as exc:  # e.g. ValueError or OverflowError on absurd repeat counts
		return None, f"invalid regular expression: {exc}"


def _regex_flags(case_sensitive: bool) -> int:
	"""Return the ``regex`` flags for a rule."""
	# FULLCASE makes "STRASSE" match "straße", as casefold does for the string operators.
	return 0 if case_sensitive else regex.IGNORECASE | regex.FULLCASE


class _MessageView:
	"""The field values of one message, computed once per :func:`apply_rules` call."""

	def __init__(self, msg: ParsedMessage) -> None:
		self.msg = msg
		self._cache: dict[tuple[str, str, bool], list[str]] = {}
		self.has_attachments = any(not attachment.inline for attachment in msg.attachments or [])

	def values(self, field_name: str, header_name: str = "", *, folded: bool = False) -> list[str]:
		"""Return every value the field has on the message (a list, possibly empty), case-folded if asked."""
		key = (field_name, header_name.strip().casefold() if field_name == "Header" else "", folded)
		if key not in self._cache:
			if folded:
				self._cache[key] = [value.casefold() for value in self.values(field_name, header_name)]
			else:
				self._cache[key] = self._compute(field_name, header_name.strip())
		return self._cache[key]

	def _compute(self, field_name: str, header_name: str) -> list[str]:
		msg = self.msg
		if field_name == "To":
			return _address_forms(msg.to)
		if field_name == "Cc":
			return _address_forms(msg.cc)
		if field_name == "From":
			return _address_forms([msg.sender] if msg.sender else [])
		if field_name == "Reply-To":
			return _address_forms(msg.reply_to)
		if field_name == "Subject":
			return [msg.subject or ""]
		if field_name == "Body":
			return [msg.text or ""]
		if field_name == "Header":
			return [str(value) for value in msg.header(header_name)]
		raise ValueError(f'unknown field "{field_name}"')


def _address_forms(addresses: Sequence[Address] | None) -> list[str]:
	"""Return, for every address, its email and, if it has a name, its "Name <email>" form."""
	forms = []
	for address in addresses or []:
		forms.append(address.email)
		if address.name:
			forms.append(f"{address.name} <{address.email}>")
	return forms


# --- small helpers ----------------------------------------------------------------------------------


def _key(name: object) -> str:
	"""Normalise a field, operator or action name for lookup (tolerates case and spacing)."""
	return _normalise(name) if isinstance(name, str) else _normalise(str(name or ""))


@functools.lru_cache(maxsize=4096)
def _normalise(name: str) -> str:
	"""Collapse whitespace and case-fold ``name`` (cached: rule vocabularies are small)."""
	return " ".join(name.split()).casefold()


def _canonical_match(match: object) -> str | None:
	"""Return "all" or "any" for a match mode in any case, or None if it is neither."""
	key = _key(match)
	return key if key in MATCH_MODES else None


def _attachment_flag(value: object) -> bool | None:
	"""Read a "Has Attachments" value: True for yes/1/true, False for no/0/false, else None."""
	key = _key(value)
	if key in YES_VALUES:
		return True
	if key in NO_VALUES:
		return False
	return None


def _clip(text: str | None, limit: int = CLIP) -> str:
	"""Shorten ``text`` to one line of at most ``limit`` characters for a trace."""
	line = " ".join((text or "").split())
	return line if len(line) <= limit else line[: limit - 1] + "…"


def _describe_condition(result: ConditionResult) -> str:
	"""Return a condition in words: 'To contains "support@x"'."""
	subject = f"Header {result.header_name}" if result.header_name else result.field
	return f'{subject} {result.operator} "{result.value}"'


def _describe_trace(rule_trace: RuleTrace) -> str:
	"""Return the summary line of a matched rule."""
	if rule_trace.decided_by is not None:
		conditions = _describe_condition(rule_trace.conditions[rule_trace.decided_by - 1])
	elif rule_trace.conditions:
		conditions = " and ".join(_describe_condition(result) for result in rule_trace.conditions)
	else:
		conditions = "always"
	actions = "; ".join(rule_trace.actions) if rule_trace.actions else "no action"
	return f'Rule "{rule_trace.rule}": {conditions} -> {actions}'
