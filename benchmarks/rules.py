"""Benchmark: 50 processing rules against every message of the corpus.

Run from the repository root: ``python benchmarks/rules.py``. The corpus folder comes from
``MH_CORPUS_DIR`` (default ``<repo>/../shared/corpus``). Messages are parsed before timing starts;
only :func:`apply_rules` is timed. Prints figures and asserts nothing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from machhelpdesk.engine.message import ParsedMessage, parse_message  # noqa: E402
from machhelpdesk.engine.rules import (  # noqa: E402
	DEFAULT_TIMEOUT,
	Action,
	Condition,
	Rule,
	apply_rules,
	validate_rule,
)

ROUNDS = 3  # each message is evaluated this many times; the worst single evaluation is reported


def corpus_dir() -> Path:
	"""Return the corpus folder from MH_CORPUS_DIR, or the default next to the repository."""
	return Path(os.environ.get("MH_CORPUS_DIR") or REPO_ROOT.parent / "shared" / "corpus")


def load_messages(folder: Path) -> list[tuple[str, ParsedMessage]]:
	"""Parse every .eml file in ``folder``; report and skip the ones the parser refuses."""
	messages = []
	for path in sorted(folder.glob("*.eml")):
		try:
			messages.append((path.name, parse_message(path.read_bytes())))
		except Exception as exc:
			print(f"skipped {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
	return messages


def build_rules() -> list[Rule]:
	"""Return 50 varied rules: every field and operator, regexes, any/all, a few disabled."""
	rules: list[Rule] = []

	def add(name: str, conditions: list[Condition], actions: list[Action] | None = None, **options) -> None:
		rules.append(Rule(name, conditions, actions or [Action("Forward to Department", name)], **options))

	domains = ["example.com", "example.org", "python.org", "gmail.com", "lists.example.net"]
	for index, domain in enumerate(domains):
		add(f"To {domain}", [Condition("To", "ends with", f"@{domain}")])
		add(f"From {domain}", [Condition("From", "contains", domain)], match="any")
		add(f"Cc not {domain}", [Condition("Cc", "does not contain", domain)], enabled=index % 2 == 0)
	words = ["invoice", "urgent", "password", "refund", "meeting", "order"]
	for word in words:
		add(f"Subject {word}", [Condition("Subject", "contains", word)])
		add(
			f"Body {word}",
			[Condition("Body", "contains", word), Condition("Subject", "does not contain", "re:")],
		)
	add("Subject equals", [Condition("Subject", "equals", "test message")])
	add("Subject not equals", [Condition("Subject", "does not equal", "")], also_on_replies=True)
	add("Subject starts Re", [Condition("Subject", "starts with", "Re:")])
	add("Subject starts Fwd", [Condition("Subject", "starts with", "Fwd:")], case_sensitive=True)
	add("Spam tag", [Condition("Subject", "contains", "[SPAM]")], [Action("Delete Message")])
	add("Subject ticket regex", [Condition("Subject", "matches regex", r"\[#?\d{3,8}\]")])
	add("Subject no digits", [Condition("Subject", "does not match regex", r"\d")])
	add("Body order number", [Condition("Body", "matches regex", r"\border\s*(no\.?|number|#)\s*\d+")])
	add("Body phone", [Condition("Body", "matches regex", r"\+?\d[\d ()-]{7,}\d")])
	add("Body URL", [Condition("Body", "matches regex", r"https?://[^\s/]+\.(ru|cn|xyz)\b")])
	add("Body unsubscribe", [Condition("Body", "does not match regex", r"(?i)unsubscribe")])
	add("From regex", [Condition("From", "matches regex", r"^(noreply|no-reply|mailer-daemon)@")])
	add("Reply-To differs", [Condition("Reply-To", "does not equal", "")])
	add("Reply-To regex", [Condition("Reply-To", "matches regex", r"@(.+\.)?example\.(com|org)$")])
	add("List-Id", [Condition("Header", "contains", "lists", header_name="List-Id")])
	add(
		"X-Spam-Flag",
		[Condition("Header", "equals", "YES", header_name="X-Spam-Flag")],
		[Action("Delete Message"), Action("Stop Processing")],
	)
	add(
		"Precedence bulk",
		[Condition("Header", "matches regex", r"^(bulk|list|junk)$", header_name="Precedence")],
	)
	add("Auto-Submitted", [Condition("Header", "does not equal", "no", header_name="Auto-Submitted")])
	add("Received relay", [Condition("Header", "contains", "relay", header_name="Received")])
	add("Attachments", [Condition("Has Attachments", "equals", "yes")], [Action("Set Status", "Open")])
	add(
		"No attachments", [Condition("Has Attachments", "equals", "no"), Condition("Body", "ends with", "--")]
	)
	add(
		"Priority",
		[
			Condition("Subject", "matches regex", r"\b(urgent|asap|emergency)\b"),
			Condition("Body", "contains", "outage"),
			Condition("Header", "equals", "1", header_name="X-Priority"),
		],
		[Action("Override Priority", "Urgent"), Action("Assign To", "oncall@example.com")],
		match="any",
	)
	add("Catch-all", [], [Action("Set Status", "Open")])
	for candidate in rules:
		validate_rule(candidate)
	return rules


def main() -> None:
	"""Parse the corpus, evaluate the rules against every message and print the figures."""
	folder = corpus_dir()
	if not folder.is_dir():
		print(f"no corpus at {folder}; set MH_CORPUS_DIR")
		return
	messages = load_messages(folder)
	rules = build_rules()
	evaluations = 0
	matched = 0
	timed_out = 0
	worst = (0.0, "")
	started = time.perf_counter()
	for _round in range(ROUNDS):
		for name, msg in messages:
			before = time.perf_counter()
			decision = apply_rules(rules, msg)
			elapsed = time.perf_counter() - before
			if elapsed > worst[0]:
				worst = (elapsed, name)
			evaluated = [trace for trace in decision.trace if not trace.skipped]
			evaluations += len(evaluated)
			matched += len(decision.matched_rules)
			timed_out += sum(result.timed_out for trace in evaluated for result in trace.conditions)
	total = time.perf_counter() - started
	runs = len(messages) * ROUNDS
	print(f"corpus:                   {folder}")
	print(f"messages:                 {len(messages)} (x{ROUNDS} rounds)")
	print(f"rules:                    {len(rules)} ({sum(rule.enabled for rule in rules)} enabled)")
	print(f"total rule evaluations:   {evaluations}")
	print(f"rules matched:            {matched}")
	print(f"regex timeouts:           {timed_out}")
	print(f"total time:               {total:.3f} s")
	print(f"evaluations/s:            {evaluations / total:,.0f}")
	print(f"messages/s:               {runs / total:,.0f}")
	print(f"worst single message:     {worst[0] * 1000:.2f} ms ({worst[1]})")
	catastrophic_backtracking()


def catastrophic_backtracking() -> None:
	"""How long intake waits on ``(a+)+$`` against 100 KB of ``a`` and a ``!``: the regex timeout."""
	message = parse_message(b"From: a@example.com\r\nSubject: x\r\n\r\n" + b"a" * 100_000 + b"!\r\n")
	evil = [Rule("Evil", [Condition("Body", "matches regex", r"(a+)+$")], [Action("Set Status", "Open")])]
	started = time.perf_counter()
	decision = apply_rules(evil, message)
	elapsed = time.perf_counter() - started
	result = decision.trace[0].conditions[0]
	print(
		f"(a+)+$ on 100 KB:         {elapsed * 1000:.0f} ms, timed out: {result.timed_out}"
		f" (limit {DEFAULT_TIMEOUT * 1000:.0f} ms)"
	)


if __name__ == "__main__":
	main()
