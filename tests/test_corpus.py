"""Every message of the real-world corpus (../shared/corpus, or $MH_CORPUS_DIR) through parser and loops.

The corpus is read in place and never copied into the project. Without it these tests skip.
"""

import csv
import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

from machhelpdesk.engine.loops import KINDS, bounced_message_ids, classify_automation
from machhelpdesk.engine.message import MAX_FILENAME_BYTES, MAX_SUBJECT, MessageParseError, parse_message

SURROGATE = re.compile("[\ud800-\udfff]")
ATTACHMENT_LIMIT = 64 * 1024


def assert_clean(text: str) -> None:
	"""No NUL and no undecoded bytes (lone surrogates) in an output string."""
	assert isinstance(text, str)
	assert "\x00" not in text
	assert not SURROGATE.search(text)


def test_corpus_message(corpus_file: Path | None) -> None:
	"""One corpus message: parsed or rejected with MessageParseError, and every output field is sane."""
	if corpus_file is None:
		pytest.skip("email corpus not found (set MH_CORPUS_DIR)")
	raw = corpus_file.read_bytes()
	try:
		msg = parse_message(raw, max_attachment_size=ATTACHMENT_LIMIT)
	except MessageParseError:
		return
	assert msg.size == len(raw)
	assert msg.content_hash == hashlib.sha256(raw).hexdigest()
	assert len(msg.subject) <= MAX_SUBJECT
	for text in (msg.subject, msg.text, msg.html or "", msg.content_type):
		assert_clean(text)
	for name, value in msg.headers:
		assert_clean(name)
		assert_clean(value)
	assert "/" in msg.content_type and msg.content_type == msg.content_type.lower()
	assert msg.date is None or msg.date.tzinfo is not None
	for address in [*([msg.sender] if msg.sender else []), *msg.to, *msg.cc, *msg.reply_to]:
		assert "@" in address.email and address.email == address.email.lower()
		assert_clean(address.name)
	for message_id in [msg.message_id or "<x>", *msg.in_reply_to, *msg.references, *msg.enclosed_message_ids]:
		assert message_id.startswith("<") and message_id.endswith(">")
	for attachment in msg.attachments:
		assert_clean(attachment.filename)
		assert attachment.filename and not attachment.filename.startswith(".")
		assert "/" not in attachment.filename and "\\" not in attachment.filename
		assert len(attachment.filename.encode("utf-8")) <= MAX_FILENAME_BYTES
		assert attachment.oversized is (attachment.size > ATTACHMENT_LIMIT)
		assert len(attachment.content) == (0 if attachment.oversized else attachment.size)
	automation = classify_automation(msg)
	assert automation.kind in KINDS
	assert automation.is_automated is bool(automation.reason)
	for message_id in bounced_message_ids(msg):
		assert message_id.startswith("<") and message_id != msg.message_id


def read_manifest(corpus_dir: Path) -> dict[str, set[str]]:
	"""Return file name -> heuristic categories from the corpus MANIFEST.tsv."""
	with (corpus_dir / "MANIFEST.tsv").open(newline="", encoding="utf-8") as manifest:
		rows = csv.DictReader(manifest, delimiter="\t")
		return {row["file"]: set(filter(None, row["categories"].split(","))) for row in rows}


def test_corpus_summary(corpus_dir: Path) -> None:
	"""Across the corpus: nothing rejected, and bounces and auto-replies are recognised.

	Measured on the 364-message corpus: 0 rejected; bounce 63, auto-reply 7, bulk 15, list 13, none 266;
	60 of the 62 messages the manifest tags bounce-dsn are bounces (the other two are a virus-scanner
	notice and a list-manager loop alert without any machine header).
	"""
	categories = read_manifest(corpus_dir)
	files = sorted(corpus_dir.glob("*.eml"))
	assert len(files) == len(categories)
	kinds: Counter[str] = Counter()
	rejected: dict[str, str] = {}
	bounce_tagged = bounce_found = 0
	reports = report_bounces = 0
	extra_bounces: list[str] = []
	auto_reply_tagged: dict[str, str] = {}
	for path in files:
		try:
			msg = parse_message(path.read_bytes())
		except MessageParseError as error:
			rejected[path.name] = str(error)
			continue
		kind = classify_automation(msg).kind
		kinds[kind] += 1
		tags = categories.get(path.name, set())
		if "bounce-dsn" in tags:
			bounce_tagged += 1
			bounce_found += kind == "bounce"
		elif kind == "bounce":
			extra_bounces.append(path.name)
		if "auto-reply" in tags:
			auto_reply_tagged[path.name] = kind
		if msg.content_type == "multipart/report":
			reports += 1
			report_bounces += kind == "bounce"
	assert rejected == {}
	assert report_bounces == reports > 0, "every multipart/report is a bounce"
	assert bounce_tagged > 0
	assert bounce_found / bounce_tagged >= 0.95, f"only {bounce_found} of {bounce_tagged} bounces recognised"
	assert len(extra_bounces) <= 5, extra_bounces
	assert set(auto_reply_tagged.values()) == {"auto-reply"}, auto_reply_tagged
	assert kinds["none"] > len(files) // 2
