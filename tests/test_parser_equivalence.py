"""The fast MIME splitter against the stdlib parser: the same tree and the same ParsedMessage, always.

``parse_message`` builds the MIME tree with ``_split_tree`` (bodies cut at boundary lines found with
bytes.find) and hands whatever that does not take to the stdlib feed parser (``_parse_tree_stdlib``).
``_parse_message_stdlib`` is parse_message with the stdlib tree always: the behaviour before the splitter,
kept as the reference. Every message here goes through both, and

- the ParsedMessage must be equal field for field (or both calls raise the same MessageParseError), with
  and without an attachment size limit;
- when the splitter takes the message, its tree must equal the stdlib's: message classes, header fields
  as stored, unixfrom, preamble, epilogue, default type, charset, defects (class and arguments) and every
  payload string, part by part.

The messages: the real-world corpus, the fixtures, the hostile cases of ``benchmarks/hostile.py`` (made
smaller where the stdlib would take seconds), hand-made edge cases of the splitter, mutated corpus messages
(the mutators of ``benchmarks/fuzz.py``) and a "line soup" of MIME-significant lines with mixed line
endings, both driven by hypothesis. ``MH_FUZZ_PROFILE=mh-fuzz-long`` runs ten times the examples.
"""

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import hostile
from benchmarks.fuzz import MUTATORS, hang_guard, mutate
from machhelpdesk.engine.message import (
	_FAST_BOUNDARY_SCAN,
	_FAST_MAX_DEPTH,
	MessageParseError,
	_parse_message_stdlib,
	_parse_tree_stdlib,
	_split_tree,
	parse_message,
)
from tests.test_fuzz import SEED_BYTES, draw_function, examples, seeds

MB = hostile.MB
ATTACHMENT_LIMIT = 64 * 1024
HANG_SECONDS = 120  # a guard against hangs only

# --- comparing -------------------------------------------------------------------------------------------


def tree_rows(root) -> list[tuple]:
	"""Everything the stdlib parser stores on each message of a tree, one row per message, depth first."""
	rows = []
	stack = [root]
	while stack:
		msg = stack.pop()
		payload = msg._payload
		rows.append(
			(
				type(msg),
				msg.policy,
				list(msg._headers),
				msg._unixfrom,
				msg.preamble,
				msg.epilogue,
				msg._default_type,
				msg._charset,
				[(type(defect), defect.args, getattr(defect, "line", None)) for defect in msg.defects],
				("parts", len(payload)) if isinstance(payload, list) else payload,
			)
		)
		if isinstance(payload, list):
			stack.extend(reversed(payload))
	return rows


def tree_input(raw: bytes) -> bytes:
	"""The bytes parse_message hands to the tree parser (_parse drops blank lines before the headers)."""
	return raw.lstrip(b"\r\n \t") if raw[:1] in (b"\r", b"\n", b" ", b"\t") else raw


def outcome(parse: Callable, raw: bytes, limit: int | None) -> object:
	"""The ParsedMessage, or the MessageParseError's text."""
	try:
		return parse(raw, max_attachment_size=limit)
	except MessageParseError as exc:
		return ("MessageParseError", str(exc))


def assert_equivalent(raw: bytes, limits: tuple[int | None, ...] = (None, ATTACHMENT_LIMIT)) -> bool:
	"""Assert that both paths agree on `raw`; return whether the fast splitter took it."""
	with hang_guard(HANG_SECONDS):
		data = tree_input(raw)
		fast_tree = _split_tree(data)
		if fast_tree is not None:
			assert tree_rows(fast_tree) == tree_rows(_parse_tree_stdlib(data, []))
		for limit in limits:
			assert outcome(parse_message, raw, limit) == outcome(_parse_message_stdlib, raw, limit)
	return fast_tree is not None


# --- the corpus and the fixtures --------------------------------------------------------------------------


def test_corpus_message_parses_the_same_both_ways(corpus_file: Path | None) -> None:
	if corpus_file is None:
		pytest.skip("email corpus not found (set MH_CORPUS_DIR)")
	assert_equivalent(corpus_file.read_bytes())


FIXTURES = sorted((Path(__file__).resolve().parent.parent / "fixtures").glob("*.eml"))


@pytest.mark.parametrize("path", FIXTURES, ids=[path.name for path in FIXTURES])
def test_fixture_parses_the_same_both_ways(path: Path) -> None:
	assert_equivalent(path.read_bytes())


def test_the_fast_splitter_takes_nearly_all_of_the_corpus(corpus_dir: Path) -> None:
	"""Otherwise the comparisons above would only compare the stdlib with itself. The few it leaves to the
	stdlib hold a lone CR, a misplaced "From " line or a separator line at the very end."""
	files = sorted(corpus_dir.glob("*.eml"))
	fallbacks = [path.name for path in files if _split_tree(tree_input(path.read_bytes())) is None]
	assert len(fallbacks) <= len(files) // 50, fallbacks


# --- hostile messages -------------------------------------------------------------------------------------

# benchmarks/hostile.py's cases, smaller where the stdlib parser would take seconds or gigabytes
HOSTILE: dict[str, tuple[Callable[[], bytes], tuple[int | None, ...]]] = {
	"10,000 tiny parts": (hostile.tiny_parts, (None,)),
	**{
		f"message/rfc822 {levels} deep": (lambda levels=levels: hostile.nested_messages(levels), (None,))
		for levels in (5, _FAST_MAX_DEPTH // 2 - 1, _FAST_MAX_DEPTH // 2, 100)
	},
	"2 MB attachment, 1 MB limit": (lambda: hostile.big_attachment(2 * MB), (MB,)),
	"1 MB subject": (hostile.megabyte_subject, (None,)),
	"5,000 recipients": (hostile.many_recipients, (None,)),
	"1 MB header lines": (hostile.megabyte_header_line, (None,)),
	"base64, 1 M lines, 1 MB limit": (lambda: hostile.base64_bomb(text_mb=1, junk_mb=2), (None, MB)),
	"quoted-printable blowup": (hostile.quoted_printable_blowup, (None,)),
	"gzip/zip of 4 MB zeros": (lambda: hostile.compressed_attachments(4 * MB)[0], (None,)),
	"NUL + invalid UTF-8 everywhere": (hostile.nul_and_invalid_utf8, (None, ATTACHMENT_LIMIT)),
	"XSS vectors": (hostile.xss, (None,)),
	"hostile file names": (hostile.hostile_filenames, (None,)),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_message_parses_the_same_both_ways(name: str) -> None:
	builder, limits = HOSTILE[name]
	assert_equivalent(builder(), limits)


def test_nesting_deeper_than_the_splitter_goes_is_left_to_the_stdlib() -> None:
	assert _split_tree(hostile.nested_messages(_FAST_MAX_DEPTH // 2 - 1)) is not None
	assert _split_tree(hostile.nested_messages(_FAST_MAX_DEPTH // 2)) is None


# --- hand-made edge cases of the splitter -----------------------------------------------------------------

HEAD = b"From: a@example.org\nSubject: edge\n"


def mixed(body: bytes, params: bytes = b"boundary=b", head: bytes = HEAD) -> bytes:
	"""A multipart/mixed message with `params` and `body`."""
	return head + b"Content-Type: multipart/mixed; " + params + b"\n\n" + body


TEXT = b"Content-Type: text/plain\n\nhello\n"
LOOK_ALIKES = b"".join(b"x--b--b\n" for _ in range(_FAST_BOUNDARY_SCAN + 10))

# name -> (message, whether the splitter takes it itself)
EDGE_CASES: dict[str, tuple[bytes, bool]] = {
	"well formed": (mixed(b"pre\n--b\n" + TEXT + b"--b\n" + TEXT + b"--b--\nepi\n"), True),
	"CRLF": (mixed(b"--b\n" + TEXT + b"--b--\n").replace(b"\n", b"\r\n"), True),
	"mixed LF and CRLF": (mixed(b"--b\r\n" + TEXT + b"--b--\r\n"), True),
	"a lone CR": (mixed(b"--b\n" + TEXT + b"a\rb\n--b--\n"), False),
	"blanks after the boundary": (mixed(b"--b \t\n" + TEXT + b"--b-- \n"), True),
	"no line break at the end": (mixed(b"--b\n" + TEXT + b"--b--"), True),
	"empty epilogue": (mixed(b"--b\n" + TEXT + b"--b--\n"), True),
	"no close boundary": (mixed(b"--b\n" + TEXT + b"--b\n" + TEXT), True),
	"no boundary line": (mixed(b"just text\n"), True),
	"close boundary first": (mixed(b"pre\n--b--\n" + TEXT + b"--b\n"), True),
	"no boundary parameter": (mixed(b"--b\n" + TEXT + b"--b--\n", params=b"charset=x"), True),
	"empty boundary": (mixed(b"--\n" + TEXT + b"----\n", params=b'boundary=""'), True),
	"two boundary lines in a row": (mixed(b"--b\n--b\n" + TEXT + b"--b--\n"), False),
	"separator just before the close": (mixed(b"--b\n" + TEXT + b"--b\n--b--\n"), False),
	"separator at the end": (mixed(b"--b\n" + TEXT + b"--b\n"), False),
	"separator at the end, no line break": (mixed(b"--b\n" + TEXT + b"--b"), False),
	"boundary look-alikes": (mixed(b"--bb\nx--b\n--b\n" + TEXT + b"--b-x\n--b--\n"), True),
	"thousands of look-alikes": (mixed(b"--b\n" + TEXT + LOOK_ALIKES + b"--b\n" + TEXT + b"--b--\n"), True),
	"line break in an RFC 2231 boundary": (
		mixed(b"--x\ny\n" + TEXT + b"--x\ny--\n", params=b"boundary*=us-ascii''x%0Ay"),
		True,
	),
	"non-ASCII RFC 2231 boundary": (
		mixed(b"--\xc3\xa9\n" + TEXT + b"--\xc3\xa9--\n", params=b"boundary*=utf-8''%C3%A9"),
		True,
	),
	"8-bit boundary": (mixed(b"--\xe9\n" + TEXT + b"--\xe9--\n", params=b"boundary=\xe9"), True),
	"base64 multipart": (
		mixed(b"--b\n" + TEXT + b"--b--\n", params=b"boundary=b\nContent-Transfer-Encoding: base64"),
		True,
	),
	"inner boundary is the outer close": (
		mixed(b"--b\nContent-Type: multipart/mixed; boundary=b--\n\n--b--\n" + TEXT + b"--b----\n--b--\n"),
		True,
	),
	"inner multipart without close": (
		mixed(
			b"--b\nContent-Type: multipart/mixed; boundary=c\n\n--c\n" + TEXT + b"--b\n" + TEXT + b"--b--\n"
		),
		True,
	),
	"inner close after the outer boundary": (
		mixed(b"--b\nContent-Type: multipart/mixed; boundary=c\n\n--c\n" + TEXT + b"--b\n--c--\n--b--\n"),
		True,
	),
	"digest": (
		mixed(
			b"--b\nFrom: x@example.org\n\ninner\n--b\n\nno headers\n--b\n" + TEXT + b"--b--\n",
			params=b"boundary=b",
		).replace(b"multipart/mixed", b"multipart/digest"),
		True,
	),
	"message/rfc822 part": (
		mixed(b"--b\nContent-Type: message/rfc822\n\nFrom: x@example.org\nSubject: in\n\nbody\n\n--b--\n"),
		True,
	),
	"message/rfc822 of a multipart": (
		mixed(
			b"--b\nContent-Type: message/rfc822\n\n"
			+ mixed(b"--c\n" + TEXT + b"--c--\nepi\n", b"boundary=c")
			+ b"--b--\n"
		),
		True,
	),
	"delivery-status": (
		mixed(
			b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\n\n\n"
			b"Final-Recipient: rfc822; x@example.org\nAction: failed\n\n--b--\n"
		),
		True,
	),
	"delivery-status with text lines": (
		mixed(
			b"--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx\nnot a field\nmore\n\n"
			b"Action: failed\n--b--\n"
		),
		True,
	),
	"delivery-status block with a type": (
		mixed(b"--b\nContent-Type: message/delivery-status\n\nContent-Type: text/html\n\n--b--\n"),
		False,
	),
	"no blank line after the headers": (HEAD + b"not a header\nbody\n", True),
	"headers only": (HEAD, True),
	"headers only, no line break": (b"From: a@example.org", True),
	"no headers": (b"just a line of text\n", True),
	"unix From line": (b"From a@example.org Mon Jan  1 00:00:00 2024\n" + HEAD + b"\nbody\n", True),
	"From line later": (HEAD + b"From a@example.org\nX-A: b\n\nbody\n", False),
	"From line last": (HEAD + b"From a@example.org\n\nbody\n", False),
	"continuation first": (mixed(b"--b\n folded\n" + TEXT + b"--b--\n"), False),
	"empty field name": (HEAD + b": value\n\nbody\n", False),
	"folded fields": (b"Subject: one\n two\n\t three\nX-Empty:\nX-Blank: \t \n \n\nbody\n", True),
	"folded fields, CRLF": (b"Subject: one\r\n two\r\nX-Empty:\r\n\r\nbody\r\n", True),
	"part without headers": (mixed(b"--b\n\nbare\n--b--\n"), True),
	"part with headers only": (mixed(b"--b\nContent-Type: text/plain\n--b--\n"), True),
}


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_case_parses_the_same_both_ways(name: str) -> None:
	raw, fast = EDGE_CASES[name]
	assert assert_equivalent(raw) is fast


# --- mutated corpus messages ------------------------------------------------------------------------------


# seeds() and draw_function() are tests/test_fuzz.py's: the same seeds, cut to the same size


@pytest.mark.parametrize("mutator", MUTATORS, ids=[mutator.__name__ for mutator in MUTATORS])
@examples(40)
@given(data=st.data())
def test_one_mutation_of_a_corpus_message_parses_the_same_both_ways(mutator, data) -> None:
	seed = data.draw(st.sampled_from(seeds()), label="seed")
	assert_equivalent(mutator(seed, draw_function(data)), (ATTACHMENT_LIMIT,))


@examples(200)
@given(data=st.data())
def test_stacked_mutations_of_corpus_messages_parse_the_same_both_ways(data) -> None:
	seed = data.draw(st.sampled_from(seeds()), label="seed")
	assert_equivalent(mutate(seed, draw_function(data), seeds(), SEED_BYTES), (ATTACHMENT_LIMIT,))


# --- line soup: the lines the splitter decides on, in any order -------------------------------------------

SOUP_LINES = (
	b"Content-Type: multipart/mixed; boundary=a",
	b'Content-Type: multipart/alternative; boundary="a-b"',
	b'Content-Type: multipart/related; boundary="a--"',
	b"Content-Type: multipart/digest; boundary=d",
	b"Content-Type: multipart/mixed",
	b"Content-Type: message/rfc822",
	b"Content-Type: message/delivery-status",
	b"Content-Type: text/plain; charset=utf-8",
	b"Content-Type: text/html",
	b"Content-Type: application/octet-stream; name=x.bin",
	b"Content-Transfer-Encoding: base64",
	b"Content-Disposition: attachment; filename=f.txt",
	b"From: a@example.org",
	b"Subject: hello",
	b"Action: failed",
	b"From someone Mon Jan  1 00:00:00 2024",
	b" folded",
	b"\tfolded",
	b":no name",
	b"no colon here",
	b"",
	b"",
	b"--a",
	b"--a--",
	b"--a \t",
	b"--a--  ",
	b"--a-b",
	b"--a-b--",
	b"--a----",
	b"--d",
	b"--d--",
	b"--",
	b"x--a",
	b"aGVsbG8gd29ybGQ=",
	b"<p>hi</p>",
	b"caf\xe9",
)
# most messages get LF or CRLF only, so that the splitter takes them; a few get a lone CR or none
ENDING_SETS = ((b"\n",), (b"\r\n",), (b"\n", b"\r\n"), (b"\n", b"\r\n", b"\r", b""))
START = b"From: a@example.org\nContent-Type: multipart/mixed; boundary=a\n\n"


@st.composite
def line_soup(draw: st.DrawFn) -> bytes:
	"""A message of SOUP_LINES, perhaps after a multipart/mixed header block, with line endings from one set."""
	endings = draw(st.sampled_from(ENDING_SETS))
	lines = draw(st.lists(st.sampled_from(SOUP_LINES), min_size=1, max_size=40))
	start = draw(st.sampled_from((b"", START)))
	return start + b"".join(line + draw(st.sampled_from(endings)) for line in lines)


@examples(500)
@given(raw=line_soup())
def test_line_soup_parses_the_same_both_ways(raw: bytes) -> None:
	assert_equivalent(raw, (None,))
