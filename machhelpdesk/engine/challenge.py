"""One-time challenge tokens, challenge rate limits and the sender-authentication check.

Challenge-response: mail from an unknown sender is held, and the sender gets a link carrying a
random token; following it confirms the address and releases the mail. This module is the part
of that which needs no database:

- tokens come from :mod:`secrets` (256 bits), and only their SHA-256 is stored, so a leaked table
  cannot be replayed; comparison is constant-time and refuses malformed input without raising;
- the clock is always passed in, so expiry is testable and follows the caller's notion of "now";
- :func:`challenge_allowed` keeps the helpdesk from becoming a backscatter source: one outstanding
  challenge per address, a daily cap per address and an hourly cap overall;
- :func:`make_form_nonce` and :func:`form_nonce_valid` protect the confirmation page: only a POST
  carrying a nonce from the page's own GET confirms, so a mail scanner that visits links confirms nothing;
- :func:`read_authentication_results` reads the ``Authentication-Results`` header (RFC 8601) that
  the receiving server added, so that a forged sender (SPF and DKIM both failing) is not challenged
  at all: challenging it would send mail to an innocent third party.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

TOKEN_BYTES = 32
# secrets.token_urlsafe(n) is base64url without padding: ceil(4n / 3) characters.
TOKEN_LENGTH = math.ceil(TOKEN_BYTES * 4 / 3)
HASH_LENGTH = 64  # hex digits of SHA-256
_TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX_DIGITS = frozenset("0123456789abcdef")

# Methods read from Authentication-Results; other methods (arc, bimi, iprev, ...) are ignored.
AUTH_METHODS = ("spf", "dkim", "dmarc")


@dataclass(frozen=True)
class IssuedToken:
	"""A fresh token: send ``token`` to the sender, store only ``token_hash`` and ``expires_at``."""

	token: str
	token_hash: str
	expires_at: datetime


def issue_token(now: datetime, valid_for: timedelta) -> IssuedToken:
	"""Return a new random token, its hash and its expiry (``now + valid_for``).

	Raises ValueError if ``valid_for`` is not positive.
	"""
	if valid_for <= timedelta(0):
		raise ValueError(f"valid_for must be positive, not {valid_for}")
	token = secrets.token_urlsafe(TOKEN_BYTES)
	return IssuedToken(token=token, token_hash=hash_token(token), expires_at=now + valid_for)


def hash_token(token: str) -> str:
	"""Return the SHA-256 of ``token`` as 64 lower-case hex digits (what the database stores)."""
	return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_token(value: str) -> bool:
	"""Return True if ``value`` has the shape of an issued token: the right length, base64url only.

	A cheap check to refuse junk before any database lookup; it never raises.
	"""
	return isinstance(value, str) and len(value) == TOKEN_LENGTH and _TOKEN_ALPHABET.issuperset(value)


def token_matches(token: str, stored_hash: str) -> bool:
	"""Return True if ``token`` hashes to ``stored_hash``, comparing in constant time.

	Malformed input of any kind (wrong length, non-ASCII, even not a string) gives False; never raises.
	"""
	if not looks_like_token(token) or not isinstance(stored_hash, str):
		return False
	expected = stored_hash.strip().lower()
	if len(expected) != HASH_LENGTH or not _HEX_DIGITS.issuperset(expected):
		return False
	return hmac.compare_digest(hash_token(token), expected)


def is_expired(expires_at: datetime, now: datetime) -> bool:
	"""Return True if a token expiring at ``expires_at`` is no longer valid at ``now``.

	The expiry instant itself counts as expired. Both datetimes must be naive, or both aware:
	mixing them raises ValueError rather than guessing a timezone.
	"""
	if (expires_at.utcoffset() is None) != (now.utcoffset() is None):
		raise ValueError("expires_at and now must both be naive or both be timezone-aware")
	return now >= expires_at


# The confirmation page's form nonce: the Confirm button's POST must carry one from the page's GET.
NONCE_VALID_SECONDS = 12 * 60 * 60


def make_form_nonce(key: str | bytes, token_hash: str, now: float) -> str:
	"""Return a nonce for the confirmation form of the challenge whose token hashes to ``token_hash``.

	``now`` is the time in seconds since the epoch and ``key`` a server secret. The nonce is
	``<seconds>.<HMAC-SHA256 of the token hash and the seconds>``: nothing is stored, and a POST
	without a GET of the page first (a link scanner guessing at forms) has none.
	"""
	stamp = int(now)
	return f"{stamp}.{_nonce_mac(key, token_hash, stamp)}"


def form_nonce_valid(
	nonce: str, key: str | bytes, token_hash: str, now: float, valid_for: int = NONCE_VALID_SECONDS
) -> bool:
	"""Return True if ``nonce`` was made by :func:`make_form_nonce` for this token hash, with this key,
	at most ``valid_for`` seconds before ``now`` (and not in the future). Never raises."""
	if not isinstance(nonce, str) or not isinstance(token_hash, str) or len(nonce) > 100:
		return False
	stamp_text, sep, mac = nonce.partition(".")
	if not sep or not stamp_text.isascii() or not stamp_text.isdigit() or len(stamp_text) > 12:
		return False
	stamp = int(stamp_text)
	if not 0 <= int(now) - stamp <= valid_for:
		return False
	expected = _nonce_mac(key, token_hash, stamp)
	return mac.isascii() and hmac.compare_digest(mac, expected)


def _nonce_mac(key: str | bytes, token_hash: str, stamp: int) -> str:
	key_bytes = key.encode("utf-8") if isinstance(key, str) else key
	message = f"mh-confirm|{token_hash}|{stamp}".encode()
	return hmac.new(key_bytes, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class RateDecision:
	"""Whether a challenge may be sent now, and why (plain words, for the ledger and the log)."""

	allowed: bool
	reason: str


def challenge_allowed(
	*,
	outstanding_for_address: int,
	sent_to_address_last_24h: int,
	sent_globally_last_hour: int,
	per_address_daily_cap: int = 3,
	global_hourly_cap: int,
) -> RateDecision:
	"""Decide whether one more challenge may be sent to an address.

	At most one challenge is outstanding per address; at most ``per_address_daily_cap`` are sent to
	an address in 24 hours; at most ``global_hourly_cap`` are sent in an hour overall. A cap of 0
	means unlimited. Counts and caps must not be negative (ValueError).
	"""
	numbers = {
		"outstanding_for_address": outstanding_for_address,
		"sent_to_address_last_24h": sent_to_address_last_24h,
		"sent_globally_last_hour": sent_globally_last_hour,
		"per_address_daily_cap": per_address_daily_cap,
		"global_hourly_cap": global_hourly_cap,
	}
	for name, number in numbers.items():
		if number < 0:
			raise ValueError(f"{name} must not be negative, not {number}")
	if outstanding_for_address > 0:
		return RateDecision(False, "a challenge is already outstanding for this address")
	if per_address_daily_cap and sent_to_address_last_24h >= per_address_daily_cap:
		return RateDecision(
			False,
			f"this address has already been sent {_challenges(sent_to_address_last_24h)} in the last "
			f"24 hours (the limit is {per_address_daily_cap})",
		)
	if global_hourly_cap and sent_globally_last_hour >= global_hourly_cap:
		return RateDecision(
			False,
			f"the limit of {_challenges(global_hourly_cap)} per hour for all addresses has been reached",
		)
	return RateDecision(True, "within the challenge limits")


def _challenges(count: int) -> str:
	"""Return '1 challenge' or 'N challenges'."""
	return f"{count} challenge" if count == 1 else f"{count} challenges"


@dataclass(frozen=True)
class AuthResult:
	"""SPF, DKIM and DMARC results in lower case ("pass", "fail", "softfail", ...), None when absent."""

	spf: str | None
	dkim: str | None
	dmarc: str | None


def read_authentication_results(header_values: list[str], trusted_authserv_id: str) -> AuthResult:
	"""Read SPF, DKIM and DMARC results from ``Authentication-Results`` header values (RFC 8601).

	Only headers whose authserv-id equals ``trusted_authserv_id`` (case-insensitive) count: any
	other one may have been written by the sender. ``header_values`` are in message order, so the
	first trusted one is the topmost, added last by the receiving server, and it alone is read.
	Comments in parentheses are ignored. When a method appears several times in that header (one
	result per DKIM signature), "pass" wins if any says so, else the first result is kept.

	This is only as good as the receiving server: it must add the header and remove copies that
	carry its authserv-id from incoming mail, as RFC 8601 section 5 asks.
	"""
	trusted = (trusted_authserv_id or "").strip().casefold()
	if not trusted:
		return AuthResult(None, None, None)
	for value in header_values or []:
		if not isinstance(value, str):
			continue
		parts = _split_resinfo(_strip_comments(value))
		if not parts or _authserv_id(parts[0]) != trusted:
			continue
		results: dict[str, str] = {}
		for part in parts[1:]:
			method_result = _method_result(part)
			if method_result is None:
				continue
			method, result = method_result
			if method not in results or (result == "pass" and results[method] != "pass"):
				results[method] = result
		return AuthResult(results.get("spf"), results.get("dkim"), results.get("dmarc"))
	return AuthResult(None, None, None)


def passes_spf_or_dkim(result: AuthResult) -> bool:
	"""Return True if SPF or DKIM passed: the sender's address was not obviously forged."""
	return result.spf == "pass" or result.dkim == "pass"


def _strip_comments(text: str) -> str:
	"""Remove RFC 5322 comments ``(...)``, nested and with backslash escapes, outside quoted strings."""
	out: list[str] = []
	depth = 0
	in_quote = False
	index = 0
	while index < len(text):
		char = text[index]
		if char == "\\" and (depth or in_quote):
			if not depth:
				out.append(text[index : index + 2])
			index += 2
			continue
		if depth:
			depth += {"(": 1, ")": -1}.get(char, 0)
			if not depth:
				out.append(" ")
		elif char == '"':
			in_quote = not in_quote
			out.append(char)
		elif char == "(" and not in_quote:
			depth = 1
		else:
			out.append(char)
		index += 1
	return "".join(out)


def _split_resinfo(text: str) -> list[str]:
	"""Split a comment-free header value on the semicolons outside quoted strings."""
	parts: list[str] = []
	current: list[str] = []
	in_quote = False
	escaped = False
	for char in text:
		if escaped:
			escaped = False
		elif char == "\\" and in_quote:
			escaped = True
		elif char == '"':
			in_quote = not in_quote
		elif char == ";" and not in_quote:
			parts.append("".join(current))
			current = []
			continue
		current.append(char)
	parts.append("".join(current))
	return [part.strip() for part in parts]


def _authserv_id(first_part: str) -> str:
	"""Return the authserv-id (first word, unquoted, lower-cased) of the part before the first ';'."""
	words = first_part.split()
	if not words:
		return ""
	return words[0].strip('"').casefold()


def _method_result(part: str) -> tuple[str, str] | None:
	"""Parse ``method[/version] = result ...`` into (method, result), lower-cased; None if not one we read."""
	head, sep, rest = part.partition("=")
	if not sep:
		return None
	method = head.split("/", 1)[0].strip().casefold()
	if method not in AUTH_METHODS:
		return None
	words = rest.split()
	if not words:
		return None
	result = words[0].strip('"').casefold()
	if not (result.isascii() and result.replace("-", "").replace("_", "").isalnum()):
		return None
	return method, result
