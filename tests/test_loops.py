"""Behaviour of engine/loops.py: which mail is automatic, and what a bounce refers to."""

from pathlib import Path

import pytest

from machhelpdesk.engine.loops import Automation, bounced_message_ids, classify_automation
from machhelpdesk.engine.message import ParsedMessage, parse_message


def message(
	headers: str, body: str = "Hello.\n", sender: str = "Kim <kim@customer.example>"
) -> ParsedMessage:
	"""Parse a small message with the given extra header lines."""
	raw = f"From: {sender}\nTo: help@helpdesk.example\nSubject: Hello\n{headers}\n{body}"
	return parse_message(raw.replace("\n\n\n", "\n\n").encode())


def classify_fixture(fixtures_dir: Path, name: str) -> Automation:
	"""Classify one fixture file."""
	return classify_automation(parse_message((fixtures_dir / name).read_bytes()))


def test_auto_submitted_auto_replied_is_an_auto_reply(fixtures_dir: Path) -> None:
	automation = classify_fixture(fixtures_dir, "auto-replied.eml")
	assert automation == Automation("auto-reply", "Auto-Submitted: auto-replied")
	assert automation.is_automated
	assert not automation.may_auto_reply
	assert not automation.may_open_ticket


def test_auto_submitted_no_is_a_person(fixtures_dir: Path) -> None:
	automation = classify_fixture(fixtures_dir, "auto-submitted-no.eml")
	assert automation.kind == "none"
	assert automation.may_auto_reply and automation.may_open_ticket
	assert not automation.is_automated


@pytest.mark.parametrize("value", ["no", "No", "NO (sent by a person)", "no ; comment"])
def test_auto_submitted_no_variants(value: str) -> None:
	assert classify_automation(message(f"Auto-Submitted: {value}\n")).kind == "none"


@pytest.mark.parametrize(
	"value", ["auto-generated", "auto-replied", "auto-notified", "Auto-Generated (failure)"]
)
def test_auto_submitted_other_values(value: str) -> None:
	assert classify_automation(message(f"Auto-Submitted: {value}\n")).kind == "auto-reply"


def test_x_auto_response_suppress_oof(fixtures_dir: Path) -> None:
	automation = classify_fixture(fixtures_dir, "x-auto-response-suppress-oof.eml")
	assert automation == Automation("auto-reply", "X-Auto-Response-Suppress: OOF")


@pytest.mark.parametrize("value", ["All", "DR, RN, NRN", "AutoReply", "oof"])
def test_x_auto_response_suppress_values(value: str) -> None:
	assert classify_automation(message(f"X-Auto-Response-Suppress: {value}\n")).kind == "auto-reply"


def test_x_auto_response_suppress_none_is_a_person() -> None:
	assert classify_automation(message("X-Auto-Response-Suppress: None\n")).kind == "none"


@pytest.mark.parametrize("header", ["X-Autoreply: yes", "X-Autorespond: vacation", "Precedence: auto_reply"])
def test_vendor_auto_reply_headers(header: str) -> None:
	assert classify_automation(message(header + "\n")).kind == "auto-reply"


def test_out_of_office_subject_is_an_auto_reply() -> None:
	msg = parse_message(b"From: kim@customer.example\nSubject: Automatic reply: Printer\n\nAway.\n")
	assert classify_automation(msg) == Automation("auto-reply", "Subject: Automatic reply:")


def test_precedence_bulk_is_bulk_even_with_list_headers(fixtures_dir: Path) -> None:
	automation = classify_fixture(fixtures_dir, "precedence-bulk.eml")
	assert automation == Automation("bulk", "Precedence: bulk")
	assert not automation.may_open_ticket and not automation.may_auto_reply


def test_precedence_junk_is_bulk() -> None:
	assert classify_automation(message("Precedence: junk\n")).kind == "bulk"


def test_list_mail_opens_tickets_but_gets_no_automatic_mail(fixtures_dir: Path) -> None:
	automation = classify_fixture(fixtures_dir, "list-id.eml")
	assert automation == Automation("list", "List-Id: Users of the product <users.lists.example.org>")
	assert automation.may_open_ticket is True
	assert automation.may_auto_reply is False


@pytest.mark.parametrize("header", ["List-Unsubscribe: <mailto:u@lists.example>", "Precedence: list"])
def test_other_list_signals(header: str) -> None:
	assert classify_automation(message(header + "\n")).kind == "list"


def test_dsn_report_is_a_bounce_and_points_at_the_original(fixtures_dir: Path) -> None:
	msg = parse_message((fixtures_dir / "dsn-bounce.eml").read_bytes())
	automation = classify_automation(msg)
	assert automation == Automation("bounce", "multipart/report; report-type=delivery-status")
	assert not automation.may_open_ticket and not automation.may_auto_reply
	assert bounced_message_ids(msg) == ["<ack-123@helpdesk.example>"]


def test_mailer_daemon_sender_is_a_bounce(fixtures_dir: Path) -> None:
	msg = parse_message((fixtures_dir / "mailer-daemon.eml").read_bytes())
	assert classify_automation(msg) == Automation("bounce", "From: mailer-daemon@mx.customer.example")
	# the original headers are quoted in the text, not enclosed as a part
	assert bounced_message_ids(msg) == ["<ack-124@helpdesk.example>"]


@pytest.mark.parametrize(
	"sender", ["postmaster@customer.example", "Mail Delivery System <relay@customer.example>"]
)
def test_other_bounce_senders(sender: str) -> None:
	assert classify_automation(message("", sender=sender)).kind == "bounce"


def test_delivery_status_part_without_report_is_a_bounce() -> None:
	raw = (
		b"From: relay@customer.example\nSubject: x\nContent-Type: multipart/mixed; boundary=b\n\n"
		b"--b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/delivery-status\n\n"
		b"Reporting-MTA: dns; x\n\nFinal-Recipient: rfc822; a@b\nAction: failed\n--b--\n"
	)
	assert classify_automation(parse_message(raw)) == Automation(
		"bounce", "Content-Type: message/delivery-status"
	)


def test_null_return_path_alone_is_a_bounce() -> None:
	assert classify_automation(message("Return-Path: <>\n")) == Automation("bounce", "Return-Path: <>")


def test_null_return_path_with_auto_reply_header_stays_an_auto_reply() -> None:
	"""RFC 3834 responders send with a null envelope sender too; an out-of-office is no bounce."""
	automation = classify_automation(message("Return-Path: <>\nAuto-Submitted: auto-replied\n"))
	assert automation.kind == "auto-reply"


def test_bounce_subject_counts_only_with_another_automatic_sign() -> None:
	person = parse_message(
		b"From: kim@customer.example\nSubject: Delivery failure of my order\n\nWhere is it?\n"
	)
	assert classify_automation(person).kind == "none"
	machine = parse_message(
		b"From: gateway@customer.example\nSubject: Delivery failure notification\nPrecedence: bulk\n\nx\n"
	)
	assert classify_automation(machine).kind == "bounce"


def test_bounce_beats_auto_reply(fixtures_dir: Path) -> None:
	"""dsn-bounce.eml also says Auto-Submitted: auto-replied."""
	assert classify_fixture(fixtures_dir, "dsn-bounce.eml").kind == "bounce"


def test_auto_reply_beats_bulk_and_bulk_beats_list() -> None:
	assert (
		classify_automation(message("Precedence: bulk\nAuto-Submitted: auto-generated\n")).kind
		== "auto-reply"
	)
	assert classify_automation(message("List-Id: <l.example>\nPrecedence: junk\n")).kind == "bulk"


def test_personal_mail_is_not_automated(fixtures_dir: Path) -> None:
	assert classify_fixture(fixtures_dir, "plain.eml") == Automation("none", "")


@pytest.mark.parametrize(
	("kind", "may_open_ticket"),
	[("none", True), ("list", True), ("auto-reply", False), ("bounce", False), ("bulk", False)],
)
def test_automation_permissions(kind: str, may_open_ticket: bool) -> None:
	automation = Automation(kind, "reason")
	assert automation.may_open_ticket is may_open_ticket
	assert automation.may_auto_reply is (kind == "none")
	assert automation.is_automated is (kind != "none")


def test_bounced_ids_also_use_in_reply_to_and_references_without_own_id() -> None:
	msg = message(
		"Message-ID: <self@x>\nIn-Reply-To: <parent@x>\nReferences: <root@x> <parent@x> <self@x>\n",
		sender="MAILER-DAEMON@x.example",
	)
	assert bounced_message_ids(msg) == ["<parent@x>", "<root@x>"]
