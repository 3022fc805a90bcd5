"""Behaviour of engine/message.py on the project's own fixtures and on generated hostile messages."""

import base64
import hashlib
import re
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machhelpdesk.engine.message import (
	MAX_ADDRESSES,
	MAX_FILENAME_BYTES,
	MAX_HEADER_VALUE,
	MAX_PARTS,
	MAX_SUBJECT,
	Address,
	MessageParseError,
	ParsedMessage,
	decode_bytes,
	decode_header_value,
	normalize_message_id,
	parse_message,
	parse_message_id_list,
	safe_filename,
	sanitize_html,
)

SURROGATE = re.compile("[\ud800-\udfff]")


def load(fixtures_dir: Path, name: str, **kwargs: object) -> ParsedMessage:
	"""Parse one fixture file."""
	return parse_message((fixtures_dir / name).read_bytes(), **kwargs)


def assert_clean(text: str) -> None:
	"""No NUL and no lone surrogate (undecoded bytes) in a string we hand out."""
	assert "\x00" not in text
	assert not SURROGATE.search(text)


# --- headers, addresses, ids --------------------------------------------------------------------------


def test_plain_message_reads_headers_addresses_and_ids(fixtures_dir: Path) -> None:
	raw = (fixtures_dir / "plain.eml").read_bytes()
	msg = parse_message(raw)
	assert msg.subject == "Printer on floor 3 is jammed again"
	assert msg.sender == Address(name="Anna Example", email="anna@customer.example")
	assert msg.reply_to == [Address(name="Support Team", email="team@customer.example")]
	assert msg.to == [Address(name="Help Desk", email="help@helpdesk.example")]
	assert msg.cc == [
		Address(name="", email="bob@customer.example"),
		Address(name="Carol, C.", email="carol@customer.example"),
	]
	assert msg.message_id == "<plain-1@customer.example>"
	assert msg.in_reply_to == ["<ack-77@helpdesk.example>"]
	assert msg.references == ["<first-1@customer.example>", "<ack-77@helpdesk.example>"]
	assert msg.date is not None and msg.date.utcoffset() == timedelta(hours=1)
	assert msg.content_type == "text/plain"
	assert msg.text == "Hello,\n\nthe printer on floor 3 is jammed again. Grüße, Anna"
	assert msg.html is None
	assert msg.attachments == []
	assert msg.size == len(raw)
	assert msg.content_hash == hashlib.sha256(raw).hexdigest()
	assert msg.defects == []


def test_header_lookup_is_case_insensitive_and_keeps_all_values(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "plain.eml")
	assert msg.first_header("message-id") == "<plain-1@customer.example>"
	assert msg.header("REFERENCES") == ["<first-1@customer.example> <ack-77@helpdesk.example>"]
	assert msg.first_header("X-Missing", "fallback") == "fallback"
	assert msg.header("X-Missing") == []


def test_sender_is_from_never_reply_to(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "plain.eml")
	assert msg.sender is not None and msg.sender.email == "anna@customer.example"
	assert msg.sender.email not in {address.email for address in msg.reply_to}


def test_date_without_zone_is_utc() -> None:
	msg = parse_message(b"From: a@example.org\nDate: Mon, 01 Jan 2024 10:00:00 -0000\n\nbody\n")
	assert msg.date is not None and msg.date.tzinfo == timezone.utc


def test_unparsable_date_is_none_with_a_defect() -> None:
	msg = parse_message(b"From: a@example.org\nDate: Wed, 15 Dec 2010    59:10 -0500\n\nbody\n")
	assert msg.date is None
	assert any(defect.startswith("Date:") for defect in msg.defects)


def test_group_addresses_yield_their_members(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "group-address.eml")
	assert msg.first_header("To") == "undisclosed-recipients:; (no To-header on input)"
	assert msg.to == []
	assert msg.defects == []
	assert [address.email for address in msg.cc] == ["kim@customer.example", "lee@customer.example"]
	assert msg.cc[1].name == "Lee, L."


def test_garbage_from_gives_no_sender() -> None:
	msg = parse_message(b"From: Hello world\nSubject: x\n\nbody\n")
	assert msg.sender is None
	assert any("From" in defect for defect in msg.defects)


@pytest.mark.parametrize(
	("value", "expected"),
	[
		("<a@b.example>", "<a@b.example>"),
		("  <a@b.example> (added by relay)", "<a@b.example>"),
		("a@b.example", "<a@b.example>"),
		("<a\r\n @b.example>", "<a@b.example>"),
		("<>", None),
		("", None),
		(None, None),
		("no id here", None),
	],
)
def test_normalize_message_id(value: str | None, expected: str | None) -> None:
	assert normalize_message_id(value) == expected


def test_message_id_list_keeps_order_and_drops_repeats() -> None:
	values = ["<one@x> <two@x>\n <one@x>", "three@x"]
	assert parse_message_id_list(values) == ["<one@x>", "<two@x>", "<three@x>"]


# --- encodings ----------------------------------------------------------------------------------------


def test_rfc2047_latin1_q_subject_and_name(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "rfc2047-latin1-q.eml")
	assert msg.subject == "Grüße aus Köln und mehr ärger"
	assert msg.sender == Address(name="Jörg Müller", email="joerg@customer.example")
	assert msg.text == "Der Drucker ist kaputt. Grüße"


def test_rfc2047_utf8_b_character_split_across_words(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "rfc2047-utf8-b.eml")
	assert msg.subject == "Привет, мир — ✓ done"
	assert msg.sender is not None and msg.sender.name == "Zoë Ünicode"
	assert msg.text == "Текст письма."


def test_decode_header_value_spacing_rules() -> None:
	assert decode_header_value("=?utf-8?q?a?= =?utf-8?q?b?=") == "ab"
	assert decode_header_value("Re: =?utf-8?q?caf=C3=A9?= menu") == "Re: café menu"
	assert decode_header_value("=?utf-8?b?!!!notbase64?= text") == "=?utf-8?b?!!!notbase64?= text"
	assert decode_header_value("=?x-bogus?q?caf=E9?=") == "café"


def test_lying_and_unknown_charsets_fall_back_without_error(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "lying-charset.eml")
	assert "Declared ASCII, really UTF-8: naïve café" in msg.text
	assert "Declared UTF-8, really Latin-1: Straße" in msg.text
	assert "Unknown charset label: déjà vu" in msg.text
	assert_clean(msg.text)


def test_decode_bytes_fallback_chain() -> None:
	assert decode_bytes("naïve".encode(), "us-ascii") == "naïve"
	assert decode_bytes("Straße".encode("latin-1"), "utf-8") == "Straße"
	assert decode_bytes("テスト".encode("shift_jis"), "shift_jis") == "テスト"
	assert decode_bytes(b"\x93quoted\x94", "iso-8859-1") == "\u201cquoted\u201d"
	assert decode_bytes(b"abc", "unicode-escape") == "abc"  # not a mail charset: ignored


def test_nul_bytes_and_invalid_utf8_never_reach_output(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "nul-bytes.eml")
	assert msg.subject == "NUL in subject"
	# declared UTF-8 but not UTF-8: read as Windows-1252, like the Latin-1 part of lying-charset.eml
	assert msg.text == "Body with a NUL byte and invalid UTF-8 \xff\xfe here."
	for _name, value in msg.headers:
		assert_clean(value)


def test_unknown_charset_labels_in_headers_and_body(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "unknown-charset-labels.eml")
	assert msg.subject == "café and test"
	assert msg.text == "Unknown label, UTF-8 bytes: Ünïcödé"


# --- bodies and HTML ----------------------------------------------------------------------------------


def test_multipart_alternative_gives_text_and_html(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "alternative.eml")
	assert msg.text == "The VPN drops every \u201cten minutes\u201d."
	assert msg.html == "<p>The <b>VPN</b> drops every \u201cten minutes\u201d.</p>"
	assert "\r" not in msg.text


def test_hostile_html_is_sanitized(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "html-only-hostile.eml")
	html = msg.html or ""
	lowered = html.lower()
	for forbidden in ("<script", "<style", "<iframe", "<form", "<input", "<object", "<meta", "<title"):
		assert forbidden not in lowered
	for forbidden in ("onerror", "onload", "javascript:", "position", "document.cookie", "refresh"):
		assert forbidden not in lowered
	assert 'data-remote-src="https://tracker.example/open.gif?id=42"' in html
	assert not re.search(r'\ssrc="https?:', html)
	assert '<a href="https://shop.example/pay" target="_blank" rel="noopener noreferrer nofollow">' in html
	assert '<p style="color:red">Please pay the <b>invoice</b>.</p>' in html


def test_html_only_message_gets_text_from_html(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "html-only-hostile.eml")
	assert "Please pay the invoice." in msg.text
	assert "[Real link](https://shop.example/pay)" in msg.text
	assert "Do not show" not in msg.text
	assert "document.location" not in msg.text


def test_sanitize_html_image_sources() -> None:
	html = sanitize_html(
		'<img src="cid:logo@x"><img src="data:image/png;base64,AAAA"><img src="data:image/svg+xml;base64,AA">'
		'<img src="//cdn.example/a.png"><img src="/local.png"><img data-remote-src="javascript:alert(1)">'
	)
	assert '<img src="cid:logo@x">' in html
	assert '<img src="data:image/png;base64,AAAA">' in html
	assert "svg" not in html
	assert '<img data-remote-src="https://cdn.example/a.png">' in html
	assert "local.png" not in html
	assert "javascript" not in html


def test_sanitize_html_links() -> None:
	html = sanitize_html(
		'<a href="mailto:a@b.example">m</a><a href="/logout">r</a><a href="data:text/html,x">d</a>'
	)
	assert 'href="mailto:a@b.example"' in html
	assert "logout" not in html and "data:" not in html
	assert html.count('rel="noopener noreferrer nofollow"') == 3


def test_sanitize_html_survives_deep_nesting() -> None:
	html = sanitize_html("<div>" * 50_000 + "deep" + "</div>" * 50_000)
	assert "deep" in html
	assert html.count("<div>") <= 1000


def test_missing_final_boundary_keeps_the_parts(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "missing-final-boundary.eml")
	assert msg.text == "First part survives."
	assert [(a.filename, a.content) for a in msg.attachments] == [("data.csv", b"a,b\n1,2")]
	assert any("CloseBoundaryNotFound" in defect for defect in msg.defects)


def test_multipart_without_boundary_parameter_is_recovered(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "multipart-without-boundary.eml")
	assert msg.text == "Error: Invalid user address"
	assert any("boundary recovered" in defect for defect in msg.defects)


def test_content_type_with_tab_separator(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "content-type-tab-separator.eml")
	assert msg.content_type == "multipart/mixed"
	assert msg.text == "Text after a broken Content-Type."


def test_alternative_with_empty_related_part(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "alternative-empty-related.eml")
	assert msg.text == "Plain rendering."
	assert msg.attachments == []


def test_transfer_encoding_with_trailing_semicolon(fixtures_dir: Path) -> None:
	assert load(fixtures_dir, "base64-semicolon-encoding.eml").text == "Decoded despite the semicolon."


def test_blank_line_before_headers(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "leading-blank-line.eml")
	assert msg.subject == "Starts with a blank line"
	assert msg.sender is not None and msg.sender.email == "uma@customer.example"


def test_message_without_headers_is_read_as_body(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "no-headers.eml")
	assert msg.sender is None and msg.subject == ""
	assert msg.text.startswith("This is a message without any header fields.")
	assert any("no header fields" in defect for defect in msg.defects)


# --- attachments --------------------------------------------------------------------------------------


def test_path_traversal_filename_is_flattened(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "attachment-path-traversal.eml")
	assert msg.text == "See attached."
	[attachment] = msg.attachments
	assert attachment.filename == "passwd"
	assert attachment.content == b"root:x:0:0:root:/root:/bin/sh\n"
	assert attachment.size == len(attachment.content)


def test_long_filename_is_cut_keeping_the_extension(fixtures_dir: Path) -> None:
	[attachment] = load(fixtures_dir, "attachment-long-filename.eml").attachments
	assert attachment.filename.startswith("quarterly-report-very-long-name-")
	assert attachment.filename.endswith(".pdf")
	assert len(attachment.filename.encode("utf-8")) <= MAX_FILENAME_BYTES
	assert attachment.content == b"%PDF-1.4 fake"


@pytest.mark.parametrize(
	("name", "content_type", "expected"),
	[
		("../../etc/passwd", "text/plain", "passwd"),
		("C:\\Users\\x\\report.pdf", "application/pdf", "report.pdf"),
		("..hidden", "text/plain", "hidden"),
		("evil\x00name\x07.txt", "text/plain", "evilname.txt"),
		("invoice\u202egpj.exe", "application/octet-stream", "invoicegpj.exe"),
		("con.txt", "text/plain", "_con.txt"),
		('a<b>:"c|?*.txt', "text/plain", "a_b___c___.txt"),
		("", "image/png", "attachment-3.png"),
		("...", "message/rfc822", "attachment-3.eml"),
		(None, "application/x-unknown-thing", "attachment-3.bin"),
	],
)
def test_safe_filename(name: str | None, content_type: str, expected: str) -> None:
	assert safe_filename(name, content_type=content_type, index=3) == expected


def test_safe_filename_cuts_multibyte_names_on_character_boundaries() -> None:
	name = "я" * 200 + ".docx"
	safe = safe_filename(name)
	assert safe.endswith(".docx")
	assert len(safe.encode("utf-8")) <= MAX_FILENAME_BYTES
	assert set(safe[:-5]) == {"я"}


def test_inline_cid_image(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "inline-cid-image.eml")
	assert 'src="cid:shot-1@customer.example"' in (msg.html or "")
	[image] = msg.attachments
	assert image.content_id == "shot-1@customer.example"
	assert image.inline is True
	assert image.content_type == "image/png"
	assert image.filename == "attachment-1.png"
	assert image.content.startswith(b"\x89PNG\r\n")


def test_rfc822_attachment_is_one_eml_file(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "rfc822-attachment.eml")
	assert msg.text == "Forwarding the mail below."
	[enclosed] = msg.attachments
	assert enclosed.filename == "The original question.eml"
	assert enclosed.content_type == "message/rfc822"
	assert msg.enclosed_message_ids == ["<original-9@elsewhere.example>"]
	inner = parse_message(enclosed.content)
	assert inner.subject == "The original question"
	assert inner.text == "Can you help with the license key?"


def test_base64_encoded_rfc822_attachment_is_decoded(fixtures_dir: Path) -> None:
	msg = load(fixtures_dir, "rfc822-base64-encoded.eml")
	[enclosed] = msg.attachments
	assert enclosed.content.startswith(b"From: Original Sender")
	assert msg.enclosed_message_ids == ["<original-9@elsewhere.example>"]


def test_raw_utf8_filename_with_a_cut_character(fixtures_dir: Path) -> None:
	[attachment] = load(fixtures_dir, "raw-utf8-filename-truncated.eml").attachments
	assert attachment.filename == "Картинка очень длинная\ufffd"


def test_oversized_attachment_is_listed_without_content(fixtures_dir: Path) -> None:
	limited = load(fixtures_dir, "oversized-attachment.eml", max_attachment_size=4096)
	[attachment] = limited.attachments
	assert attachment.filename == "dump.bin"
	assert attachment.oversized is True
	assert attachment.content == b""
	assert attachment.size == 10240
	[full] = load(fixtures_dir, "oversized-attachment.eml").attachments
	assert full.oversized is False
	assert full.content == bytes(range(256)) * 40


# --- rejection ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"   \r\n\t ", bytes(range(256)) * 64])
def test_empty_or_binary_input_is_rejected(raw: bytes) -> None:
	with pytest.raises(MessageParseError):
		parse_message(raw)


def test_non_bytes_input_is_rejected() -> None:
	with pytest.raises(MessageParseError):
		parse_message("From: a@b\n\nhi")  # type: ignore[arg-type]


# --- hostile and huge messages, generated -------------------------------------------------------------


def test_ten_thousand_parts_are_capped() -> None:
	parts = b"".join(b"--b\nContent-Type: text/plain\n\npart %d\n" % i for i in range(10_000))
	msg = parse_message(
		b"From: a@example.org\nContent-Type: multipart/mixed; boundary=b\n\n" + parts + b"--b--\n"
	)
	assert len(msg.part_content_types) == MAX_PARTS
	assert msg.text.startswith("part 0\n\npart 1")
	assert any(f"more than {MAX_PARTS} MIME parts" in defect for defect in msg.defects)


def nested_rfc822(levels: int) -> bytes:
	"""A message/rfc822 inside a message/rfc822 ... `levels` deep, inside a multipart with a text part."""
	inner = b"From: a@example.org\nSubject: level 0\nMessage-ID: <level-0@example.org>\n\ninnermost\n"
	for level in range(1, levels + 1):
		inner = (
			b"From: a@example.org\nSubject: level %d\nMessage-ID: <level-%d@example.org>\n"
			b"Content-Type: message/rfc822\n\n" % (level, level)
		) + inner
	return (
		b"From: top@example.org\nSubject: top\nContent-Type: multipart/mixed; boundary=zz\n\n"
		b"--zz\nContent-Type: text/plain\n\ntop text\n--zz\nContent-Type: message/rfc822\n\n"
		+ inner
		+ b"\n--zz--\n"
	)


def test_hundred_level_nested_rfc822_is_one_attachment() -> None:
	msg = parse_message(nested_rfc822(100))
	assert msg.text == "top text"
	[enclosed] = msg.attachments
	assert enclosed.filename == "level 100.eml"
	assert enclosed.content.count(b"Content-Type: message/rfc822") == 100
	assert enclosed.content.rstrip().endswith(b"innermost")
	assert msg.enclosed_message_ids == ["<level-100@example.org>"]


def test_nesting_too_deep_for_the_stdlib_parser_degrades_to_text() -> None:
	msg = parse_message(nested_rfc822(3000))
	assert msg.subject == "top"
	assert "innermost" in msg.text
	assert any("nested too deeply" in defect for defect in msg.defects)


def test_deeply_nested_multiparts_stop_at_the_depth_limit() -> None:
	levels = 300
	head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(levels))
	tail = b"".join(b"\n--b%d--\n" % i for i in reversed(range(levels)))
	msg = parse_message(b"From: a@example.org\n" + head + b"Content-Type: text/plain\n\ndeep\n" + tail)
	assert any("nested deeper than" in defect for defect in msg.defects)


def test_megabyte_subject_is_capped() -> None:
	msg = parse_message(b"From: a@example.org\nSubject: " + b"x" * 1_000_000 + b"\n\nbody\n")
	assert msg.subject == "x" * MAX_SUBJECT
	assert msg.text == "body"


def test_megabyte_header_line_is_capped() -> None:
	msg = parse_message(b"From: a@example.org\nX-Junk: " + b"y " * 500_000 + b"\n\nbody\n")
	assert len(msg.first_header("X-Junk")) <= MAX_HEADER_VALUE
	assert msg.text == "body"


def test_megabyte_content_type_parameters() -> None:
	msg = parse_message(
		b"From: a@example.org\nContent-Type: text/plain; " + b"a=b; " * 200_000 + b"\n\nbody\n"
	)
	assert msg.content_type == "text/plain"
	assert msg.text == "body"


def test_nested_comments_do_not_recurse() -> None:
	ctype = b"Content-Type: text/plain; name=" + b"(a" * 50_000 + b"\n"
	sender = b"From: " + b"(" * 5000 + b")" * 5000 + b" deep@example.org\n"
	msg = parse_message(sender + ctype + b"\nbody\n")
	assert msg.sender is not None and msg.sender.email == "deep@example.org"
	assert msg.text == "body"


def test_five_thousand_recipients_are_capped() -> None:
	recipients = ", ".join(f'"User {i}" <user{i}@example.com>' for i in range(5000)).encode()
	msg = parse_message(b"From: a@example.org\nTo: " + recipients + b"\n\nbody\n")
	assert len(msg.to) == MAX_ADDRESSES
	assert msg.to[0] == Address(name="User 0", email="user0@example.com")
	assert msg.to[-1].email == f"user{MAX_ADDRESSES - 1}@example.com"


def test_many_headers_are_capped() -> None:
	headers = b"".join(b"X-Header-%d: v\n" % i for i in range(5000))
	msg = parse_message(b"From: a@example.org\n" + headers + b"\nbody\n")
	assert len(msg.headers) == 1000
	assert msg.sender is not None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_anything_else(raw: bytes) -> None:
	try:
		msg = parse_message(raw)
	except MessageParseError:
		return
	for text in (msg.subject, msg.text, msg.html or "", *(value for _name, value in msg.headers)):
		assert_clean(text)


MIME_PIECES = st.sampled_from(
	[
		b"Content-Type: multipart/mixed; boundary=x\n",
		b"Content-Type: message/rfc822\n",
		b"Content-Type: text/html; charset=utf-8\n",
		b"Content-Transfer-Encoding: base64\n",
		b"Content-Disposition: attachment; filename*=utf-8''%E2%9C%93.txt\n",
		b"Subject: =?utf-8?b?w6k=?= =?x?q?=FF?=\n",
		b"From: =?utf-8?q?a?= <a@b>, group:;\n",
		b"\n",
		b"--x\n",
		b"--x--\n",
		b"<p onclick=x>hi<img src=http://t/x>\n",
		b"\xff\xfe\x00garbage\n",
		b"aGVsbG8=\n",
	]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MIME_PIECES, max_size=40))
def test_mime_shaped_garbage_never_raises_anything_else(pieces: list[bytes]) -> None:
	try:
		msg = parse_message(b"From: a@example.org\n" + b"".join(pieces))
	except MessageParseError:
		return
	assert_clean(msg.subject)
	assert_clean(msg.text)
	for attachment in msg.attachments:
		assert_clean(attachment.filename)
		assert "/" not in attachment.filename and not attachment.filename.startswith(".")


def test_base64_helper_in_fixture_is_real_png(fixtures_dir: Path) -> None:
	"""The inline image fixture carries a valid one-pixel PNG (guards the fixture itself)."""
	raw = (fixtures_dir / "inline-cid-image.eml").read_bytes()
	encoded = raw.split(b"Content-Transfer-Encoding: base64\n\n", 1)[1].split(b"--rel--", 1)[0]
	assert base64.b64decode(encoded).startswith(b"\x89PNG")
