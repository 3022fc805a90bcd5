"""MIME bytes -> ParsedMessage.

`parse_message` turns the raw bytes of one email into plain data: decoded headers, addresses, a plain-text
body, sanitized HTML for display, and attachments with safe file names. It never trusts the input:
charsets may lie, multiparts may be broken, headers may be megabytes long. Whatever is malformed is
recovered as far as possible and noted in `ParsedMessage.defects`; the only exception it raises is
`MessageParseError`, for input that is empty or is not a message at all.

The MIME tree is the stdlib `email` package's (its classes, with `email.policy.default` semantics), built
by a splitter of this module that cuts bodies at their boundary lines at C speed and reproduces the stdlib
feed parser's tree exactly; what it does not take, the feed parser parses (see _split_tree). Header
values, charsets, transfer encodings and RFC 2047 words are decoded here, because the stdlib raises or
slows to a crawl on exactly the inputs a mailbox delivers (unknown charsets, group syntax, nested
comments, very long parameter lists).
"""

import binascii
import codecs
import functools
import hashlib
import mimetypes
import quopri
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import errors
from email.message import EmailMessage, Message
from email.parser import BytesFeedParser, BytesParser
from email.policy import EmailPolicy
from email.utils import getaddresses, parsedate_to_datetime
from html import escape as escape_html

import html2text
import nh3
from bs4 import BeautifulSoup

__all__ = [
	"Address",
	"Attachment",
	"MessageParseError",
	"ParsedMessage",
	"decode_bytes",
	"decode_header_value",
	"normalize_message_id",
	"parse_message",
	"parse_message_id_list",
	"safe_filename",
	"sanitize_html",
]

# Limits that keep the work per message bounded whatever the input looks like.
MAX_PARTS = 2000  # MIME parts walked per message
MAX_DEPTH = 64  # multipart nesting walked
MAX_HEADERS = 1000  # header fields kept
MAX_HEADER_VALUE = 64 * 1024  # characters kept per header value
MAX_MIME_HEADER_VALUE = 8 * 1024  # characters of Content-* values given to the stdlib parameter parser
MAX_ADDRESS_HEADER = 256 * 1024  # characters of an address header that are parsed
MAX_ADDRESSES = 1000  # addresses kept per header
MAX_COMMENTS = 64  # "(" in an address header before comments are dropped unparsed
MAX_SUBJECT = 998  # RFC 5322 line limit
MAX_NAME = 256  # characters of a display name
MAX_MESSAGE_IDS = 200  # ids kept from References / In-Reply-To
MAX_MESSAGE_ID = 900  # characters of one message id
MAX_FILENAME_BYTES = 180  # UTF-8 bytes of an attachment file name
MAX_DEFECTS = 200  # defect notes kept
MAX_HTML_CHARS = 4 * 1024 * 1024  # characters of HTML that are sanitized
MAX_HTML_TEXT_CHARS = 1024 * 1024  # characters of sanitized HTML converted to text (html2text: ~1 s/MB)
MAX_HTML_DEPTH = 1000  # element nesting kept in HTML


class MessageParseError(ValueError):
	"""The only exception `parse_message` raises: the input is empty or not an email message at all.

	Everything else that is wrong with a message is recovered and listed in `ParsedMessage.defects`.
	"""


@dataclass
class Address:
	"""One mailbox from an address header: display name (decoded) and address (lower-case)."""

	name: str
	email: str


@dataclass
class Attachment:
	"""A non-body MIME part: a file, an inline image, an enclosed message (.eml) or a TNEF blob."""

	filename: str
	content_type: str
	content: bytes
	size: int
	content_id: str | None
	inline: bool
	oversized: bool = False


@dataclass
class ParsedMessage:
	"""Everything the helpdesk needs from one email, as plain data."""

	message_id: str | None = None
	in_reply_to: list[str] = field(default_factory=list)
	references: list[str] = field(default_factory=list)
	subject: str = ""
	sender: Address | None = None
	reply_to: list[Address] = field(default_factory=list)
	to: list[Address] = field(default_factory=list)
	cc: list[Address] = field(default_factory=list)
	date: datetime | None = None
	headers: list[tuple[str, str]] = field(default_factory=list)
	content_type: str = "text/plain"
	text: str = ""
	html: str | None = None
	attachments: list[Attachment] = field(default_factory=list)
	defects: list[str] = field(default_factory=list)
	size: int = 0
	content_hash: str = ""
	# Message-IDs of messages enclosed as message/rfc822 or text/rfc822-headers parts (bounces, forwards).
	enclosed_message_ids: list[str] = field(default_factory=list)
	# Content types of every MIME part walked, root first, lower-case.
	part_content_types: list[str] = field(default_factory=list)

	def header(self, name: str) -> list[str]:
		"""Return all values of the header `name` (case-insensitive), in message order."""
		wanted = name.lower()
		return [value for key, value in self.headers if key.lower() == wanted]

	def first_header(self, name: str, default: str = "") -> str:
		"""Return the first value of the header `name` (case-insensitive), or `default`."""
		wanted = name.lower()
		for key, value in self.headers:
			if key.lower() == wanted:
				return value
		return default


# ---------------------------------------------------------------------------------------------------------
# Text decoding: charsets, RFC 2047 encoded words, cleaning

# Labels seen in real mail that Python does not know, or knows by a narrower codec than mailers mean.
_CHARSET_ALIASES: dict[str, str | None] = {
	"iso-8859-1": "cp1252",
	"iso8859-1": "cp1252",
	"latin1": "cp1252",
	"latin-1": "cp1252",
	"l1": "cp1252",
	"x-user-defined": "cp1252",
	"iso-8859-8-i": "iso-8859-8",
	"iso-8859-8-e": "iso-8859-8",
	"iso-8859-6-i": "iso-8859-6",
	"iso-8859-6-e": "iso-8859-6",
	"x-mac-cyrillic": "mac_cyrillic",
	"x-mac-ukrainian": "mac_cyrillic",
	"x-mac-roman": "mac_roman",
	"macintosh": "mac_roman",
	"x-sjis": "cp932",
	"sjis": "cp932",
	"shift-jis": "cp932",
	"shift_jis": "cp932",
	"windows-31j": "cp932",
	"x-euc-jp": "euc_jp",
	"gb2312": "gb18030",
	"gbk": "gb18030",
	"x-gbk": "gb18030",
	"cn-gb": "gb18030",
	"euc-cn": "gb18030",
	"euc-kr": "cp949",
	"ks_c_5601-1987": "cp949",
	"ks_c_5601": "cp949",
	"ksc5601": "cp949",
	"big5": "big5hkscs",
	"x-x-big5": "big5hkscs",
	"tis-620": "cp874",
	"windows-874": "cp874",
	"cp-850": "cp850",
	"utf8": "utf-8",
	"unicode-1-1-utf-8": "utf-8",
	"x-unicode20utf8": "utf-8",
	"unicode-1-1-utf-7": "utf-7",
	"x-unknown": None,
	"unknown": None,
	"unknown-8bit": None,
	"x-binaryenc": None,
	"default": None,
	"charset": None,
}

# Codecs that exist but are not character sets a mail may legitimately declare.
_UNSAFE_CODECS = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"})

# What undecodable text is read as, last: the usual charset of mail that declares none or lies.
_SINGLE_BYTE_FALLBACK = "cp1252"
# Declared charsets for which "decode with replacement" is no better than the fallbacks.
_SINGLE_BYTE_OR_UNICODE = frozenset({"ascii", "utf-8", "cp1252", "iso8859-1", "utf-16", "utf-32", "utf-7"})

_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_WHITESPACE = re.compile(r"\s+")


def _lookup_charset(label: str | None) -> str | None:
	"""Return the Python codec name for a MIME charset label, or None when it is unknown or unsafe."""
	if not label:
		return None
	return _lookup_charset_label(str(label))


@functools.lru_cache(maxsize=256)  # a message names a few charsets, in every encoded word and part
def _lookup_charset_label(label: str) -> str | None:
	"""_lookup_charset for a non-empty label."""
	name = label.strip().strip("\"'").split("*", 1)[0].strip().lower()
	if not name:
		return None
	if name in _CHARSET_ALIASES:
		alias = _CHARSET_ALIASES[name]
		if alias is None:
			return None
		name = alias
	try:
		info = codecs.lookup(name)
	except (LookupError, ValueError, TypeError):
		return None
	if info.name in _UNSAFE_CODECS or not getattr(info, "_is_text_encoding", True):
		return None
	return info.name


def clean_text(text: str) -> str:
	"""Return `text` without NUL characters and with lone surrogates replaced by U+FFFD."""
	if "\x00" in text:
		text = text.replace("\x00", "")
	if text.isascii():  # no surrogates: skip the regex scan
		return text
	return _SURROGATES.sub("\ufffd", text)


def _mostly_utf8(data: bytes) -> str | None:
	"""Return `data` decoded as UTF-8 with replacement when it is UTF-8 with a few broken sequences
	(a truncated character, one stray byte), None when it does not look like UTF-8 at all."""
	text = data.decode("utf-8", errors="replace")
	broken = text.count("\ufffd") - data.count(b"\xef\xbf\xbd")
	multibyte = sum(1 for ch in text if ch > "\x7f" and ch != "\ufffd")
	return text if multibyte >= 4 * max(broken, 1) else None


def decode_bytes(data: bytes, charset: str | None = None) -> str:
	"""Decode `data` as text, trusting the declared `charset` only as far as it decodes cleanly.

	Tries the declared charset strictly, then UTF-8; then the declared charset with replacement when it is
	a multi-byte one (a few bad bytes in Shift_JIS are still Shift_JIS), UTF-8 with replacement when the
	bytes are mostly UTF-8, else Windows-1252 with replacement. Never raises; the result has no NUL
	characters and no lone surrogates.
	"""
	codec = _lookup_charset(charset)
	for candidate in (codec, "utf-8"):
		if candidate is None:
			continue
		try:
			return clean_text(data.decode(candidate))
		except (UnicodeError, LookupError, ValueError):
			continue
	if codec is not None and codec not in _SINGLE_BYTE_OR_UNICODE:
		try:
			return clean_text(data.decode(codec, errors="replace"))
		except (UnicodeError, LookupError, ValueError):
			pass
	text = _mostly_utf8(data)
	if text is None:
		text = data.decode(_SINGLE_BYTE_FALLBACK, errors="replace")
	return clean_text(text)


def _surrogate_text(text: str) -> str:
	"""Decode a str that may carry raw 8-bit bytes as surrogate escapes (how the stdlib parser stores them)."""
	if text.isascii() or not _SURROGATES.search(text):
		return text
	return decode_bytes(text.encode("utf-8", "surrogateescape"))


# RFC 2047 allows 75 characters per word; real mail stretches that, but a bound keeps the search linear.
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64})\?([bBqQ])\?(\S{0,2000}?)\?=")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_BASE64 = bytes(sorted(set(range(256)) - set(_BASE64_ALPHABET)))


def _decode_b(text: bytes, *, strict: bool = False) -> bytes | None:
	"""Decode base64 leniently (missing padding, stray characters); None if nothing sensible is left.

	The data ends at the first "="; characters outside the base64 alphabet are skipped. With `strict`
	(RFC 2047 words), text with characters outside the base64 alphabet is not base64.
	"""
	if strict and _BASE64_JUNK.search(text.rstrip(b"=")):
		return None
	end = text.find(b"=")
	data = (text[:end] if end >= 0 else text).translate(None, _NOT_BASE64)  # one pass, one copy
	if len(data) % 4 == 1:
		data = data[:-1]
	data += b"=" * (-len(data) % 4)
	try:
		return binascii.a2b_base64(data)
	except (binascii.Error, ValueError):
		return None


def _base64_size(text: bytes) -> int:
	"""Return len(_decode_b(text)) without decoding: count the base64 characters before the first "="."""
	end = text.find(b"=")
	if end < 0:
		end = len(text)
	tail = text[end:]
	digits = len(text) - len(text.translate(None, _BASE64_ALPHABET))
	digits -= len(tail) - len(tail.translate(None, _BASE64_ALPHABET))
	if digits % 4 == 1:
		digits -= 1
	return digits // 4 * 3 + max(digits % 4 - 1, 0)


def _decode_q(text: bytes) -> bytes:
	"""Decode the RFC 2047 "Q" encoding: underscores are spaces, =XX are bytes, anything else is literal."""
	return _QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.replace(b"_", b" "))


def decode_header_value(value: str) -> str:
	"""Return a header value as readable text: unfolded, RFC 2047 words decoded, raw 8-bit bytes decoded.

	Whitespace between adjacent encoded words is dropped (RFC 2047 6.2), and consecutive words in the same
	charset are decoded together so that a multi-byte character split between two words survives.
	A word that cannot be decoded stays as literal text. Never raises.
	"""
	value = _unfold(value)
	if "=?" not in value:
		return clean_text(_surrogate_text(value))
	pieces: list[str] = []
	pending = bytearray()
	pending_charset: str | None = None
	previous_was_word = False
	position = 0

	def flush() -> None:
		nonlocal pending, pending_charset
		if pending:
			pieces.append(decode_bytes(bytes(pending), pending_charset))
		pending = bytearray()
		pending_charset = None

	for match in _ENCODED_WORD.finditer(value):
		charset, encoding, payload = match.group(1), match.group(2).lower(), match.group(3)
		raw_payload = payload.encode("utf-8", "surrogateescape")
		decoded = _decode_b(raw_payload, strict=True) if encoding == "b" else _decode_q(raw_payload)
		between = value[position : match.start()]
		if decoded is None:
			continue  # left in place: it becomes part of the literal text before the next word
		if between and not (previous_was_word and between.isspace()):
			flush()
			pieces.append(_surrogate_text(between))
		label = _lookup_charset(charset) or charset.lower()
		if label != pending_charset:
			flush()
		pending_charset = label
		pending.extend(decoded)
		previous_was_word = True
		position = match.end()
	flush()
	pieces.append(_surrogate_text(value[position:]))
	return clean_text("".join(pieces))


_FOLDING = re.compile(r"\r?\n(?=[ \t])")
_LINE_BREAKS = re.compile(r"[\r\n]+")


def _unfold(value: str) -> str:
	"""Unfold a header value (RFC 5322 2.2.3) and turn any stray line break into a space."""
	if "\n" in value:  # most values were never folded: skip the regex scans
		value = _FOLDING.sub("", value)
	if "\n" in value or "\r" in value:
		value = _LINE_BREAKS.sub(" ", value)
	return value


def _single_line(text: str, limit: int) -> str:
	"""Collapse whitespace, drop control characters and cap `text` at `limit` characters."""
	if not (text.isascii() and text.isprintable() and "  " not in text):  # else neither regex changes it
		text = _CONTROL_CHARS.sub("", _WHITESPACE.sub(" ", text))
	text = text.strip()
	return text[:limit].rstrip()


def _body_text(text: str) -> str:
	"""Normalize line endings of a decoded body to LF and drop NUL characters."""
	text = clean_text(text)
	if "\r" in text:
		text = text.replace("\r\n", "\n").replace("\r", "\n")
	return text


# ---------------------------------------------------------------------------------------------------------
# Message ids

_BRACKETED_ID = re.compile(r"<([^<>]*)>")
_BAD_ID_CHARS = re.compile("[\x00-\x20\x7f\ud800-\udfff<>]")


def _canonical_id(core: str) -> str | None:
	"""Return "<core>" with folding whitespace removed, or None when `core` is not a usable id."""
	core = _WHITESPACE.sub("", core)
	if not core or len(core) > MAX_MESSAGE_ID or _BAD_ID_CHARS.search(core):
		return None
	return f"<{core}>"


def normalize_message_id(value: str | None) -> str | None:
	"""Return a Message-ID in its canonical "<local@domain>" form, or None if `value` holds no usable id.

	The first <...> group is taken, whitespace inside it (from folding) is removed, and case is kept.
	Without angle brackets, the first whitespace-separated token with an "@" is accepted.
	"""
	if not value:
		return None
	value = _unfold(str(value)).strip()
	match = _BRACKETED_ID.search(value)
	if match:
		return _canonical_id(match.group(1))
	for token in value.split():
		token = token.strip(",;\"'()")
		if "@" in token:
			return _canonical_id(token)
	return None


def parse_message_id_list(values: Iterable[str]) -> list[str]:
	"""Return the canonical message ids found in References/In-Reply-To values, in order, without repeats."""
	found: list[str] = []
	seen: set[str] = set()
	for value in values:
		value = _unfold(value)
		candidates = _BRACKETED_ID.findall(value)
		if candidates:
			ids = [_canonical_id(core) for core in candidates]
		else:
			ids = [normalize_message_id(token) for token in re.split(r"[\s,]+", value) if "@" in token]
		for message_id in ids:
			if message_id and message_id not in seen:
				seen.add(message_id)
				found.append(message_id)
				if len(found) >= MAX_MESSAGE_IDS:
					return found
	return found


# ---------------------------------------------------------------------------------------------------------
# Addresses

# No control characters (NUL, DEL ...) either: no mail system delivers to such an address.
_ADDRESS_PART = r"[^\s@<>()\[\],;:\\\"\x00-\x1f\x7f]+"
_VALID_ADDRESS = re.compile(rf"{_ADDRESS_PART}@{_ADDRESS_PART}")


def _clean_address(email: str) -> str | None:
	"""Return the lower-cased address, or None unless it looks like local@domain."""
	email = _surrogate_text(email).strip().strip("<>\"'").strip().lower()
	if not email or len(email) > 320 or not _VALID_ADDRESS.fullmatch(email):
		return None
	domain = email.rpartition("@")[2]
	if domain.startswith(".") or domain.endswith(".") or ".." in domain:
		return None
	return email


def _drop_comments(value: str) -> str:
	"""Remove RFC 5322 comments, however deeply nested, outside quoted strings. Linear."""
	kept: list[str] = []
	depth = 0
	quoted = escaped = False
	for char in value:
		if escaped:
			escaped = False
		elif char == "\\":
			escaped = True
		elif quoted:
			quoted = char != '"'
		elif char == '"' and depth == 0:
			quoted = True
		elif char == "(":
			depth += 1
			continue
		elif char == ")" and depth:
			depth -= 1
			continue
		if depth == 0:
			kept.append(char)
	return "".join(kept)


def parse_address_header(
	values: list[str], defects: list[str] | None = None, label: str = ""
) -> list[Address]:
	"""Return the mailboxes in the raw values of one address header (To, Cc, ...), decoded.

	Groups ("undisclosed-recipients:;") contribute their members, empty entries are skipped, garbage is
	dropped with a defect note. At most MAX_ADDRESSES are kept. Never raises.
	"""
	joined = ", ".join(_unfold(value) for value in values if value and value.strip())
	if not joined:
		return []
	if len(joined) > MAX_ADDRESS_HEADER:
		joined = joined[:MAX_ADDRESS_HEADER]
		_note(defects, f"{label}: header longer than {MAX_ADDRESS_HEADER} characters, rest ignored")
	if joined.count("(") > MAX_COMMENTS:
		# the address parser recurses once per nested comment
		joined = _drop_comments(joined)
		_note(defects, f"{label}: more than {MAX_COMMENTS} comments, comments ignored")
	try:
		pairs = getaddresses([joined])
	except Exception as exc:  # the legacy parser is lenient, but a crash here must not lose the message
		_note(defects, f"{label}: address list unreadable ({type(exc).__name__})")
		return []
	addresses: list[Address] = []
	dropped = 0
	for name, email in pairs:
		if not email.strip():
			continue  # an empty group ("undisclosed-recipients:;") or a stray comment
		address = _clean_address(email)
		if address is None:
			dropped += 1
			continue
		display = _single_line(decode_header_value(name), MAX_NAME) if name else ""
		addresses.append(Address(name=display, email=address))
		if len(addresses) >= MAX_ADDRESSES:
			_note(defects, f"{label}: more than {MAX_ADDRESSES} addresses, rest ignored")
			break
	if dropped:
		_note(defects, f"{label}: {dropped} unreadable address(es) dropped")
	return addresses


# ---------------------------------------------------------------------------------------------------------
# HTML: sanitizing for display, converting to text

_ALLOWED_TAGS = frozenset(
	{
		"a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo", "big", "blockquote", "br",
		"caption", "center", "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn", "div", "dl",
		"dt", "em", "figcaption", "figure", "font", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header",
		"hr", "i", "img", "ins", "kbd", "li", "main", "mark", "ol", "p", "pre", "q", "rp", "rt", "ruby", "s",
		"samp", "section", "small", "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody",
		"td", "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
	}
)  # fmt: skip
# Their content is dropped along with the tag.
_CONTENT_DROPPED_TAGS = frozenset(
	{
		"script", "style", "title", "noscript", "template", "textarea", "select", "option", "object",
		"embed", "iframe", "frame", "frameset", "noframes", "applet", "svg", "math", "head", "xml",
	}
)  # fmt: skip
_GENERIC_ATTRIBUTES = frozenset({"title", "lang", "dir", "style", "align", "valign"})
_TABLE_ATTRIBUTES = frozenset(
	{"width", "height", "bgcolor", "border", "cellpadding", "cellspacing", "colspan", "rowspan", "nowrap"}
)
_ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
	"*": set(_GENERIC_ATTRIBUTES),
	"a": {"href"},
	"img": {"src", "alt", "width", "height", "border"},
	"table": set(_TABLE_ATTRIBUTES),
	"td": set(_TABLE_ATTRIBUTES),
	"th": set(_TABLE_ATTRIBUTES),
	"tr": {"bgcolor", "height"},
	"col": {"span", "width"},
	"colgroup": {"span", "width"},
	"font": {"color", "face", "size"},
	"ol": {"start", "type"},
	"ul": {"type"},
	"li": {"value"},
	"time": {"datetime"},
	"hr": {"width", "size", "noshade"},
}
# No property that can carry url() (background, list-style-image, border-image, content ...) or move
# content over the page (position).
_ALLOWED_STYLE_PROPERTIES = frozenset(
	{
		"background-color", "border", "border-bottom", "border-bottom-color", "border-bottom-style",
		"border-bottom-width", "border-collapse", "border-color", "border-left", "border-left-color",
		"border-left-style", "border-left-width", "border-radius", "border-right", "border-right-color",
		"border-right-style", "border-right-width", "border-spacing", "border-style", "border-top",
		"border-top-color", "border-top-style", "border-top-width", "border-width", "color", "direction",
		"display", "font", "font-family", "font-size", "font-style", "font-variant", "font-weight", "height",
		"letter-spacing", "line-height", "list-style-type", "margin", "margin-bottom", "margin-left",
		"margin-right", "margin-top", "max-width", "min-width", "padding", "padding-bottom", "padding-left",
		"padding-right", "padding-top", "table-layout", "text-align", "text-decoration", "text-indent",
		"text-transform", "vertical-align", "white-space", "width", "word-break", "word-spacing", "word-wrap",
		"overflow-wrap",
	}
)  # fmt: skip
_LINK_SCHEMES = ("http:", "https:", "mailto:", "tel:")
_REMOTE_SCHEMES = ("http:", "https:")
_INLINE_IMAGE = re.compile(r"data:image/(png|gif|jpe?g|webp|bmp);base64,", re.IGNORECASE)

# Elements html5ever never nests into each other by repetition (void, or implicitly closed by a sibling).
_FLAT_ELEMENTS = frozenset(
	{
		"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr",
		"p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "thead", "tbody", "tfoot", "colgroup",
		"caption", "rt", "rp", "html", "head", "body",
	}
)  # fmt: skip
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]{0,40})[^<>]{0,4096}>")


def _limit_nesting(html: str, limit: int = MAX_HTML_DEPTH) -> str:
	"""Drop start and end tags nested deeper than `limit` (their text stays).

	The sanitizer's cost grows with the square of the element depth (100,000 nested <div> take 17 s);
	real mail stays far below the limit, so this changes nothing but hostile input. Linear.
	"""
	if html.count("<") <= limit:
		return html
	depth = 0

	def keep_or_drop(match: re.Match[str]) -> str:
		nonlocal depth
		name = match.group(2).lower()
		if name in _FLAT_ELEMENTS or match.group(0).endswith("/>"):
			return match.group(0)
		if match.group(1):
			depth = max(depth - 1, 0)
			return "" if depth >= limit else match.group(0)
		depth += 1
		return "" if depth > limit else match.group(0)

	return _TAG.sub(keep_or_drop, html)


_CSS_FUNCTION = re.compile(r"([-\w]*)\s*\(")
_CSS_COLOUR_FUNCTIONS = frozenset({"rgb", "rgba", "hsl", "hsla"})


def _safe_style(style: str) -> str | None:
	"""Return the declarations of a style attribute that call no CSS function but a colour one.

	The property allow-list keeps url() properties out, but any value may hold expression() (which old
	Internet Explorer runs) or a CSS escape or comment that spells one; such declarations go whole.
	"""
	kept = []
	for declaration in style.split(";"):
		if "\\" in declaration or "/*" in declaration:
			continue
		if any(name.lower() not in _CSS_COLOUR_FUNCTIONS for name in _CSS_FUNCTION.findall(declaration)):
			continue
		kept.append(declaration)
	return ";".join(kept) if any(declaration.strip() for declaration in kept) else None


def _protocol_relative(url: str) -> str | None:
	"""Turn a protocol-relative URL ("//cdn.example/x.png") into https; drop any other relative URL."""
	return "https:" + url if url.startswith("//") else None


# The nonce and the parked URLs of the sanitize_html call under way (the cleaner is built once and shared)
_SANITIZING: ContextVar[tuple[str, list[str]]] = ContextVar("_SANITIZING")
_PARKED_SRC = re.compile(r'src="cid:([0-9a-f]{16})-([0-9]+)"')


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
	"""Keep only URLs that are safe where they appear; park remote image URLs (see sanitize_html)."""
	# Called before url_relative rewrites "//host/..." (and after javascript: etc. were dropped).
	url = value.strip()
	if url.startswith("//"):
		url = "https:" + url
	if attribute == "href":
		return url if url.lower().startswith(_LINK_SCHEMES) else None
	if attribute == "style":
		return _safe_style(value)
	if attribute != "src":
		return value
	if tag != "img":
		return None
	if url.lower().startswith("cid:") or _INLINE_IMAGE.match(url):
		return url
	if url.lower().startswith(_REMOTE_SCHEMES):
		nonce, remote = _SANITIZING.get()
		remote.append(url)
		return f"cid:{nonce}-{len(remote) - 1}"
	return None


@functools.cache
def _html_cleaner() -> nh3.Cleaner:
	"""The sanitizer, built once (building it took a tenth of a millisecond, per message)."""
	return nh3.Cleaner(
		tags=set(_ALLOWED_TAGS),
		clean_content_tags=set(_CONTENT_DROPPED_TAGS),
		attributes=_ALLOWED_ATTRIBUTES,
		attribute_filter=_filter_attribute,
		strip_comments=True,
		link_rel="noopener noreferrer nofollow",
		set_tag_attribute_values={"a": {"target": "_blank"}},
		url_schemes={"http", "https", "mailto", "tel", "cid", "data"},
		url_relative=_protocol_relative,
		filter_style_properties=set(_ALLOWED_STYLE_PROPERTIES),
	)


def sanitize_html(html: str) -> str:
	"""Return `html` made safe to show inside the desk: allow-listed tags and attributes only.

	Scripts, styles, frames, objects, forms, event handlers and javascript: URLs are removed; links open in
	a new tab with rel="noopener noreferrer nofollow". Remote images are not loaded: their http(s) URL
	moves from src to data-remote-src (a "load images" button can copy it back). cid: and inline
	data:image sources stay in src.

	The move happens inside the sanitizer's single parse: its attribute filter swaps each remote src for
	a placeholder carrying a per-call random nonce, and the placeholders in its output are then replaced,
	so no second HTML parser (whose reading could differ) ever sees the markup. The nonce and the parked
	URLs of this call reach the shared filter through a context variable (each thread has its own).
	"""
	nonce = secrets.token_hex(8)
	remote: list[str] = []
	call = _SANITIZING.set((nonce, remote))
	try:
		cleaned = _html_cleaner().clean(_limit_nesting(html))
	finally:
		_SANITIZING.reset(call)
	if not remote:
		return cleaned

	def park(match: re.Match[str]) -> str:
		if match.group(1) != nonce:
			return match.group(0)  # a placeholder-like text of the message itself
		index = int(match.group(2))
		if index >= len(remote):
			return ""
		return f'data-remote-src="{escape_html(remote[index], quote=True)}"'

	return _PARKED_SRC.sub(park, cleaned)


def html_to_text(html: str) -> str:
	"""Return a plain-text rendering of (sanitized) HTML: no line wrapping, no images, links kept."""
	converter = html2text.HTML2Text()
	converter.body_width = 0
	converter.ignore_images = True
	converter.ignore_emphasis = True
	converter.unicode_snob = True
	converter.skip_internal_links = True
	converter.single_line_break = False
	return converter.handle(html)


_META_CHARSET = re.compile(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]{1,40})", re.IGNORECASE)


def _sniff_html_charset(data: bytes) -> str | None:
	"""Return the charset declared by a <meta> tag near the start of an HTML document, if any."""
	match = _META_CHARSET.search(data[:4096])
	return match.group(1).decode("ascii") if match else None


# ---------------------------------------------------------------------------------------------------------
# Attachment file names

_EXTENSIONS = {
	"message/rfc822": ".eml",
	"message/global": ".eml",
	"message/partial": ".eml",
	"message/external-body": ".eml",
	"message/delivery-status": ".txt",
	"message/global-delivery-status": ".txt",
	"message/disposition-notification": ".txt",
	"message/feedback-report": ".txt",
	"text/rfc822-headers": ".txt",
	"text/plain": ".txt",
	"text/html": ".html",
	"text/calendar": ".ics",
	"application/ms-tnef": ".dat",
	"application/vnd.ms-tnef": ".dat",
	"application/pgp-signature": ".asc",
	"application/pgp-encrypted": ".asc",
	"application/pkcs7-signature": ".p7s",
	"application/x-pkcs7-signature": ".p7s",
	"application/pkcs7-mime": ".p7m",
	"application/x-pkcs7-mime": ".p7m",
	"application/octet-stream": ".bin",
	"application/pdf": ".pdf",
	"image/jpeg": ".jpg",
	"image/jpg": ".jpg",
	"image/png": ".png",
	"image/gif": ".gif",
}
# Built-in table only: the result must not depend on the machine's /etc/mime.types.
_MIME_TYPES = mimetypes.MimeTypes(filenames=())
_UNSAFE_FILENAME_CHARS = re.compile(r'[<>:"|?*]')
_RESERVED_NAMES = frozenset(
	{"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)
_EXTENSION = re.compile(r"\.[^.\s]{1,16}$")


def extension_for(content_type: str) -> str:
	"""Return a file extension (with dot) for a content type, ".bin" when none is known."""
	content_type = content_type.lower()
	if content_type in _EXTENSIONS:
		return _EXTENSIONS[content_type]
	guessed = _MIME_TYPES.guess_extension(content_type, strict=False)
	if guessed:
		return guessed
	return ".txt" if content_type.startswith("text/") else ".bin"


def _truncate_utf8(text: str, limit: int) -> str:
	"""Cut `text` to at most `limit` UTF-8 bytes without splitting a character."""
	return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def safe_filename(name: str | None, *, content_type: str = "application/octet-stream", index: int = 1) -> str:
	"""Return a file name that is safe to store: no path, no control or format characters, no leading
	dots, at most MAX_FILENAME_BYTES UTF-8 bytes with the extension kept.

	Falls back to "attachment-<index><ext>" (extension from the content type) when nothing usable is left.
	"""
	text = unicodedata.normalize("NFC", clean_text(name or ""))
	text = text.replace("\\", "/").rsplit("/", 1)[-1]
	text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp"))
	text = _UNSAFE_FILENAME_CHARS.sub("_", _WHITESPACE.sub(" ", text)).strip(" .")
	if not text:
		return f"attachment-{index}{extension_for(content_type)}"
	match = _EXTENSION.search(text)
	stem, extension = (text[: match.start()], match.group(0)) if match else (text, "")
	if stem.lower() in _RESERVED_NAMES:
		stem = "_" + stem
	stem = _truncate_utf8(stem, MAX_FILENAME_BYTES - len(extension.encode("utf-8"))).rstrip(" .")
	if not stem:
		stem = f"attachment-{index}"
	return stem + extension


# ---------------------------------------------------------------------------------------------------------
# The stdlib parser, guarded


class _PlainHeaderPolicy(EmailPolicy):
	"""`email.policy.default`, except that fetching a header returns its unfolded raw text (capped).

	The default policy parses every fetched header with `_header_value_parser`, which costs about 20 µs
	per byte on parameter lists (a 1 MB Content-Type takes minutes) and recurses once per nested comment
	(a few hundred "(" raise RecursionError). The parser only fetches Content-* headers, and the legacy
	parameter helpers (get_param, get_filename, get_content_type) work on plain strings, so nothing is
	lost: this module decodes every header value itself.
	"""

	def header_fetch_parse(self, name: str, value: str) -> str:  # type: ignore[override]
		"""Return the header value unfolded and capped at MAX_MIME_HEADER_VALUE characters."""
		if hasattr(value, "name"):
			return value
		value = _unfold(value)
		if len(value) > MAX_MIME_HEADER_VALUE:
			value = value[:MAX_MIME_HEADER_VALUE]
		return value


class _Message(EmailMessage):
	"""EmailMessage whose RFC 2231 parameter values carry only charset labels Python can decode with.

	get_boundary, get_filename and get_content_charset hand the label of a value like
	`boundary*=utf-8''abc` to str(), which raises UnicodeEncodeError, ValueError or UnicodeError on a label
	with 8-bit bytes or NUL, or naming idna or punycode; the parser itself calls get_boundary, so one such
	label failed the whole message. A label that decode_bytes would not use reads as UTF-8.
	"""

	def get_param(
		self, param: str, failobj: object = None, header: str = "content-type", unquote: bool = True
	) -> object:
		value = super().get_param(param, failobj, header, unquote)
		if isinstance(value, tuple) and len(value) == 3 and value[0] is not None:
			value = (_lookup_charset(value[0]) or "utf-8", value[1], value[2])
		return value


_POLICY = _PlainHeaderPolicy(message_factory=_Message)
_PARSER = BytesParser(policy=_POLICY)  # stateless between calls: each parse makes its own FeedParser


def _note(defects: list[str] | None, text: str) -> None:
	"""Append a defect note unless the list is missing or already full."""
	if defects is None:
		return
	if len(defects) < MAX_DEFECTS:
		defects.append(text)
	elif len(defects) == MAX_DEFECTS:
		defects.append(f"more than {MAX_DEFECTS} defects, rest not recorded")


def _looks_binary(data: bytes) -> bool:
	"""Tell whether `data` is binary content rather than text (NUL bytes or many control bytes)."""
	sample = data[:8192]
	if b"\x00" in sample:
		return True
	controls = sum(1 for byte in sample if byte < 9 or 13 < byte < 32)
	return controls > len(sample) // 10


def _flatten(part: Message, linesep: str) -> bytes:
	"""Serialize a parsed (sub)message back to bytes without recursion, however deep it nests.

	Header values and leaf bodies are written as they were read (raw, still transfer-encoded), which is
	what a .eml file of an enclosed message needs. BytesGenerator recurses per nesting level and fails on
	a few hundred levels; this keeps an explicit stack instead.
	"""
	out: list[str] = []
	stack: list[Message | str] = [part]
	while stack:
		item = stack.pop()
		if isinstance(item, str):
			out.append(item)
			continue
		for name, value in item.raw_items():
			out.append(f"{name}: {value}{linesep}")
		out.append(linesep)
		payload = _raw_payload(item)
		if isinstance(payload, list):
			children = [child for child in payload if isinstance(child, Message)]
			if item.get_content_maintype() == "multipart":
				boundary = item.get_boundary() or "=_machhelpdesk_boundary"
				sequence: list[Message | str] = []
				if item.preamble is not None:
					sequence.append(item.preamble + linesep)
				for child in children:
					sequence.append(f"--{boundary}{linesep}")
					sequence.append(child)
					sequence.append(linesep)
				sequence.append(f"--{boundary}--{linesep}")
				if item.epilogue:
					sequence.append(item.epilogue)
			else:
				sequence = list(children)
			stack.extend(reversed(sequence))
		elif isinstance(payload, str):
			out.append(payload)
		elif isinstance(payload, bytes):
			out.append(payload.decode("ascii", "surrogateescape"))
	return "".join(out).encode("utf-8", "surrogateescape")


_BOUNDARY_LINE = re.compile(r"^--([^\s\"]{1,200}?)(--)?[ \t]*\r?$", re.MULTILINE)


def _recover_multipart(body: str, content_type: str, linesep: str) -> Message | None:
	"""Re-read a multipart whose boundary was missing or wrong, using the first boundary-like line of
	its body ("--something" followed later by "--something" again). None when there is no such line."""
	match = _BOUNDARY_LINE.search(body, 0, 65536)
	if match is None:
		return None
	boundary = match.group(1)
	if body.count(f"--{boundary}") < 2:
		return None
	header = f'Content-Type: {content_type}; boundary="{boundary}"{linesep}{linesep}'
	rebuilt = (header + body).encode("utf-8", "surrogateescape")
	try:
		recovered = _parse_bytes(rebuilt)
	except RecursionError:
		return None
	payload = _raw_payload(recovered)
	return recovered if isinstance(payload, list) and payload else None


def _transfer_encoding(part: Message) -> str:
	"""Return the part's Content-Transfer-Encoding as one lower-case token ("base64;" -> "base64")."""
	value = part.get("content-transfer-encoding")
	if not value:
		return ""
	token = re.split(r"[\s;,]+", str(value).strip().lower(), maxsplit=1)[0]
	return token.strip("\"'")


def _raw_payload(part: Message) -> object:
	"""Return the part's payload exactly as parsed: a list of parts, or a str holding the raw bytes.

	`Message.get_payload()` re-decodes raw 8-bit bytes with the declared charset (replacing what does not
	fit), which destroys exactly the bodies whose charset lies; the stdlib's own generators read
	`_payload` for the same reason.
	"""
	return getattr(part, "_payload", None)


def _decode_payload(part: Message, defects: list[str], where: str) -> bytes:
	"""Return the decoded body bytes of a leaf part (base64/quoted-printable/uuencode, leniently)."""
	payload = _raw_payload(part)
	if isinstance(payload, bytes):
		raw = payload
	elif isinstance(payload, str):
		raw = payload.encode("utf-8", "surrogateescape")
	else:
		return b""
	encoding = _transfer_encoding(part)
	if encoding == "base64":
		decoded = _decode_b(raw)
		if decoded is None:
			_note(defects, f"{where}: base64 body unreadable, kept as is")
			return raw
		return decoded
	if encoding == "quoted-printable":
		return quopri.decodestring(raw)
	if encoding in ("x-uuencode", "uuencode", "x-uue", "uue"):
		try:
			decoded_uu = part.get_payload(decode=True)
		except Exception:
			decoded_uu = None
		return decoded_uu if isinstance(decoded_uu, bytes) else raw
	if encoding and encoding not in ("7bit", "8bit", "binary", "7-bit", "8-bit", "8bits", "7bits"):
		_note(defects, f"{where}: unknown Content-Transfer-Encoding {encoding[:40]!r}, body kept as is")
	return raw


def _safe_call(function: Callable[[], object], default: object) -> object:
	"""Return function(), or `default` when the stdlib helper raises on a malformed header."""
	try:
		result = function()
	except Exception:
		return default
	return default if result is None else result


_MIME_TYPE = re.compile(r"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+)")


def _content_type(part: Message) -> str:
	"""Return the part's content type, lower-case; "text/plain" when missing or garbage."""
	value = part.get("content-type")
	if value is None:
		value = _safe_call(part.get_content_type, "text/plain")
	match = _MIME_TYPE.match(str(value))
	return match.group(1).lower() if match else "text/plain"


def _disposition(part: Message) -> str | None:
	"""Return "inline", "attachment" or another lower-case disposition, None when absent."""
	value = _safe_call(part.get_content_disposition, None)
	return str(value).strip().lower() if isinstance(value, str) and value.strip() else None


def _part_filename(part: Message) -> str | None:
	"""Return the part's declared file name, decoded (RFC 2231 and RFC 2047), or None."""
	value = _safe_call(part.get_filename, None)
	if not isinstance(value, str) or not value.strip():
		return None
	return decode_header_value(value)


def _content_id(part: Message) -> str | None:
	"""Return the Content-ID without angle brackets, or None."""
	value = part.get("content-id")
	if not value:
		return None
	core = _WHITESPACE.sub("", _surrogate_text(str(value))).strip("<>")
	return core[:MAX_MESSAGE_ID] or None


def _part_charset(part: Message) -> str | None:
	"""Return the charset parameter of the part's Content-Type, or None."""
	value = _safe_call(lambda: part.get_param("charset"), None)
	if isinstance(value, tuple):
		value = value[2]
	return str(value) if value else None


# ---------------------------------------------------------------------------------------------------------
# Walking the MIME tree

_BODY_TYPES = ("text/plain", "text/html")


@dataclass
class _Bodies:
	"""Body text collected from a subtree: plain and HTML fragments in document order."""

	plain: list[str] = field(default_factory=list)
	html: list[str] = field(default_factory=list)

	def extend(self, other: "_Bodies") -> None:
		"""Append the fragments of another subtree."""
		self.plain.extend(other.plain)
		self.html.extend(other.html)


def _child_label(where: str, index: int) -> str:
	"""Return the IMAP-style number of a child part ("1.2.3"), shortened when nesting is deep."""
	label = f"{where}.{index}"
	return label if len(label) <= 48 else "…" + label[-47:]


class _MessageReader:
	"""Reads one parsed message: walks its parts once, collecting bodies, attachments and defects."""

	def __init__(
		self, root: Message, linesep: str, max_attachment_size: int | None, defects: list[str]
	) -> None:
		self.root = root
		self.linesep = linesep
		self.max_attachment_size = max_attachment_size
		self.defects = defects
		self.attachments: list[Attachment] = []
		self.enclosed_ids: list[str] = []
		self.part_types: list[str] = []
		self.parts_seen = 0
		self.capped = False

	# -- walking ----------------------------------------------------------------------------------------

	def read_bodies(self) -> _Bodies:
		"""Walk the whole tree; return the body fragments. Attachments and defects accumulate on self."""
		return self._visit(self.root, "1", 0, in_alternative=False)

	def _visit(self, part: Message, where: str, depth: int, *, in_alternative: bool) -> _Bodies:
		"""Visit one part: recurse into multiparts, read body parts, record everything else as attachment."""
		bodies = _Bodies()
		if self.parts_seen >= MAX_PARTS:
			if not self.capped:
				self.capped = True
				_note(self.defects, f"more than {MAX_PARTS} MIME parts, the rest were not read")
			return bodies
		self.parts_seen += 1
		try:
			self._record_stdlib_defects(part, where)
			content_type = _content_type(part)
			self.part_types.append(content_type)
			payload = _raw_payload(part)
			if isinstance(payload, str) and content_type.startswith("multipart/"):
				recovered = _recover_multipart(payload, content_type, self.linesep)
				if recovered is not None:
					_note(
						self.defects, f"{where}: boundary recovered from the body of a broken {content_type}"
					)
					payload = _raw_payload(recovered)
			if isinstance(payload, list) and content_type.startswith("multipart/"):
				if depth >= MAX_DEPTH:
					_note(self.defects, f"{where}: multipart nested deeper than {MAX_DEPTH} levels, not read")
					return bodies
				return self._visit_multipart(part, content_type, payload, where, depth)
			if isinstance(payload, list):
				self._add_enclosed_message(part, content_type, payload, where)
				return bodies
			self._visit_leaf(part, content_type, where, bodies, in_alternative=in_alternative)
		except RecursionError:
			_note(self.defects, f"{where}: nested too deeply, skipped")
		except Exception as exc:
			_note(self.defects, f"{where}: part skipped after {type(exc).__name__}: {str(exc)[:200]}")
		return bodies

	def _visit_multipart(
		self, part: Message, content_type: str, children: list, where: str, depth: int
	) -> _Bodies:
		"""Visit a multipart's children; for multipart/alternative keep one plain and one HTML rendering."""
		parts = [child for child in children if isinstance(child, Message)]
		if not parts:
			_note(self.defects, f"{where}: {content_type} without parts")
		if content_type != "multipart/alternative":
			bodies = _Bodies()
			for index, child in enumerate(parts, 1):
				bodies.extend(self._visit(child, _child_label(where, index), depth + 1, in_alternative=False))
			return bodies
		rendered = [
			self._visit(child, _child_label(where, index), depth + 1, in_alternative=True)
			for index, child in enumerate(parts, 1)
		]
		chosen = _Bodies()
		# RFC 2046 5.1.4: alternatives are in increasing order of preference, so the last HTML one wins;
		# for plain text the first rendering that has any is the one meant as text.
		for alternative in rendered:
			if alternative.plain:
				chosen.plain = alternative.plain
				break
		for alternative in reversed(rendered):
			if alternative.html:
				chosen.html = alternative.html
				break
		return chosen

	def _visit_leaf(
		self, part: Message, content_type: str, where: str, bodies: _Bodies, *, in_alternative: bool
	) -> None:
		"""Read a leaf part either as body text or as an attachment."""
		disposition = _disposition(part)
		filename = _part_filename(part)
		is_root = part is self.root
		treat_as_text = content_type in _BODY_TYPES or content_type.startswith(("multipart/", "message/"))
		if content_type.startswith(("multipart/", "message/")):
			# a multipart/message part whose structure could not be read: show what is there as text
			_note(self.defects, f"{where}: {content_type} part has no readable structure, read as text")
		is_body = (
			treat_as_text
			and disposition != "attachment"
			and (filename is None or (is_root and disposition is None))
		)
		if is_body:
			data = _decode_payload(part, self.defects, where)
			charset = _part_charset(part)
			if content_type == "text/html":
				text = decode_bytes(data, charset or _sniff_html_charset(data))
				bodies.html.append(text)
			else:
				bodies.plain.append(decode_bytes(data, charset))
			return
		if content_type == "text/rfc822-headers":
			self._add_enclosed_headers(part, where)
		if (
			in_alternative
			and content_type.startswith("text/")
			and content_type != "text/calendar"
			and not filename
		):
			return  # another rendering of the same body (text/enriched ...), not a file
		self._add_attachment(part, content_type, disposition, filename, where)

	# -- attachments ------------------------------------------------------------------------------------

	def _add_attachment(
		self, part: Message, content_type: str, disposition: str | None, filename: str | None, where: str
	) -> None:
		"""Record a leaf part as an attachment (empty unnamed parts are skipped).

		A base64 part larger than max_attachment_size is measured, never decoded.
		"""
		content_id = _content_id(part)
		inline = disposition == "inline" or (disposition is None and content_id is not None)
		size = self._base64_size_over_limit(part)
		if size is not None:
			self._append_attachment(filename, content_type, b"", content_id, inline, size=size)
			return
		data = _decode_payload(part, self.defects, where)
		if (not data or data.isspace()) and not filename:
			return
		self._append_attachment(filename, content_type, data, content_id, inline)

	def _base64_size_over_limit(self, part: Message) -> int | None:
		"""Return the decoded size of a base64 part when it is over max_attachment_size, else None."""
		payload = _raw_payload(part)
		if (
			self.max_attachment_size is None
			or not isinstance(payload, str)
			or len(payload) // 4 * 3 <= self.max_attachment_size  # base64 never decodes to more
			or _transfer_encoding(part) != "base64"
		):
			return None
		size = _base64_size(payload.encode("utf-8", "surrogateescape"))
		return size if size > self.max_attachment_size else None

	def _append_attachment(
		self,
		filename: str | None,
		content_type: str,
		data: bytes,
		content_id: str | None,
		inline: bool,
		*,
		size: int | None = None,
	) -> None:
		"""Append an Attachment with a safe name, honouring max_attachment_size (`size` when `data` was
		not decoded)."""
		index = len(self.attachments) + 1
		name = safe_filename(filename, content_type=content_type, index=index)
		size = len(data) if size is None else size
		oversized = self.max_attachment_size is not None and size > self.max_attachment_size
		self.attachments.append(
			Attachment(
				filename=name,
				content_type=content_type,
				content=b"" if oversized else data,
				size=size,
				content_id=content_id,
				inline=inline,
				oversized=oversized,
			)
		)

	def _add_enclosed_message(self, part: Message, content_type: str, payload: list, where: str) -> None:
		"""Attach a message/* part as one .eml file (not walked further) and remember its Message-ID."""
		enclosed = [child for child in payload if isinstance(child, Message)]
		if content_type in ("message/delivery-status", "message/global-delivery-status"):
			data = b"".join(_flatten(block, self.linesep) for block in enclosed)
			if not data.strip():
				return
			self._append_attachment(_part_filename(part), content_type, data, _content_id(part), False)
			return
		if not enclosed:
			return
		data = _flatten(enclosed[0], self.linesep)
		if _transfer_encoding(part) in ("base64", "quoted-printable"):
			# message/* may not be encoded (RFC 2046 5.2.1), but some mailers do; the stdlib then parsed
			# the encoded text as if it were headers
			_note(self.defects, f"{where}: {content_type} with a transfer encoding, decoded")
			decoded = _decode_b(data) if _transfer_encoding(part) == "base64" else quopri.decodestring(data)
			data = decoded or data
			headers = _safe_call(lambda: _PARSER.parsebytes(data, headersonly=True), None)
			message_id = headers.get("message-id") if isinstance(headers, Message) else None
			subject = headers.get("subject") if isinstance(headers, Message) else None
		else:
			message_id = enclosed[0].get("message-id")
			subject = enclosed[0].get("subject")
		normalized = normalize_message_id(str(message_id)) if message_id else None
		if normalized and normalized not in self.enclosed_ids:
			self.enclosed_ids.append(normalized)
		filename = _part_filename(part)
		if filename is None and subject:
			filename = _single_line(decode_header_value(str(subject)), 120)
		if filename and not _EXTENSION.search(filename.strip().rstrip(".")):
			filename = filename.strip().rstrip(".") + ".eml"
		disposition = _disposition(part)
		self._append_attachment(filename, content_type, data, _content_id(part), disposition == "inline")

	def _add_enclosed_headers(self, part: Message, where: str) -> None:
		"""Remember the Message-ID of a text/rfc822-headers part (the headers of a bounced message)."""
		data = _decode_payload(part, self.defects, where)
		headers = _safe_call(lambda: _PARSER.parsebytes(data, headersonly=True), None)
		if isinstance(headers, Message):
			normalized = normalize_message_id(str(headers.get("message-id") or ""))
			if normalized and normalized not in self.enclosed_ids:
				self.enclosed_ids.append(normalized)

	def _record_stdlib_defects(self, part: Message, where: str) -> None:
		"""Turn the stdlib's defect objects on a part into readable notes."""
		for defect in getattr(part, "defects", ()) or ():
			doc_lines = (type(defect).__doc__ or "").strip().splitlines()
			detail = str(defect) or (doc_lines[0] if doc_lines else "")
			_note(self.defects, f"{where}: {type(defect).__name__}" + (f": {detail[:200]}" if detail else ""))


# ---------------------------------------------------------------------------------------------------------
# Entry point


def _parse_date(value: str, defects: list[str]) -> datetime | None:
	"""Return the Date header as an aware datetime (UTC when it has no zone), None when unparsable."""
	if not value.strip():
		return None
	try:
		parsed = parsedate_to_datetime(value.strip())
	except Exception:
		parsed = None
	if parsed is None:
		_note(defects, f"Date: unparsable value {value[:80]!r}")
		return None
	if parsed.tzinfo is None:
		parsed = parsed.replace(tzinfo=timezone.utc)
	return parsed


def _read_headers(root: Message, defects: list[str]) -> list[tuple[str, str]]:
	"""Return the root's header fields decoded to text, at most MAX_HEADERS, values capped."""
	headers: list[tuple[str, str]] = []
	items = list(root.raw_items())
	if len(items) > MAX_HEADERS:
		_note(defects, f"{len(items)} header fields, only the first {MAX_HEADERS} kept")
		items = items[:MAX_HEADERS]
	for name, value in items:
		raw_value = value if isinstance(value, str) else str(value)
		if len(raw_value) > MAX_HEADER_VALUE:
			_note(defects, f"{name[:60]}: value longer than {MAX_HEADER_VALUE} characters, cut")
			raw_value = raw_value[:MAX_HEADER_VALUE]
		headers.append((_single_line(_surrogate_text(name), 200), decode_header_value(raw_value)))
	return headers


def _raw_values(root: Message, name: str, limit: int = MAX_HEADER_VALUE) -> list[str]:
	"""Return the raw (undecoded) values of a root header, each capped at `limit` characters."""
	wanted = name.lower()
	return [str(value)[:limit] for key, value in root.raw_items() if key.lower() == wanted]


_FEED_CHUNK = 64 * 1024


def _parse_bytes(data: bytes) -> Message:
	"""Parse bytes with the stdlib parser, fed in slices.

	BytesParser.parsebytes first copies the whole input into a str and that into a StringIO, at four
	bytes per character: a 50 MB message cost 520 MB before the parser read a line. Fed in slices, the
	memory is the parser's own lines and parts. The result is the same: parsebytes feeds the same parser.
	"""
	feeder = BytesFeedParser(policy=_POLICY)
	for start in range(0, len(data), _FEED_CHUNK):
		feeder.feed(data[start : start + _FEED_CHUNK])
	return feeder.close()


def _parse_tree_stdlib(data: bytes, defects: list[str]) -> Message:
	"""Parse bytes with the stdlib; on a structure too deep to parse, keep the headers and the raw body."""
	try:
		return _parse_bytes(data)
	except RecursionError:
		_note(defects, "MIME structure nested too deeply to parse; body kept as raw text")
	return _PARSER.parsebytes(data, headersonly=True)


def _parse_tree(data: bytes, defects: list[str]) -> Message:
	"""Build the MIME tree with the fast splitter; fall back to the stdlib parser for anything unusual."""
	root = _split_tree(data)
	return root if root is not None else _parse_tree_stdlib(data, defects)


# ---------------------------------------------------------------------------------------------------------
# The MIME tree, split at C speed
#
# The stdlib feed parser reads every line of every body in Python (a readline, a check against every
# enclosing boundary, one string per line) and compiles a regular expression per boundary: 60% of the
# time of parse_message on real mail, and about 60 bytes per line (a 40 MB body of short lines took
# 2.6 GB). The splitter below builds the same tree (same classes, header lists, payload strings,
# preambles, epilogues, default types, defects) from whole slices: a header block ends at the first line
# that is no header field, a multipart body is cut at its boundary lines, found with bytes.find. It
# follows FeedParser._parsegen step by step, also where the stdlib records the common defects (no
# blank line after the headers, no boundary parameter, no start or no close boundary line). Where the
# stdlib reads lines in a way of its own (a lone CR ends a line, two boundary lines in a row, a header
# block that starts with white space or has "From " inside, nesting deeper than _FAST_MAX_DEPTH), it
# gives up and the stdlib parses the whole message. tests/test_parser_equivalence.py holds it to the
# stdlib's tree and ParsedMessage on the corpus, the fixtures, the hostile cases and mutations of them.

_FAST_MAX_DEPTH = 40  # messages nested inside each other; deeper trees go to the stdlib
_FAST_BOUNDARY_SCAN = 4096  # boundary look-alikes checked one by one before one regex scans the rest
# FeedParser's headerRE, line after line: field name and colon, "From ", or folding white space. Lines
# end in LF or CRLF (input with a lone CR never gets here).
_HEADER_BLOCK = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\r\n]*(?:\r?\n|\Z))*")
_HEADER_LINE = re.compile(r"[^\n]*\n|[^\n]+")
# One field of such a block: name, colon, value with its continuation lines (EmailPolicy.header_source_parse
# strips the blanks after the colon and the final line break).
_HEADER_FIELD = re.compile(r"^([\x21-\x39\x3b-\x7e]+):[ \t]*([^\n]*(?:\n[ \t][^\n]*)*)", re.MULTILINE)
# What may follow "--boundary" on a boundary line (FeedParser's boundaryre after the separator).
_BOUNDARY_TAIL = re.compile(rb"(--)?[ \t]*(?:\r?\n|\Z)")
_BLANK_LINE = re.compile(rb"^\r?\n", re.MULTILINE)
_LONE_CR = re.compile(rb"\r(?!\n)")


class _NeedsStdlib(Exception):
	"""The message holds something the fast splitter leaves to the stdlib parser."""


def _strip_eol(text: str) -> str:
	"""Remove one trailing line break (FeedParser's NLCRE_eol)."""
	if text.endswith("\r\n"):
		return text[:-2]
	if text.endswith(("\n", "\r")):
		return text[:-1]
	return text


class _TreeSplitter:
	"""Builds the stdlib parser's message tree of `data` from whole slices; see _split_tree.

	Each method reads one region data[start:end], which ends where the stdlib parser would see a false
	EOF (the next boundary line of an enclosing multipart) or at the end of the input. It keeps the
	parser's `_last` bookkeeping: after each part of a multipart, the last message created (the part, or
	the innermost last message inside it) loses the line break that belongs to the next boundary line.
	"""

	def __init__(self, data: bytes) -> None:
		self.data = data
		self.last: Message | None = None
		self.types: dict[int, str] = {}  # id(message) -> get_content_type(), read once after its headers

	def text(self, start: int, end: int) -> str:
		"""data[start:end] as the stdlib holds it: ASCII, other bytes as surrogate escapes."""
		return self.data[start:end].decode("ascii", "surrogateescape")

	def message(self, start: int, end: int, parent: Message | None, depth: int) -> Message:
		"""Read the message (or part) in data[start:end]: header block, blank line, body."""
		if depth > _FAST_MAX_DEPTH:
			raise _NeedsStdlib
		msg = self.new_message(parent)
		header_end = self.headers(msg, start, end)
		if header_end == end:
			body = end  # the headers run to the end: no body, no defect
		elif self.data.startswith(b"\n", header_end):
			body = header_end + 1
		elif self.data.startswith(b"\r\n", header_end):
			body = header_end + 2
		else:  # the line is the first of the body
			_POLICY.handle_defect(msg, errors.MissingHeaderBodySeparatorDefect())
			body = header_end
		content_type = self.types[id(msg)] = msg.get_content_type()
		if content_type == "message/delivery-status":
			self.delivery_status(msg, body, end)
		elif content_type.startswith("message/"):
			self.message(body, end, msg, depth + 1)
		elif content_type.startswith("multipart/"):
			self.multipart(msg, body, end, depth)
		else:
			msg.set_payload(self.text(body, end))
		return msg

	def new_message(self, parent: Message | None) -> Message:
		"""FeedParser._new_message: a part of a multipart/digest defaults to message/rfc822."""
		msg = _Message(policy=_POLICY)
		if parent is not None:
			if self.types[id(parent)] == "multipart/digest":
				msg.set_default_type("message/rfc822")
			parent.attach(msg)
		self.last = msg
		return msg

	def headers(self, msg: Message, start: int, end: int) -> int:
		"""Set the header fields of data[start:...] on msg; return where the header block ends."""
		header_end = _HEADER_BLOCK.match(self.data, start, end).end()
		if header_end == start:
			return start
		block = self.text(start, header_end)
		if not (block[0] in " \t:" or block.startswith("From ") or "\nFrom " in block or "\n:" in block):
			# every line is "name:" or a continuation of one: header_source_parse, a field at a time
			msg._headers = [(name, value.rstrip("\r\n")) for name, value in _HEADER_FIELD.findall(block)]
			return header_end
		# FeedParser._parse_headers, without the lines on which it records a defect or pushes back
		last_name = ""
		last_value: list[str] = []
		for number, line in enumerate(_HEADER_LINE.findall(block)):
			if line[0] in " \t":
				if not last_name:
					raise _NeedsStdlib  # FirstHeaderLineIsContinuationDefect
				last_value.append(line)
				continue
			if last_name:
				msg.set_raw(*_POLICY.header_source_parse(last_value))
				last_name, last_value = "", []
			if line.startswith("From "):
				if number:
					raise _NeedsStdlib  # MisplacedEnvelopeHeaderDefect, or the first line of the body
				msg.set_unixfrom(_strip_eol(line))
				continue
			colon = line.find(":")
			if colon <= 0:
				raise _NeedsStdlib  # InvalidHeaderDefect("Missing header name.")
			last_name = line[:colon]
			last_value = [line]
		if last_name:
			msg.set_raw(*_POLICY.header_source_parse(last_value))
		return header_end

	def delivery_status(self, msg: Message, start: int, end: int) -> None:
		"""message/delivery-status: one part per block of header fields, blocks split by blank lines."""
		data = self.data
		position = start
		while True:
			block = self.new_message(msg)
			header_end = self.headers(block, position, end)
			stop = header_end  # the blank line ending the block (not read yet), or the end
			if header_end != end and not data.startswith((b"\n", b"\r\n"), header_end):
				_POLICY.handle_defect(block, errors.MissingHeaderBodySeparatorDefect())
				blank = _BLANK_LINE.search(data, header_end, end)
				stop = blank.start() if blank else end
			if block.get_content_type() != "text/plain":
				raise _NeedsStdlib  # a block that declares a type of its own
			self.types[id(block)] = "text/plain"
			block.set_payload(self.text(header_end, stop))
			if stop == end:
				return
			position = stop + (1 if data[stop] == 0x0A else 2)  # past the blank line
			if position == end:
				return

	def multipart(self, msg: Message, start: int, end: int, depth: int) -> None:
		"""Split a multipart body at its boundary lines: preamble, parts, epilogue."""
		boundary = msg.get_boundary()
		if boundary is None:
			_POLICY.handle_defect(msg, errors.NoBoundaryInMultipartDefect())
			msg.set_payload(self.text(start, end))
			return
		if str(msg.get("content-transfer-encoding", "8bit")).lower() not in ("7bit", "8bit", "binary"):
			_POLICY.handle_defect(msg, errors.InvalidMultipartContentTransferEncodingDefect())
		try:
			separator = ("--" + boundary).encode("ascii", "surrogateescape")
		except UnicodeEncodeError:  # a character no line of the input can hold: no boundary line
			separator = b"\n"
		# a line break inside the boundary (RFC 2231 "%0A") never matches a line either
		lines = [] if b"\n" in separator or b"\r" in separator else self.boundary_lines(separator, start, end)
		if not lines or lines[0][2]:
			# StartBoundaryNotFoundDefect: what came before a close boundary line (or the end) is the
			# payload; anything after it is dropped
			_POLICY.handle_defect(msg, errors.StartBoundaryNotFoundDefect())
			msg.set_payload(self.text(start, lines[0][0] if lines else end))
			msg.epilogue = ""
			return
		if lines[0][0] > start:
			msg.preamble = _strip_eol(self.text(start, lines[0][0]))
		closed = lines[-1][2]
		for index, (_line_start, part_start, _close) in enumerate(lines):
			if index + 1 < len(lines):
				part_end = lines[index + 1][0]
				if part_end == part_start:
					raise _NeedsStdlib  # a boundary line right after another: the stdlib skips both
			elif closed:
				break
			else:
				if part_start == end:
					raise _NeedsStdlib  # the input ends on a separator line
				part_end = end
			self.message(part_start, part_end, msg, depth + 1)
			self.cleanse_last()
			self.last = msg
		if closed:
			msg.epilogue = self.text(lines[-1][1], end)
		else:
			_POLICY.handle_defect(msg, errors.CloseBoundaryNotFoundDefect())

	def boundary_lines(self, separator: bytes, start: int, end: int) -> list[tuple[int, int, bool]]:
		"""Return (start, end, is_close) of the boundary lines in data[start:end], up to the close one."""
		data = self.data
		found: list[tuple[int, int, bool]] = []
		position = data.find(separator, start, end)
		checked = 0
		while position >= 0:
			checked += 1
			if checked > _FAST_BOUNDARY_SCAN:
				return found + self.boundary_lines_by_regex(separator, position, end)
			if position == start or data[position - 1] == 0x0A:
				tail = _BOUNDARY_TAIL.match(data, position + len(separator), end)
				if tail is not None:
					close = tail.group(1) is not None
					found.append((position, tail.end(), close))
					if close:
						break
			position = data.find(separator, position + 1, end)
		return found

	def boundary_lines_by_regex(self, separator: bytes, start: int, end: int) -> list[tuple[int, int, bool]]:
		"""boundary_lines for a body full of look-alikes ("--a" in every line): one compiled scan."""
		pattern = re.compile(rb"^" + re.escape(separator) + rb"(--)?[ \t]*(?:\r?\n|\Z)", re.MULTILINE)
		found: list[tuple[int, int, bool]] = []
		for match in pattern.finditer(self.data, start, end):
			found.append((match.start(), match.end(), match.group(1) is not None))
			if match.group(1) is not None:
				break
		return found

	def cleanse_last(self) -> None:
		"""The line break before a boundary line belongs to it, not to the last message read (RFC 2046)."""
		last = self.last
		if last is None:
			return
		if self.types[id(last)].startswith("multipart/"):
			if last.epilogue == "":
				last.epilogue = None
			elif last.epilogue is not None:
				last.epilogue = _strip_eol(last.epilogue)
		elif isinstance(last._payload, str):
			last._payload = _strip_eol(last._payload)


def _split_tree(data: bytes) -> Message | None:
	"""Return the stdlib parser's message tree of `data`, built by _TreeSplitter; None when the stdlib
	must parse it: input with a lone CR (where the stdlib ends a line too), anything the splitter does
	not take, and any error of a stdlib helper it calls (the stdlib parser then meets the same error)."""
	if b"\r" in data and _LONE_CR.search(data):
		return None
	try:
		root = _TreeSplitter(data).message(0, len(data), None, 0)
	except Exception:
		return None
	if root.get_content_maintype() == "multipart" and not root.is_multipart():
		_POLICY.handle_defect(root, errors.MultipartInvariantViolationDefect())
	return root


def parse_message(raw: bytes, *, max_attachment_size: int | None = None) -> ParsedMessage:
	"""Parse the raw bytes of one email into a ParsedMessage.

	Attachments larger than `max_attachment_size` bytes (when given) are listed with content=b"" and
	oversized=True, and the size they decode to (base64 ones are measured, not decoded). Raises MessageParseError, and only that, when `raw` is empty or not a message.
	"""
	return _parse_message(raw, max_attachment_size, _parse_tree)


def _parse_message_stdlib(raw: bytes, *, max_attachment_size: int | None = None) -> ParsedMessage:
	"""parse_message with the MIME tree always built by the stdlib parser: the reference that
	tests/test_parser_equivalence.py holds the fast splitter to."""
	return _parse_message(raw, max_attachment_size, _parse_tree_stdlib)


def _parse_message(
	raw: bytes, max_attachment_size: int | None, parse_tree: Callable[[bytes, list[str]], Message]
) -> ParsedMessage:
	"""Check the input and run _parse; anything but MessageParseError escaping it is turned into one."""
	if not isinstance(raw, bytes | bytearray | memoryview):
		raise MessageParseError(f"expected bytes, got {type(raw).__name__}")
	raw = bytes(raw)
	if not raw or raw.isspace():  # not raw.strip(): that copies the whole message
		raise MessageParseError("empty message")
	try:
		return _parse(raw, max_attachment_size, parse_tree)
	except MessageParseError:
		raise
	except Exception as exc:
		raise MessageParseError(f"unexpected {type(exc).__name__} while parsing: {str(exc)[:200]}") from exc


def _parse(
	raw: bytes, max_attachment_size: int | None, parse_tree: Callable[[bytes, list[str]], Message]
) -> ParsedMessage:
	"""Do the work of parse_message; exceptions escaping here are turned into MessageParseError."""
	defects: list[str] = []
	data = raw
	if data[:1] in (b"\r", b"\n", b" ", b"\t"):
		# the stdlib would take the first empty line as the end of an empty header block
		data = data.lstrip(b"\r\n \t")
		_note(defects, "blank lines before the headers removed")
	root = parse_tree(data, defects)
	if not root.keys():
		if _looks_binary(data):
			raise MessageParseError("no header fields and binary content: not an email message")
		_note(defects, "no header fields: the whole input was read as the body")
	linesep = "\r\n" if b"\r\n" in data[:8192] else "\n"

	headers = _read_headers(root, defects)
	parsed = ParsedMessage(headers=headers, size=len(raw), content_hash=hashlib.sha256(raw).hexdigest())
	parsed.subject = _single_line(parsed.first_header("Subject"), MAX_SUBJECT)
	parsed.message_id = normalize_message_id(parsed.first_header("Message-ID"))
	parsed.in_reply_to = parse_message_id_list(parsed.header("In-Reply-To"))
	parsed.references = parse_message_id_list(parsed.header("References"))
	parsed.date = _parse_date(parsed.first_header("Date"), defects)

	from_addresses = parse_address_header(_raw_values(root, "From", MAX_ADDRESS_HEADER), defects, "From")
	parsed.sender = from_addresses[0] if from_addresses else None
	if parsed.sender is None and parsed.first_header("From").strip():
		_note(defects, "From: no readable address")
	parsed.reply_to = parse_address_header(
		_raw_values(root, "Reply-To", MAX_ADDRESS_HEADER), defects, "Reply-To"
	)
	parsed.to = parse_address_header(_raw_values(root, "To", MAX_ADDRESS_HEADER), defects, "To")
	parsed.cc = parse_address_header(_raw_values(root, "Cc", MAX_ADDRESS_HEADER), defects, "Cc")
	parsed.content_type = _content_type(root)

	reader = _MessageReader(root, linesep, max_attachment_size, defects)
	bodies = reader.read_bodies()
	parsed.attachments = reader.attachments
	parsed.enclosed_message_ids = reader.enclosed_ids
	parsed.part_content_types = reader.part_types

	html = "\n".join(fragment for fragment in bodies.html if fragment.strip())
	if html:
		if len(html) > MAX_HTML_CHARS:
			_note(defects, f"HTML body longer than {MAX_HTML_CHARS} characters, cut")
			html = html[:MAX_HTML_CHARS]
		parsed.html = _sanitize_for_display(html, defects)
	plain = "\n\n".join(fragment for fragment in bodies.plain if fragment.strip())
	if not plain.strip() and parsed.html is not None:
		source = parsed.html
		if len(source) > MAX_HTML_TEXT_CHARS:
			_note(
				defects, f"HTML body longer than {MAX_HTML_TEXT_CHARS} characters, text made from the start"
			)
			source = source[:MAX_HTML_TEXT_CHARS]
		plain = _html_text(source, defects)
	parsed.text = _body_text(plain).strip("\n")
	parsed.defects = defects
	return parsed


def _sanitize_for_display(html: str, defects: list[str]) -> str:
	"""Sanitize the HTML body; on a failure of the HTML tools, fall back to escaped text."""
	try:
		return clean_text(sanitize_html(html)).strip()
	except Exception as exc:
		_note(defects, f"HTML body could not be sanitized ({type(exc).__name__}); shown as text")
		return "<pre>" + nh3.clean_text(html) + "</pre>"


def _html_text(html: str, defects: list[str]) -> str:
	"""Convert the sanitized HTML body to text; fall back to bs4's text extraction on failure."""
	try:
		return html_to_text(html)
	except Exception as exc:
		_note(defects, f"HTML body could not be converted to text ({type(exc).__name__})")
		try:
			return BeautifulSoup(html, "html.parser").get_text("\n")
		except Exception:
			return ""
