"""Fuzz campaign: mutated corpus messages through the whole engine, time-boxed.

Run from the repository root::

    python benchmarks/fuzz.py --seconds 300            # atheris (coverage-guided) when installed
    python benchmarks/fuzz.py --engine random --out findings/

Every input goes through ``parse_message`` and, when it parses, through the loop detector, the threading
functions and a set of processing rules; the result is checked against the engine's documented promises
(see :func:`message_problems`). A finding is an exception other than ``MessageParseError`` (or one that
``parse_message`` only wrapped: an internal error), a broken promise, a hang (``--timeout``) or running out
of memory. Each distinct finding (exception type and location) is written as a file into ``--out``; the
exit code is 1 when there was any. The corpus folder comes from ``MH_CORPUS_DIR`` (default
``<repo>/../shared/corpus``); the project's own ``fixtures/`` are seeds too.

``--engine atheris`` (``pip install atheris``) runs libFuzzer with coverage of the engine, the stdlib
``email`` package and html2text, mutating with libFuzzer's mutators and the structure-aware ones below;
``--engine random`` applies the structure-aware mutators only. Both run in a child process, so that a hang
or a crash of the interpreter is recorded and the campaign goes on.

The mutators, the promises and :func:`hang_guard` are also used by ``tests/test_fuzz.py`` and
``tests/test_hostile.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import hashlib
import html.parser
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
	sys.path.insert(0, str(REPO_ROOT))

from machhelpdesk.engine.loops import KINDS, bounced_message_ids, classify_automation  # noqa: E402
from machhelpdesk.engine.message import (  # noqa: E402
	MAX_FILENAME_BYTES,
	MAX_SUBJECT,
	MessageParseError,
	ParsedMessage,
	parse_message,
)
from machhelpdesk.engine.rules import Action, Condition, Rule, apply_rules  # noqa: E402
from machhelpdesk.engine.threads import (  # noqa: E402
	choose_thread,
	find_ticket_numbers,
	strip_reply_prefixes,
	tag_subject,
	thread_message_ids,
)

ATTACHMENT_LIMIT = 64 * 1024  # max_attachment_size given to parse_message, so "oversized" is exercised
PREFIXES = ("MP", "HD.1", "a+b")  # ticket prefixes, two of them with regex metacharacters
POSTFIXES = ("EU",)

# --- mutators ---------------------------------------------------------------------------------------------

Draw = Callable[[int, int], int]
"""draw(lo, hi) returns an integer in [lo, hi]: random.Random.randint, or a hypothesis draw."""

SPECIAL_BYTES = b"\x00\xff\x80\xc3\n\r\t :;\"'=?<>()[]-\\/@,%*_"
INJECTIONS = (
	b"\x00",
	b"\x00" * 17,
	b"\xff\xfe",
	b"\xc3",  # a UTF-8 lead byte without its continuation
	b"\xed\xa0\x80",  # an encoded surrogate
	b"\xf4\x90\x80\x80",  # beyond U+10FFFF
	b"\xe2\x80\xae",  # right-to-left override
	b"\r",
	b"\r\n\r\n",
	b"\n\n",
	b"\n ",
	b"=?",
	b"?=",
	b"=?utf-8?b?",
	b"=?x-unknown?q?=FF?=",
	b"--",
	b"\\",
	b'"',
	b"(((",
	b"<",
	b"<script>alert(1)</script>",
	b"<img src=x onerror=alert(1)>",
	b"Content-Type: multipart/mixed; boundary=x\n\n--x\n",
	b"Content-Type: message/rfc822\n\n",
	b"Content-Transfer-Encoding: base64\n",
	b"Content-Disposition: attachment; filename*0*=utf-8''..%2F..%2F; filename*1=etc%2Fpasswd\n",
	b"begin 644 x.bin\n",
)
CHARSETS = (
	b"utf-8",
	b"us-ascii",
	b"iso-8859-1",
	b"windows-1252",
	b"iso-2022-jp",
	b"shift_jis",
	b"gb2312",
	b"utf-16",
	b"utf-16-be",
	b"utf-32",
	b"utf-7",
	b"x-unknown",
	b"unknown-8bit",
	b"",
	b"utf-8*en",
	b'"utf-8"',
	b"idna",
	b"punycode",
	b"unicode-escape",
	b"rot13",
	b"base64",
	b"hex",
	b"zlib",
	b"bz2",
	b"uu",
	b"undefined",
	b"mbcs",
	b"cp65001",
	b"\xff\xfe",
	b"a" * 300,
)
TRANSFER_ENCODINGS = (
	b"base64",
	b"quoted-printable",
	b"7bit",
	b"8bit",
	b"binary",
	b"x-uuencode",
	b"base64;",
	b"BASE64",
	b"gzip",
	b"",
	b"quoted-printable base64",
)
CONTENT_TYPES = (
	b"text/plain",
	b"text/html",
	b"multipart/mixed",
	b"multipart/alternative",
	b"multipart/related",
	b"multipart/report; report-type=delivery-status",
	b"message/rfc822",
	b"message/delivery-status",
	b"message/global",
	b"message/partial",
	b"text/rfc822-headers",
	b"application/octet-stream",
	b"application/ms-tnef",
	b"text/calendar",
	b"image/png",
	b"multipart/",
	b"/",
	b"text",
)
HEADER_NAMES = (
	b"From",
	b"To",
	b"Cc",
	b"Reply-To",
	b"Subject",
	b"Message-ID",
	b"In-Reply-To",
	b"References",
	b"Date",
	b"Content-Type",
	b"Content-Disposition",
	b"Content-Transfer-Encoding",
	b"Auto-Submitted",
	b"Precedence",
	b"Return-Path",
	b"List-Id",
	b"X-Auto-Response-Suppress",
)

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BOUNDARY_PARAM = re.compile(rb"""boundary\s*=\s*"?([^";\s]{1,200})"?""", re.IGNORECASE)
# a charset parameter, the charset of an encoded word, or the label of an RFC 2231 value (name*=utf-8'')
_CHARSET_PARAM = re.compile(
	rb"""charset\s*=\s*"?([^";\s]{0,100})"?|=\?([^?\s]{1,64})\?|\*=\s*"?([^'";\s]{0,64})''""", re.IGNORECASE
)
_ENCODING_VALUE = re.compile(rb"^Content-Transfer-Encoding:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
_TYPE_VALUE = re.compile(rb"^Content-Type:[ \t]*([^;\r\n]*)", re.IGNORECASE | re.MULTILINE)


def _pick(draw: Draw, items: Sequence):
	"""Return one of `items`."""
	return items[draw(0, len(items) - 1)]


def _position(draw: Draw, data: bytes) -> int:
	"""Return a position in `data` (0 .. len)."""
	return draw(0, len(data))


def _replace_match(data: bytes, draw: Draw, pattern: re.Pattern[bytes], choices: Sequence[bytes]) -> bytes:
	"""Replace the first group of one match of `pattern` with one of `choices`."""
	matches = list(pattern.finditer(data, 0, 1_000_000))
	if not matches:
		return data
	match = _pick(draw, matches)
	group = next(index for index in range(1, (pattern.groups or 0) + 1) if match.group(index) is not None)
	return data[: match.start(group)] + _pick(draw, choices) + data[match.end(group) :]


def flip_bit(data: bytes, draw: Draw) -> bytes:
	"""Flip one bit."""
	if not data:
		return data
	index = draw(0, len(data) - 1)
	return data[:index] + bytes([data[index] ^ (1 << draw(0, 7))]) + data[index + 1 :]


def set_special_byte(data: bytes, draw: Draw) -> bytes:
	"""Overwrite one byte with a byte that means something to a MIME parser (or none at all)."""
	if not data:
		return data
	index = draw(0, len(data) - 1)
	return data[:index] + bytes([_pick(draw, SPECIAL_BYTES)]) + data[index + 1 :]


def inject(data: bytes, draw: Draw) -> bytes:
	"""Insert NUL bytes, invalid UTF-8, line breaks, encoded-word or MIME fragments somewhere."""
	index = _position(draw, data)
	return data[:index] + _pick(draw, INJECTIONS) + data[index:]


def truncate(data: bytes, draw: Draw) -> bytes:
	"""Cut the message short."""
	return data[: _position(draw, data)]


def delete_chunk(data: bytes, draw: Draw) -> bytes:
	"""Remove a range of bytes."""
	start = _position(draw, data)
	return data[:start] + data[start + draw(1, 512) :]


def duplicate_chunk(data: bytes, draw: Draw) -> bytes:
	"""Copy a range of bytes, possibly many times over, somewhere else."""
	start = _position(draw, data)
	chunk = data[start : start + draw(1, 256)]
	index = _position(draw, data)
	return data[:index] + chunk * draw(1, 64) + data[index:]


def duplicate_header(data: bytes, draw: Draw) -> bytes:
	"""Repeat one header field (with its continuation lines) up to 200 times."""
	end = _HEADER_END.search(data)
	header_end = end.start() if end else len(data)
	starts = [0] + [match.end() for match in re.finditer(rb"\n(?=[^ \t\r\n])", data[:header_end])]
	index = draw(0, len(starts) - 1)
	stop = starts[index + 1] if index + 1 < len(starts) else header_end
	field = data[starts[index] : stop]
	if not field.endswith(b"\n"):
		field += b"\n"
	return data[: starts[index]] + field * draw(2, 200) + data[starts[index] :]


def add_header(data: bytes, draw: Draw) -> bytes:
	"""Prepend a header field with a hostile value: injections, encoded words, comments, group syntax."""
	values = (
		b"=?utf-8?b?" + bytes([draw(33, 126)]) * draw(0, 9) + b"?=",
		b"=?x?q?=FF=00?= =?utf-8?q?=E2=82?= =?utf-8?q?=AC?=",
		b"(" * draw(1, 300) + b"a@b.c",
		b"undisclosed-recipients:;",
		b"a@b.c, , ,, <>, <@>, @, <a@b.c",
		b"<" + b"x" * draw(0, 2000) + b"@y>",
		b"no; (comment) auto-replied",
		b'"\\"quoted\\" \\\\" <q@example.org>',
		_pick(draw, INJECTIONS),
	)
	name = _pick(draw, HEADER_NAMES)
	return name + b": " + _pick(draw, values) + b"\n" + data


def damage_boundary(data: bytes, draw: Draw) -> bytes:
	"""Break multipart structure: drop or alter a boundary line, the closing delimiter or the parameter."""
	matches = list(_BOUNDARY_PARAM.finditer(data, 0, 1_000_000))
	if not matches:
		return data
	match = _pick(draw, matches)
	boundary = match.group(1)
	action = draw(0, 5)
	if action == 0:  # the closing delimiter never comes
		return data.replace(b"--" + boundary + b"--", b"")
	if action == 1:  # the parameter names another boundary
		return data[: match.start(1)] + boundary[::-1] + b"x" + data[match.end(1) :]
	if action == 2:  # the parameter is gone
		return data[: match.start()] + data[match.end() :]
	if action == 3:  # one delimiter line is damaged
		lines = [found.start() for found in re.finditer(re.escape(b"--" + boundary), data)]
		if not lines:
			return data
		index = _pick(draw, lines) + 2 + draw(0, len(boundary))
		return data[:index] + _pick(draw, (b" ", b"-", b"\n", b"\x00", b"")) + data[index + 1 :]
	if action == 4:  # an empty or enormous boundary
		return data[: match.start(1)] + _pick(draw, (b"", b'""', b"b" * 500)) + data[match.end(1) :]
	# a delimiter line repeated: empty parts
	return data.replace(b"--" + boundary + b"\n", (b"--" + boundary + b"\n") * draw(2, 50), 1)


def swap_charset(data: bytes, draw: Draw) -> bytes:
	"""Replace a charset label (parameter, encoded word, RFC 2231 value) with another, unknown or dangerous one."""
	return _replace_match(data, draw, _CHARSET_PARAM, CHARSETS)


def swap_transfer_encoding(data: bytes, draw: Draw) -> bytes:
	"""Replace a Content-Transfer-Encoding value."""
	return _replace_match(data, draw, _ENCODING_VALUE, TRANSFER_ENCODINGS)


def swap_content_type(data: bytes, draw: Draw) -> bytes:
	"""Replace a content type, e.g. turn a text part into message/rfc822 or a multipart."""
	return _replace_match(data, draw, _TYPE_VALUE, CONTENT_TYPES)


def change_line_endings(data: bytes, draw: Draw) -> bytes:
	"""Convert line endings to CRLF, LF or bare CR, or mix them."""
	lf = data.replace(b"\r\n", b"\n")
	choice = draw(0, 3)
	if choice == 0:
		return lf
	if choice == 1:
		return lf.replace(b"\n", b"\r\n")
	if choice == 2:
		return lf.replace(b"\n", b"\r")
	half = len(lf) // 2
	return lf[:half].replace(b"\n", b"\r\n") + lf[half:]


def fold_header(data: bytes, draw: Draw) -> bytes:
	"""Insert a folding line break (or a bare one) inside the header block."""
	end = _HEADER_END.search(data)
	index = draw(0, end.start() if end else len(data))
	return data[:index] + _pick(draw, (b"\n ", b"\r\n\t", b"\n", b"\n\n")) + data[index:]


MUTATORS: tuple[Callable[[bytes, Draw], bytes], ...] = (
	flip_bit,
	set_special_byte,
	inject,
	truncate,
	delete_chunk,
	duplicate_chunk,
	duplicate_header,
	add_header,
	damage_boundary,
	swap_charset,
	swap_transfer_encoding,
	swap_content_type,
	change_line_endings,
	fold_header,
)


def mutate(data: bytes, draw: Draw, others: Sequence[bytes] = (), max_len: int = 1 << 20) -> bytes:
	"""Apply one to four mutators to `data` (sometimes splicing in the tail of one of `others`)."""
	if others and draw(0, 9) == 0:
		other = _pick(draw, others)
		data = data[: _position(draw, data)] + other[_position(draw, other) :]
	for _ in range(draw(1, 4)):
		data = _pick(draw, MUTATORS)(data, draw)[:max_len]
	return data


# --- promises ---------------------------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_ACTIVE_TAGS = frozenset(
	{
		"script", "iframe", "frame", "frameset", "object", "embed", "applet", "form", "input", "button",
		"textarea", "select", "meta", "link", "base", "style", "svg", "math", "template", "audio", "video",
		"source", "track", "portal", "noscript", "xml", "import",
	}
)  # fmt: skip
_URL_ATTRIBUTES = frozenset(
	{"href", "src", "action", "formaction", "xlink:href", "background", "data", "poster"}
)
_SAFE_SRC = re.compile(r"(cid:|data:image/(png|gif|jpe?g|webp|bmp);base64,)", re.IGNORECASE)
_SAFE_HREF = re.compile(r"(https?:|mailto:|tel:|#)", re.IGNORECASE)
_DANGEROUS_STYLE = re.compile(r"url\s*\(|expression\s*\(|@import|behavior\s*:|-moz-binding|javascript:", re.I)
_INVISIBLE = re.compile(r"[\x00-\x20\x7f]+")


_SWALLOWED = re.compile(r"skipped after (\w+)|could not be (?:sanitized|converted to text) \((\w+)\)")


class _TagCollector(html.parser.HTMLParser):
	"""Collect (tag, attributes) of every start tag, the way a browser would tokenize serialized HTML."""

	def __init__(self) -> None:
		super().__init__(convert_charrefs=True)
		self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

	def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
		self.tags.append((tag, attrs))


def html_problems(safe_html: str) -> list[str]:
	"""Return what makes sanitized HTML unsafe to show: active elements, event handlers, script URLs,
	remote loads, CSS that can fetch or run code. Empty when it is safe."""
	collector = _TagCollector()
	collector.feed(safe_html)
	collector.close()
	problems = []
	for tag, attributes in collector.tags:
		if tag in _ACTIVE_TAGS:
			problems.append(f"html: active element <{tag}>")
		for name, value in attributes:
			value = _INVISIBLE.sub("", value or "")
			if name.startswith("on"):
				problems.append(f"html: event handler {name} on <{tag}>")
			elif name == "src" and not _SAFE_SRC.match(value):
				problems.append(f"html: <{tag}> loads {value[:60]!r}")
			elif name in _URL_ATTRIBUTES and name != "src" and not _SAFE_HREF.match(value):
				problems.append(f"html: {name}={value[:60]!r} on <{tag}>")
			elif name == "style" and _DANGEROUS_STYLE.search(value):
				problems.append(f"html: style {value[:60]!r} on <{tag}>")
			elif name in ("srcset", "http-equiv", "formaction", "ping"):
				problems.append(f"html: {name} on <{tag}>")
	return problems


def filename_problems(name: str) -> list[str]:
	"""Return what makes an attachment file name unsafe to store. Empty when it is safe."""
	problems = []
	if not name or name.strip(" .") == "":
		problems.append("filename: empty or dots only")
	if "/" in name or "\\" in name:
		problems.append(f"filename: path separator in {name[:60]!r}")
	if name.startswith("."):
		problems.append(f"filename: leading dot in {name[:60]!r}")
	if len(name.encode("utf-8", "surrogatepass")) > min(MAX_FILENAME_BYTES, 255):
		problems.append("filename: longer than the limit")
	if any(ord(char) < 32 or ord(char) == 127 for char in name) or _SURROGATE.search(name):
		problems.append(f"filename: control character or undecoded byte in {name[:60]!r}")
	return problems


def _text_problems(label: str, text: object) -> list[str]:
	"""Return problems of an output string: not a str, NUL characters, undecoded bytes."""
	if not isinstance(text, str):
		return [f"{label}: not a str but {type(text).__name__}"]
	if "\x00" in text:
		return [f"{label}: NUL character"]
	if _SURROGATE.search(text):
		return [f"{label}: undecoded byte (lone surrogate)"]
	return []


def message_problems(
	msg: ParsedMessage, raw: bytes, attachment_limit: int | None = ATTACHMENT_LIMIT
) -> list[str]:
	"""Return every broken promise of a ParsedMessage (see message.py, loops.py and threads.py).

	Each problem starts with a short category ("html: ...", "filename: ...") that names it in a report.
	"""
	problems: list[str] = []
	if msg.size != len(raw) or msg.content_hash != hashlib.sha256(raw).hexdigest():
		problems.append("size: size or content hash does not match the input")
	if len(msg.subject) > MAX_SUBJECT or "\n" in msg.subject or "\r" in msg.subject:
		problems.append("subject: longer than a line, or more than one line")
	for label, text in (("subject", msg.subject), ("text", msg.text), ("html", msg.html or "")):
		problems += _text_problems(label, text)
	for name, value in msg.headers:
		problems += _text_problems("header name", name) + _text_problems("header value", value)
	if msg.html:
		problems += html_problems(msg.html)
	if "/" not in msg.content_type or msg.content_type != msg.content_type.lower():
		problems.append(f"content type: {msg.content_type[:60]!r}")
	if msg.date is not None and msg.date.tzinfo is None:
		problems.append("date: without a time zone")
	for address in [*([msg.sender] if msg.sender else []), *msg.to, *msg.cc, *msg.reply_to]:
		if "@" not in address.email or address.email != address.email.lower():
			problems.append(f"address: {address.email[:60]!r}")
		problems += _text_problems("address name", address.name) + _text_problems("address", address.email)
	ids = [msg.message_id or "<x>", *msg.in_reply_to, *msg.references, *msg.enclosed_message_ids]
	for message_id in ids:
		if not (message_id.startswith("<") and message_id.endswith(">")) or " " in message_id:
			problems.append(f"message id: not canonical {message_id[:60]!r}")
	for defect in msg.defects:  # an internal error the parser caught to save the rest of the message
		swallowed = _SWALLOWED.search(defect)
		if swallowed:
			problems.append(f"swallowed {swallowed.group(1) or swallowed.group(2)}: {defect[:100]}")
	for attachment in msg.attachments:
		problems += filename_problems(attachment.filename)
		expected = attachment_limit is not None and attachment.size > attachment_limit
		if attachment.oversized is not expected:
			problems.append("attachment: oversized flag does not match size and limit")
		if len(attachment.content) != (0 if attachment.oversized else attachment.size):
			problems.append("attachment: content length does not match size")
	return problems


class BrokenPromise(AssertionError):
	"""The engine returned something it promises never to return; `category` names the promise."""

	def __init__(self, problems: list[str]) -> None:
		super().__init__("; ".join(problems[:5]))
		self.category = problems[0].split(":", 1)[0]


RULES = [
	Rule("to", [Condition("To", "contains", "support@")], [Action("Forward to Department", "Support")]),
	Rule(
		"subject regex",
		[
			Condition("Subject", "matches regex", r"(?i)\b(invoice|order)\s*#?\d+"),
			Condition("Cc", "equals", ""),
		],
		[Action("Set Status", "Open")],
		match="any",
	),
	Rule(
		"body", [Condition("Body", "does not match regex", r"^(\s*>.*\n)*\s*$")], [Action("Assign To", "a")]
	),
	Rule("header", [Condition("Header", "starts with", "auto", header_name="Auto-Submitted")], []),
	Rule("files", [Condition("Has Attachments", "equals", "yes")], [Action("Override Priority", "Low")]),
	Rule(
		"from", [Condition("From", "ends with", ".org"), Condition("Reply-To", "does not contain", "@")], []
	),
	Rule("broken", [Condition("Subject", "matches regex", "(unclosed")], [Action("Delete Message")]),
]


def check_engine(raw: bytes) -> ParsedMessage | None:
	"""Run `raw` through the whole engine and check every promise.

	Returns the ParsedMessage, or None when parse_message rejected the input as not a message. Raises the
	internal exception when parse_message only wrapped one, BrokenPromise when a promise is broken, and
	whatever escaped from the functions after parsing.
	"""
	try:
		msg = parse_message(raw, max_attachment_size=ATTACHMENT_LIMIT)
	except MessageParseError as error:
		if error.__cause__ is not None:
			raise error.__cause__  # noqa: B904 - the internal error is the finding, not the wrapper
		return None
	problems = message_problems(msg, raw)
	automation = classify_automation(msg)
	if automation.kind not in KINDS or automation.is_automated is not bool(automation.reason):
		problems.append(f"loops: inconsistent classification {automation}")
	for message_id in bounced_message_ids(msg):
		if not message_id.startswith("<") or message_id == msg.message_id:
			problems.append(f"loops: bounced id {message_id[:60]!r}")
	thread_ids = thread_message_ids(msg)
	if len(set(thread_ids)) != len(thread_ids):
		problems.append("threads: repeated Message-ID")
	if thread_ids:
		candidate = choose_thread(
			msg, by_message_id={thread_ids[-1]: "MP-000001"}, subject_tickets={}, prefixes=PREFIXES
		)
		if candidate is None or candidate.via != "message-id":
			problems.append("threads: a known Message-ID did not thread")
	names = find_ticket_numbers(msg.subject, PREFIXES, POSTFIXES)
	if msg.sender is not None and names and not thread_ids:
		allowed = {names[0]: {msg.sender.email.upper()}}
		candidate = choose_thread(
			msg, by_message_id={}, subject_tickets=allowed, prefixes=PREFIXES, postfixes=POSTFIXES
		)
		if candidate is None or candidate.ticket != names[0]:
			problems.append("threads: a ticket number from an allowed sender did not thread")
	tagged = tag_subject(msg.subject, "MP-000123")
	if "MP-000123" not in find_ticket_numbers(tagged, ["MP"]) or tag_subject(tagged, "MP-000123") != tagged:
		problems.append("threads: tag_subject is not found again or not idempotent")
	strip_reply_prefixes(msg.subject)
	decision = apply_rules(RULES, msg)
	if decision.matched_rules != [trace.rule for trace in decision.trace if trace.matched]:
		problems.append("rules: matched rules differ from the trace")
	for trace in decision.trace:
		for condition in trace.conditions:
			if condition.detail.startswith("error while evaluating") and trace.rule != "broken":
				problems.append(f"rules: {condition.detail[:80]}")
	if problems:
		raise BrokenPromise(problems)
	return msg


# --- hangs and findings -----------------------------------------------------------------------------------


class Hang(BaseException):
	"""Raised by hang_guard when an example ran longer than its time limit. A BaseException, like
	KeyboardInterrupt, so that the engine's own `except Exception` (which saves the rest of a message
	from one bad part) does not swallow it."""


@contextlib.contextmanager
def hang_guard(seconds: float) -> Iterator[None]:
	"""Raise Hang in the main thread when the block runs longer than `seconds` (a guard against hangs, not
	a timing assertion: give it ten times what the work should take). Pure-Python loops are interrupted;
	a call stuck in C code is interrupted when it returns. Does nothing outside the main thread."""
	if not hasattr(signal, "setitimer") or not _in_main_thread():
		yield
		return

	def expire(_signum: int, frame: object) -> None:
		raise Hang(f"still running after {seconds:g} s")

	previous = signal.signal(signal.SIGALRM, expire)
	signal.setitimer(signal.ITIMER_REAL, seconds)
	try:
		yield
	finally:
		signal.setitimer(signal.ITIMER_REAL, 0)
		signal.signal(signal.SIGALRM, previous)


def _in_main_thread() -> bool:
	import threading

	return threading.current_thread() is threading.main_thread()


def finding_signature(error: BaseException) -> str:
	"""Return "Type at file:line (function)" for the innermost engine frame of `error`, plus the innermost
	frame outside the engine when the exception was raised there (a stdlib helper, a C extension)."""
	if isinstance(error, BrokenPromise):
		return f"BrokenPromise: {error.category}"
	frames = [frame for frame in traceback.extract_tb(error.__traceback__) if frame.name != "expire"]
	engine = [frame for frame in frames if "machhelpdesk" in frame.filename]
	where = engine[-1] if engine else (frames[-1] if frames else None)
	signature = type(error).__name__
	if where is not None:
		signature += f" at {_short(where.filename)}:{where.lineno} ({where.name})"
	if frames and where is not frames[-1]:
		signature += f" via {_short(frames[-1].filename)}:{frames[-1].lineno} ({frames[-1].name})"
	return signature


def _short(filename: str) -> str:
	"""Return a file name relative to the package or the library it belongs to."""
	parts = Path(filename).parts
	for anchor in ("machhelpdesk", "site-packages", "benchmarks"):
		if anchor in parts:
			return "/".join(parts[parts.index(anchor) + (anchor == "site-packages") :])
	return "/".join(parts[-2:])


class FindingLog:
	"""Distinct findings of one child process, and the executions count, kept in a JSON stats file."""

	def __init__(self, out: Path, stats_file: Path) -> None:
		self.out = out
		self.stats_file = stats_file
		self.executions = 0
		self.findings: dict[str, dict] = {}
		self.last_flush = time.monotonic()

	def record(self, error: BaseException, data: bytes) -> None:
		"""Count a finding; write the input and its traceback the first time its signature is seen."""
		signature = finding_signature(error)
		entry = self.findings.get(signature)
		if entry is None:
			digest = hashlib.sha1(data).hexdigest()[:12]  # noqa: S324 - a file name, not security
			kind = "promise" if isinstance(error, BrokenPromise) else type(error).__name__.lower()
			path = self.out / f"{kind}-{digest}.eml"
			path.write_bytes(data)
			details = "".join(traceback.format_exception(error))
			path.with_suffix(".txt").write_text(f"{signature}\n\n{details}", encoding="utf-8")
			entry = self.findings[signature] = {"count": 1, "file": str(path)}
			self.flush()
		else:
			entry["count"] += 1

	def tick(self) -> None:
		"""Count one execution; write the stats file about once a second."""
		self.executions += 1
		if self.executions % 32 == 0 and time.monotonic() - self.last_flush > 1.0:
			self.flush()

	def flush(self) -> None:
		"""Write the stats file atomically."""
		self.last_flush = time.monotonic()
		temporary = self.stats_file.with_suffix(".tmp")
		temporary.write_text(json.dumps({"executions": self.executions, "findings": self.findings}))
		os.replace(temporary, self.stats_file)


# --- seeds ------------------------------------------------------------------------------------------------


def corpus_dir() -> Path:
	"""Return the corpus folder from MH_CORPUS_DIR, or the default next to the repository."""
	return Path(os.environ.get("MH_CORPUS_DIR") or REPO_ROOT.parent / "shared" / "corpus")


def load_seeds(max_len: int) -> tuple[list[bytes], str]:
	"""Return the seed messages (corpus and fixtures, cut to `max_len` bytes) and a line saying what they are."""
	corpus = sorted(corpus_dir().glob("*.eml")) if corpus_dir().is_dir() else []
	fixtures = sorted((REPO_ROOT / "fixtures").glob("*.eml"))
	seeds = [path.read_bytes()[:max_len] for path in [*corpus, *fixtures]]
	note = f"{len(corpus)} corpus messages ({corpus_dir()}) and {len(fixtures)} fixtures"
	if not corpus:
		note += ": corpus missing, set MH_CORPUS_DIR"
	return seeds, note


# --- the child process: one engine ------------------------------------------------------------------------


def run_random_child(args: argparse.Namespace) -> None:
	"""Mutation loop without coverage, until --seconds have passed."""
	seeds, _note = load_seeds(args.max_len)
	log = FindingLog(args.out, args.work / "stats.json")
	current = args.work / "current.eml"
	rng = random.Random(args.seed)
	recent: list[bytes] = []
	while time.time() < args.deadline:
		base = rng.choice(recent) if recent and rng.random() < 0.3 else rng.choice(seeds)
		data = mutate(base, rng.randint, seeds, args.max_len)
		current.write_bytes(data)
		# a call stuck in C code is not interrupted by hang_guard: end the process, the parent records it
		faulthandler.dump_traceback_later(args.timeout * 3, exit=True)
		try:
			with hang_guard(args.timeout):
				check_engine(data)
		except (Exception, Hang) as error:
			log.record(error, data)
		finally:
			faulthandler.cancel_dump_traceback_later()
		recent = [*recent[-63:], data]
		log.tick()
	log.flush()


def run_atheris_child(args: argparse.Namespace) -> None:
	"""libFuzzer via atheris on a working corpus folder that the parent filled with the seeds."""
	import atheris  # the bootstrap (ATHERIS_BOOTSTRAP) imported the engine under instrumentation

	seeds, _note = load_seeds(args.max_len)
	log = FindingLog(args.out, args.work / "stats.json")

	def test_one_input(data: bytes) -> None:
		try:
			check_engine(data)
		except (Exception, Hang) as error:
			log.record(error, data)
		log.tick()

	def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
		rng = random.Random(seed)
		if rng.random() < 0.5:
			return atheris.Mutate(data, max_size)
		return mutate(data, rng.randint, seeds, max_size)

	libfuzzer_args = [
		"fuzz",
		str(args.work / "corpus"),
		f"-max_total_time={max(1, int(args.deadline - time.time()))}",
		f"-timeout={max(1, int(args.timeout))}",
		f"-max_len={args.max_len}",
		f"-artifact_prefix={args.out}{os.sep}",
		"-rss_limit_mb=4096",
		f"-seed={args.seed}",
		"-print_final_stats=1",
	]
	atheris.Setup(libfuzzer_args, test_one_input, custom_mutator=custom_mutator)
	atheris.Fuzz()


# --- the parent: time box, restarts, report ---------------------------------------------------------------

# How the atheris child starts: coverage is collected for the modules imported inside instrument_imports
# (the engine, the stdlib email package, html2text), so they are imported there, before anything else.
ATHERIS_BOOTSTRAP = """
import sys
import atheris
sys.path.insert(0, sys.argv[1])
with atheris.instrument_imports(include=["machhelpdesk", "email", "html2text"]):
    import benchmarks.fuzz as fuzz
sys.exit(fuzz.main(sys.argv[2:]))
"""


def prepare_work(work: Path, max_len: int) -> None:
	"""Fill the working corpus folder (libFuzzer adds to it) with the seeds, named by content hash."""
	(work / "corpus").mkdir(parents=True, exist_ok=True)
	seeds, _note = load_seeds(max_len)
	for seed in seeds:
		name = hashlib.sha1(seed).hexdigest()  # noqa: S324 - libFuzzer's own naming scheme
		(work / "corpus" / name).write_bytes(seed)


def run_campaign(args: argparse.Namespace) -> int:
	"""Run children until --seconds are used up; print the figures; return the exit code."""
	args.out.mkdir(parents=True, exist_ok=True)
	work = Path(tempfile.mkdtemp(prefix="mh-fuzz-work-"))
	prepare_work(work, args.max_len)
	_seeds, note = load_seeds(args.max_len)
	print(f"engine {args.engine}, {args.seconds:g} s, seeds: {note}", flush=True)
	executions = 0
	findings: dict[str, dict] = {}
	crashes: list[str] = []
	started = time.monotonic()
	run = 0
	while (remaining := args.seconds - (time.monotonic() - started)) >= 1:
		run += 1
		stats_file = work / "stats.json"
		stats_file.unlink(missing_ok=True)
		before = set(args.out.iterdir())
		if args.engine == "atheris":
			start = [sys.executable, "-c", ATHERIS_BOOTSTRAP, str(REPO_ROOT)]
		else:
			start = [sys.executable, str(Path(__file__).resolve())]
		command = [
			*start,
			"--child",
			f"--engine={args.engine}",
			f"--deadline={time.time() + remaining:.3f}",
			f"--out={args.out}",
			f"--work={work}",
			f"--timeout={args.timeout}",
			f"--max-len={args.max_len}",
			f"--seed={args.seed + run}",
		]
		log_file = work / f"child-{run}.log"
		with log_file.open("wb") as log:
			child = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
		stats = (
			json.loads(stats_file.read_text()) if stats_file.exists() else {"executions": 0, "findings": {}}
		)
		text = log_file.read_text(errors="replace")
		done = re.search(r"Done (\d+) runs in", text)
		executions += max(stats["executions"], int(done.group(1)) if done else 0)
		for signature, entry in stats["findings"].items():
			known = findings.setdefault(signature, {"count": 0, "file": entry["file"]})
			known["count"] += entry["count"]
		if child.returncode != 0:
			crashes.append(record_child_crash(args, work, before, text, child.returncode))
		if run > 50:
			print("too many restarts, stopping", flush=True)
			break
	elapsed = time.monotonic() - started
	for crash in crashes:
		findings.setdefault(crash, {"count": 0, "file": ""})["count"] += 1
	print(f"executions {executions} in {elapsed:.1f} s: {executions / elapsed:.1f} execs/s")
	print(f"distinct findings {len(findings)}, written to {args.out}")
	for signature, entry in sorted(findings.items()):
		print(f"  {signature}: {entry['count']} time(s), {entry['file']}")
	return 1 if findings else 0


def record_child_crash(args: argparse.Namespace, work: Path, before: set[Path], text: str, code: int) -> str:
	"""Name what ended a child early (a libFuzzer timeout/OOM artifact, or a faulthandler dump after a
	hang in C code), keep its input in the findings folder, and drop it from the working corpus."""
	artifacts = sorted(set(args.out.iterdir()) - before)
	artifacts = [path for path in artifacts if path.name.startswith(("timeout-", "oom-", "crash-", "leak-"))]
	current = work / "current.eml"
	if not artifacts and current.exists():
		target = args.out / f"hang-{hashlib.sha1(current.read_bytes()).hexdigest()[:12]}.eml"  # noqa: S324
		current.replace(target)
		artifacts = [target]
	location = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)
	where = f" at {_short(location[-1][0])}:{location[-1][1]} ({location[-1][2]})" if location else ""
	for artifact in artifacts:
		(work / "corpus" / artifact.name.split("-", 1)[-1]).unlink(missing_ok=True)
		artifact.with_suffix(".log").write_text(text[-20000:], encoding="utf-8")
	kind = artifacts[0].name.split("-", 1)[0] if artifacts else f"exit {code}"
	return f"{kind}{where}" + (f": {artifacts[0]}" if artifacts else "")


def main(argv: Sequence[str] | None = None) -> int:
	parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
	parser.add_argument("--seconds", type=float, default=60.0, help="length of the campaign (default 60)")
	parser.add_argument(
		"--engine", choices=("atheris", "random"), default=None, help="default: atheris if importable"
	)
	parser.add_argument("--out", type=Path, default=None, help="findings folder (default: a new temp folder)")
	parser.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take (default 10)")
	parser.add_argument(
		"--max-len", type=int, default=64 * 1024, help="longest input in bytes (default 64 KiB)"
	)
	parser.add_argument("--seed", type=int, default=1, help="random seed")
	parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
	parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
	parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
	args = parser.parse_args(argv)
	if args.engine is None:
		try:
			import atheris  # noqa: F401
		except ImportError:
			args.engine = "random"
		else:
			args.engine = "atheris"
	if args.child:
		(run_atheris_child if args.engine == "atheris" else run_random_child)(args)
		return 0
	args.out = (args.out or Path(tempfile.mkdtemp(prefix="mh-fuzz-findings-"))).resolve()
	return run_campaign(args)


if __name__ == "__main__":
	sys.exit(main())
