"""Tests for machhelpdesk.engine.challenge: tokens, expiry, rate limits, Authentication-Results."""

import base64
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machhelpdesk.engine import challenge
from machhelpdesk.engine.challenge import (
	TOKEN_BYTES,
	TOKEN_LENGTH,
	AuthResult,
	challenge_allowed,
	form_nonce_valid,
	hash_token,
	is_expired,
	issue_token,
	looks_like_token,
	make_form_nonce,
	passes_spf_or_dkim,
	read_authentication_results,
	token_matches,
)

NOW = datetime(2025, 3, 1, 12, 0, 0)
TRUSTED = "mx.helpdesk.example"

# --- tokens -----------------------------------------------------------------------------------------


def test_token_has_at_least_128_bits_in_urlsafe_base64():
	issued = issue_token(NOW, timedelta(hours=24))
	assert TOKEN_BYTES * 8 >= 128
	assert len(issued.token) == TOKEN_LENGTH == 43
	assert re.fullmatch(r"[A-Za-z0-9_-]+", issued.token)
	raw = base64.urlsafe_b64decode(issued.token + "=" * (-len(issued.token) % 4))
	assert len(raw) == TOKEN_BYTES


def test_tokens_are_distinct():
	tokens = {issue_token(NOW, timedelta(hours=1)).token for _ in range(200)}
	assert len(tokens) == 200


def test_stored_hash_is_sha256_hex_and_not_the_token():
	issued = issue_token(NOW, timedelta(hours=1))
	assert issued.token_hash != issued.token
	assert issued.token not in issued.token_hash
	assert re.fullmatch(r"[0-9a-f]{64}", issued.token_hash)
	assert issued.token_hash == hash_token(issued.token)


def test_issue_token_uses_the_clock_passed_in():
	issued = issue_token(NOW, timedelta(hours=48))
	assert issued.expires_at == datetime(2025, 3, 3, 12, 0, 0)


def test_issue_token_refuses_non_positive_validity():
	with pytest.raises(ValueError):
		issue_token(NOW, timedelta(0))
	with pytest.raises(ValueError):
		issue_token(NOW, timedelta(minutes=-5))


def test_issued_token_is_frozen():
	issued = issue_token(NOW, timedelta(hours=1))
	with pytest.raises(AttributeError):
		issued.token = "x"  # type: ignore[misc]


def test_token_matches_its_hash():
	issued = issue_token(NOW, timedelta(hours=1))
	assert token_matches(issued.token, issued.token_hash)
	assert token_matches(issued.token, issued.token_hash.upper())


def test_token_does_not_match_another_tokens_hash():
	first = issue_token(NOW, timedelta(hours=1))
	second = issue_token(NOW, timedelta(hours=1))
	assert not token_matches(first.token, second.token_hash)


def test_tampered_token_does_not_match():
	issued = issue_token(NOW, timedelta(hours=1))
	last = issued.token[-1]
	tampered = issued.token[:-1] + ("A" if last != "A" else "B")
	assert looks_like_token(tampered)
	assert not token_matches(tampered, issued.token_hash)
	assert not token_matches(issued.token[:-1], issued.token_hash)
	assert not token_matches(issued.token + "A", issued.token_hash)


def test_token_itself_is_not_accepted_as_hash():
	issued = issue_token(NOW, timedelta(hours=1))
	assert not token_matches(issued.token, issued.token)


@pytest.mark.parametrize(
	"token",
	["", "short", "é" * 43, "a" * 42 + "é", "a" * 42 + "=", "a" * 42 + " ", "a" * 1000, None, 42, b"a" * 43],
)
def test_malformed_token_gives_false(token):
	issued = issue_token(NOW, timedelta(hours=1))
	assert not token_matches(token, issued.token_hash)
	assert not looks_like_token(token)


@pytest.mark.parametrize("stored_hash", ["", "z" * 64, "a" * 63, "é" * 64, None, 12, b"0" * 64])
def test_malformed_stored_hash_gives_false(stored_hash):
	issued = issue_token(NOW, timedelta(hours=1))
	assert not token_matches(issued.token, stored_hash)


@given(st.text(), st.text())
def test_token_matches_never_raises(token, stored_hash):
	assert token_matches(token, stored_hash) in (True, False)
	assert looks_like_token(token) in (True, False)


def test_looks_like_token_accepts_issued_tokens():
	for _ in range(50):
		assert looks_like_token(issue_token(NOW, timedelta(hours=1)).token)


# --- expiry -----------------------------------------------------------------------------------------


def test_expiry_with_explicit_clocks():
	issued = issue_token(NOW, timedelta(hours=24))
	assert not is_expired(issued.expires_at, NOW)
	assert not is_expired(issued.expires_at, NOW + timedelta(hours=23, minutes=59, seconds=59))
	assert is_expired(issued.expires_at, NOW + timedelta(hours=24))
	assert is_expired(issued.expires_at, NOW + timedelta(days=3))


def test_expiry_with_aware_datetimes_in_different_zones():
	expires_at = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
	plus_two = timezone(timedelta(hours=2))
	assert not is_expired(expires_at, datetime(2025, 3, 1, 13, 59, tzinfo=plus_two))
	assert is_expired(expires_at, datetime(2025, 3, 1, 14, 0, tzinfo=plus_two))


def test_expiry_refuses_to_mix_naive_and_aware():
	with pytest.raises(ValueError):
		is_expired(datetime(2025, 3, 1, tzinfo=timezone.utc), datetime(2025, 3, 1))


# --- rate limits ------------------------------------------------------------------------------------


def _rate(**overrides):
	arguments = {
		"outstanding_for_address": 0,
		"sent_to_address_last_24h": 0,
		"sent_globally_last_hour": 0,
		"global_hourly_cap": 100,
	}
	arguments.update(overrides)
	return challenge_allowed(**arguments)


def test_challenge_allowed_within_limits():
	decision = _rate(sent_to_address_last_24h=2, sent_globally_last_hour=99)
	assert decision.allowed
	assert decision.reason


def test_one_outstanding_challenge_per_address():
	decision = _rate(outstanding_for_address=1)
	assert not decision.allowed
	assert decision.reason == "a challenge is already outstanding for this address"


def test_per_address_daily_cap():
	decision = _rate(sent_to_address_last_24h=3)
	assert not decision.allowed
	assert "3 challenges in the last 24 hours" in decision.reason
	assert _rate(sent_to_address_last_24h=1, per_address_daily_cap=1).reason.startswith(
		"this address has already been sent 1 challenge "
	)
	assert _rate(sent_to_address_last_24h=4, per_address_daily_cap=5).allowed


def test_global_hourly_cap():
	decision = _rate(sent_globally_last_hour=100)
	assert not decision.allowed
	assert "100 challenges per hour" in decision.reason


def test_global_cap_zero_means_unlimited():
	assert _rate(sent_globally_last_hour=1_000_000, global_hourly_cap=0).allowed


def test_outstanding_is_reported_before_the_caps():
	decision = _rate(outstanding_for_address=1, sent_to_address_last_24h=3, sent_globally_last_hour=100)
	assert decision.reason == "a challenge is already outstanding for this address"


def test_global_cap_is_required():
	with pytest.raises(TypeError):
		challenge_allowed(outstanding_for_address=0, sent_to_address_last_24h=0, sent_globally_last_hour=0)  # type: ignore[call-arg]


def test_negative_counts_are_refused():
	with pytest.raises(ValueError):
		_rate(sent_globally_last_hour=-1)


# --- Authentication-Results -------------------------------------------------------------------------

GMAIL_STYLE = (
	f"{TRUSTED};\r\n"
	"       dkim=pass header.i=@example.com header.s=sel1 header.b=AbCd;\r\n"
	"       spf=pass (mx.helpdesk.example: domain of alice@example.com designates 192.0.2.1 as permitted "
	"sender) smtp.mailfrom=alice@example.com;\r\n"
	"       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=example.com"
)


def test_reads_trusted_header():
	result = read_authentication_results([GMAIL_STYLE], TRUSTED)
	assert result == AuthResult(spf="pass", dkim="pass", dmarc="pass")
	assert passes_spf_or_dkim(result)


def test_authserv_id_is_case_insensitive_and_may_carry_a_version():
	value = "MX.HelpDesk.Example 1; spf=SoftFail smtp.mailfrom=x@example.org; dkim=none; dmarc=FAIL"
	assert read_authentication_results([value], TRUSTED) == AuthResult("softfail", "none", "fail")


def test_forged_header_from_another_authserv_id_is_ignored():
	forged = "evil.example; spf=pass; dkim=pass; dmarc=pass"
	assert read_authentication_results([forged], TRUSTED) == AuthResult(None, None, None)
	real = f"{TRUSTED}; spf=fail smtp.mailfrom=x@example.org; dkim=fail; dmarc=fail"
	result = read_authentication_results([forged, real], TRUSTED)
	assert result == AuthResult("fail", "fail", "fail")
	assert not passes_spf_or_dkim(result)


def test_authserv_id_must_match_exactly_not_as_a_suffix():
	for value in (f"evil.{TRUSTED}; spf=pass", f"{TRUSTED}.evil.example; spf=pass", f"x{TRUSTED}; spf=pass"):
		assert read_authentication_results([value], TRUSTED).spf is None


def test_comments_are_ignored_even_when_they_look_like_results():
	value = (
		f"{TRUSTED}; spf=fail (sender says: spf=pass; dkim=pass (nested \\) paren) ok) smtp.mailfrom=a@b.c; "
		"dkim=(comment before the result) fail"
	)
	assert read_authentication_results([value], TRUSTED) == AuthResult("fail", "fail", None)


def test_comment_before_authserv_id_and_quoted_semicolons():
	value = f'(received by) {TRUSTED}; dkim=fail reason="bad; signature"; spf=pass'
	assert read_authentication_results([value], TRUSTED) == AuthResult("pass", "fail", None)


def test_first_trusted_header_wins():
	topmost = f"{TRUSTED}; spf=fail; dkim=fail"
	lower = f"{TRUSTED}; spf=pass; dkim=pass; dmarc=pass"
	assert read_authentication_results([topmost, lower], TRUSTED) == AuthResult("fail", "fail", None)


def test_any_passing_dkim_signature_counts():
	value = f"{TRUSTED}; dkim=fail header.d=list.example; dkim=pass header.d=example.com; spf=neutral"
	result = read_authentication_results([value], TRUSTED)
	assert result == AuthResult("neutral", "pass", None)
	assert passes_spf_or_dkim(result)


def test_missing_or_empty_headers():
	assert read_authentication_results([], TRUSTED) == AuthResult(None, None, None)
	assert read_authentication_results([f"{TRUSTED}; none"], TRUSTED) == AuthResult(None, None, None)
	assert read_authentication_results([""], TRUSTED) == AuthResult(None, None, None)
	assert read_authentication_results([GMAIL_STYLE], "") == AuthResult(None, None, None)
	assert not passes_spf_or_dkim(AuthResult(None, None, None))


def test_other_methods_are_ignored():
	value = f"{TRUSTED}; arc=pass; iprev=pass policy.iprev=192.0.2.1; auth=pass; bimi=pass"
	assert read_authentication_results([value], TRUSTED) == AuthResult(None, None, None)


def test_dmarc_alone_does_not_pass():
	assert not passes_spf_or_dkim(AuthResult(spf="fail", dkim="none", dmarc="pass"))
	assert passes_spf_or_dkim(AuthResult(spf="fail", dkim="pass", dmarc="fail"))
	assert passes_spf_or_dkim(AuthResult(spf="pass", dkim=None, dmarc=None))


@given(st.lists(st.text(alphabet=st.characters(), max_size=200), max_size=5))
def test_read_authentication_results_never_raises(values):
	result = read_authentication_results([f"{TRUSTED};{value}" for value in values] + values, TRUSTED)
	for outcome in (result.spf, result.dkim, result.dmarc):
		assert outcome is None or re.fullmatch(r"[a-z0-9_-]+", outcome)


# --- the confirmation form's nonce --------------------------------------------------------------------

KEY = "server-secret"
HASH = hash_token(issue_token(NOW, timedelta(hours=1)).token)
EPOCH = 1_740_830_400.0


def test_form_nonce_round_trips_within_its_lifetime():
	nonce = make_form_nonce(KEY, HASH, EPOCH)
	assert form_nonce_valid(nonce, KEY, HASH, EPOCH)
	assert form_nonce_valid(nonce, KEY, HASH, EPOCH + challenge.NONCE_VALID_SECONDS)
	assert not form_nonce_valid(nonce, KEY, HASH, EPOCH + challenge.NONCE_VALID_SECONDS + 1)


def test_form_nonce_is_bound_to_its_token_and_key_and_not_from_the_future():
	nonce = make_form_nonce(KEY, HASH, EPOCH)
	assert not form_nonce_valid(nonce, KEY, "0" * 64, EPOCH)
	assert not form_nonce_valid(nonce, "another-secret", HASH, EPOCH)
	assert not form_nonce_valid(nonce, KEY, HASH, EPOCH - 60)


def test_form_nonce_cannot_be_moved_to_another_time():
	stamp, _sep, mac = make_form_nonce(KEY, HASH, EPOCH).partition(".")
	assert not form_nonce_valid(f"{int(stamp) + 1}.{mac}", KEY, HASH, EPOCH + 5)


@given(st.one_of(st.none(), st.integers(), st.text(max_size=200), st.binary(max_size=50)))
def test_form_nonce_valid_never_raises_on_junk(value):
	assert form_nonce_valid(value, KEY, HASH, EPOCH) is False


def test_module_imports_no_frappe():
	assert "frappe" not in challenge.__dict__
