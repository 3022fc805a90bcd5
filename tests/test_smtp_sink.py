"""machhelpdesk.testing.smtp_sink: a real aiosmtpd server that smtplib can talk to."""

import smtplib
import threading
from email.message import EmailMessage

import pytest

from machhelpdesk.testing.smtp_sink import SMTPSink


def make_email(subject: str, to: str = "customer@example.test") -> EmailMessage:
	message = EmailMessage()
	message["From"] = "Support <support@example.test>"
	message["To"] = to
	message["Subject"] = subject
	message["Message-ID"] = f"<{abs(hash(subject))}@example.test>"
	message.set_content("Grüße aus dem Helpdesk.\n")
	return message


def test_sink_receives_a_message_sent_with_smtplib(smtp_sink):
	with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
		client.ehlo()
		assert not client.has_extn("starttls")
		assert not client.has_extn("auth")
		refused = client.send_message(
			make_email("Your ticket #42"), to_addrs=["customer@example.test", "cc@example.test"]
		)
	assert refused == {}
	[mail] = smtp_sink.wait_for(1)
	assert mail.mail_from == "support@example.test"
	assert mail.rcpt_tos == ("customer@example.test", "cc@example.test")
	assert mail.message["Subject"] == "Your ticket #42"
	assert mail.message.get_content().strip() == "Grüße aus dem Helpdesk."
	assert b"Subject: Your ticket #42" in mail.raw
	assert mail.peer is not None and mail.peer[0] == "127.0.0.1"
	assert mail.login is None


def test_sendmail_raw_bytes_arrive_unchanged(smtp_sink):
	raw = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: raw\r\n\r\nline one\r\n.dot line\r\n"
	with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
		client.sendmail("a@example.test", ["b@example.test"], raw)
	[mail] = smtp_sink.wait_for(1)
	assert mail.raw == raw  # dot-stuffing undone, CRLF kept
	assert mail.message.get_content().splitlines() == ["line one", ".dot line"]


def test_wait_for_many_from_threads_then_clear(smtp_sink):
	def send(number: int) -> None:
		with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
			client.send_message(make_email(f"Message {number}"))

	threads = [threading.Thread(target=send, args=(number,)) for number in range(5)]
	for thread in threads:
		thread.start()
	for thread in threads:
		thread.join()
	received = smtp_sink.wait_for(5)
	assert sorted(mail.message["Subject"] for mail in received) == [f"Message {n}" for n in range(5)]
	assert len(smtp_sink.messages) == 5
	smtp_sink.clear()
	assert smtp_sink.messages == []


def test_wait_for_times_out_with_a_count(smtp_sink):
	with pytest.raises(TimeoutError, match="expected 1 message"):
		smtp_sink.wait_for(1, timeout=0.2)


def test_sink_can_accept_any_login():
	with SMTPSink(accept_auth=True) as sink:
		with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
			client.login("agent@example.test", "any password")
			client.send_message(make_email("after login"))
		[mail] = sink.wait_for(1)
		assert mail.login == "agent@example.test"
	assert not sink.running
	assert sink.messages == [mail]


def test_client_that_requires_starttls_fails_loudly(smtp_sink):
	with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
		with pytest.raises(smtplib.SMTPNotSupportedError):
			client.starttls()
