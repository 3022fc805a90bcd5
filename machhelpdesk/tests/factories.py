"""Test factories and real-server fixtures for the bench tests (tier 2). One set, used by every test module."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import frappe

from machhelpdesk.testing.dovecot import Dovecot
from machhelpdesk.testing.smtp_sink import SMTPSink

APP_ROOT = Path(__file__).resolve().parents[2]
INTAKE_DOCTYPES = (
	"MH Sender Challenge",
	"MH Inbound Mail",
	"MH Ticket",
	"MH Processing Rule",
	"MH Blocking Filter",
	"MH IMAP Account",
)


def corpus_dir() -> Path | None:
	"""The shared real-world corpus, from MH_CORPUS_DIR (default ../shared/corpus beside the checkout)."""
	path = Path(os.environ.get("MH_CORPUS_DIR") or APP_ROOT.parent / "shared" / "corpus")
	return path if path.is_dir() else None


def reset_intake_data() -> None:
	"""Delete every ticket, ledger row, rule, filter and account, with their threads and files; commit.

	Intake commits per message, so its tests cannot rely on the test runner's rollback.
	"""
	tickets = frappe.get_all("MH Ticket", pluck="name")
	if tickets:
		for file in frappe.get_all("File", filters={"attached_to_doctype": "MH Ticket"}, pluck="name"):
			frappe.delete_doc("File", file, force=True, ignore_permissions=True)
		frappe.db.delete("Communication", {"reference_doctype": "MH Ticket"})
		frappe.db.delete("Comment", {"reference_doctype": "MH Ticket"})
		frappe.db.delete("ToDo", {"reference_type": "MH Ticket"})
	for doctype in INTAKE_DOCTYPES:
		frappe.db.delete(doctype)
	frappe.db.delete("MH Rule Condition")
	frappe.db.delete("MH Rule Action")
	frappe.db.delete("Notification Log", {"document_type": "MH IMAP Account"})
	# Senders' contacts and the website users intake made for them.
	customers = frappe.get_all(
		"Has Role", filters={"role": "MH Customer", "parenttype": "User"}, pluck="parent"
	)
	website_users = frappe.get_all(
		"User", filters={"name": ("in", customers), "user_type": "Website User"}, pluck="name"
	)
	contacts = (
		frappe.get_all("Contact", filters={"user": ("in", website_users)}, pluck="name")
		if website_users
		else []
	)
	contacts += frappe.get_all(
		"Contact Email", filters={"email_id": ("like", "%@example.com")}, pluck="parent"
	)
	for table, field, values in (
		("Contact Email", "parent", contacts),
		("Contact", "name", contacts),
		("Has Role", "parent", website_users),
		("User", "name", website_users),
	):
		if values:
			frappe.db.delete(table, {field: ("in", values)})
	frappe.db.commit()
	frappe.clear_cache(doctype="MH Processing Rule")


def make_account(dovecot: Dovecot, user: str, password: str, **values) -> frappe.model.document.Document:
	"""An enabled MH IMAP Account reading ``user``'s INBOX on the test Dovecot over STARTTLS; committed."""
	doc = frappe.get_doc(
		{
			"doctype": "MH IMAP Account",
			"email_address": f"{user}@helpdesk.test",
			"imap_server": dovecot.host,
			"encryption": "STARTTLS",
			"port": dovecot.port,
			"allow_self_signed": 1,
			"username": user,
			"password": password,
			"folder": "INBOX",
			"move_parsed_email": 1,
			"move_to_folder": "Parsed",
			"default_department": "Support",
			**values,
		}
	)
	doc.insert(ignore_permissions=True)
	frappe.db.commit()
	return doc


def make_ticket(subject: str = "Printer on fire", raised_by: str = "customer@example.com", **values):
	"""A ticket inserted the way intake inserts them (not committed)."""
	doc = frappe.get_doc({"doctype": "MH Ticket", "subject": subject, "raised_by": raised_by, **values})
	doc.insert(ignore_permissions=True)
	return doc


def make_user(
	email: str, roles: tuple[str, ...] = (), user_type: str = "System User", password: str | None = None
) -> str:
	"""A user with these roles (created once), and this password when one is given."""
	if not frappe.db.exists("User", email):
		frappe.get_doc(
			{
				"doctype": "User",
				"email": email,
				"first_name": email.split("@")[0],
				"user_type": user_type,
				"send_welcome_email": 0,
				"roles": [{"role": role} for role in roles],
			}
		).insert(ignore_permissions=True)
	else:
		user = frappe.get_doc("User", email)
		user.add_roles(*roles)
	if password:
		from frappe.utils.password import update_password

		update_password(email, password)
	return email


def make_message(
	subject: str = "Help, the printer is on fire",
	sender: str = "Carla Customer <carla@example.com>",
	to: str = "support@helpdesk.test",
	body: str = "It started this morning.\nPlease help.",
	*,
	message_id: str | None = None,
	headers: dict[str, str] | None = None,
	attachments: list[tuple[str, bytes, str]] = (),
	date: datetime | None = None,
) -> bytes:
	"""A raw RFC 5322 message (bytes) built with the stdlib."""
	msg = EmailMessage()
	msg["From"] = sender
	msg["To"] = to
	msg["Subject"] = subject
	msg["Date"] = format_datetime(date or datetime.now(timezone.utc))
	msg["Message-ID"] = message_id or make_msgid(domain="example.com")
	for name, value in (headers or {}).items():
		msg[name] = value
	msg.set_content(body)
	for filename, content, content_type in attachments:
		maintype, _, subtype = content_type.partition("/")
		msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
	return msg.as_bytes()


def bench_command(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
	"""Run ``bench --site <this site> ARGS`` in a separate process (a real second worker)."""
	sites_path = os.path.abspath(frappe.local.sites_path)
	return subprocess.run(
		[sys.executable, "-m", "frappe.utils.bench_helper", "frappe", "--site", frappe.local.site, *args],
		cwd=sites_path,
		env={**os.environ, **(env or {})},
		capture_output=True,
		text=True,
		timeout=timeout,
		check=False,
	)


def ledger(account: str) -> list[frappe._dict]:
	"""The account's ledger rows, oldest first."""
	return frappe.get_all(
		"MH Inbound Mail",
		filters={"imap_account": account},
		fields=[
			"name",
			"state",
			"server_action",
			"ticket",
			"uid",
			"message_key",
			"reason",
			"attempts",
			"subject",
		],
		order_by="creation asc",
	)


@contextmanager
def outgoing_mail_to(sink: SMTPSink, email_id: str = "helpdesk@outgoing.test") -> Iterator[str]:
	"""A default outgoing Email Account that delivers to ``sink`` (a real SMTP server on 127.0.0.1).

	While it is active, Frappe really sends (in tests it otherwise only pretends). The account is
	committed, because intake and the queue commit; it is deleted afterwards. Yields its name.
	"""
	previous_defaults = frappe.get_all("Email Account", filters={"default_outgoing": 1}, pluck="name")
	for name in previous_defaults:
		frappe.db.set_value("Email Account", name, "default_outgoing", 0)
	account = frappe.get_doc(
		{
			"doctype": "Email Account",
			"email_account_name": f"Test outgoing {email_id}",
			"email_id": email_id,
			"enable_outgoing": 1,
			"default_outgoing": 1,
			"smtp_server": sink.host,
			"smtp_port": sink.port,
			"use_tls": 0,
			"use_ssl": 0,
			"no_smtp_authentication": 1,
			"awaiting_password": 0,
		}
	).insert(ignore_permissions=True)
	frappe.db.commit()
	# Frappe keeps the outgoing account it found in frappe.local for the rest of the process (a test run
	# is one process): forget it on the way in and out, so no test sends through a deleted account.
	frappe.local.outgoing_email_account = {}
	saved = frappe.flags.testing_email, frappe.flags.mute_emails
	frappe.flags.testing_email, frappe.flags.mute_emails = True, False
	try:
		yield account.name
	finally:
		frappe.flags.testing_email, frappe.flags.mute_emails = saved
		frappe.db.delete("Email Queue Recipient")
		frappe.db.delete("Email Queue")
		frappe.delete_doc("Email Account", account.name, force=True, ignore_permissions=True)
		for name in previous_defaults:
			frappe.db.set_value("Email Account", name, "default_outgoing", 1)
		frappe.db.commit()
		frappe.local.outgoing_email_account = {}


def flush_outgoing_mail() -> None:
	"""Send what the Email Queue holds now, as the scheduler's flush does."""
	from frappe.email.queue import flush

	flush()
	frappe.db.commit()


def make_customer(email: str, password: str, first_name: str | None = None) -> str:
	"""A customer: Website User with MH Customer, a password and a Contact linked to the user; not committed.

	``reset_intake_data`` deletes them (they are website users with the customer role).
	"""
	make_user(email, ("MH Customer",), user_type="Website User", password=password)
	if first_name:
		frappe.db.set_value("User", email, "first_name", first_name)
	if not frappe.db.exists("Contact", {"user": email}):
		frappe.get_doc(
			{
				"doctype": "Contact",
				"first_name": first_name or email.split("@")[0],
				"user": email,
				"email_ids": [{"email_id": email, "is_primary": 1}],
			}
		).insert(ignore_permissions=True)
	return email


def delete_tickets() -> None:
	"""Delete every ticket with its thread, notes, assignments and files, keeping users and accounts; commit."""
	for file in frappe.get_all("File", filters={"attached_to_doctype": "MH Ticket"}, pluck="name"):
		frappe.delete_doc("File", file, force=True, ignore_permissions=True)
	frappe.db.delete("Communication", {"reference_doctype": "MH Ticket"})
	frappe.db.delete("Comment", {"reference_doctype": "MH Ticket"})
	frappe.db.delete("ToDo", {"reference_type": "MH Ticket"})
	frappe.db.delete("MH Ticket")
	frappe.db.commit()


def save_settings(**values) -> None:
	"""Change MH Settings through the document (so its cache is cleared for other processes too); commit."""
	settings = frappe.get_single("MH Settings")
	settings.update(values)
	settings.save(ignore_permissions=True)
	frappe.db.commit()


@contextmanager
def job_queue(url: str) -> Iterator[None]:
	"""Send this process's ``frappe.enqueue`` calls to the Redis at `url` (a test's private job queue).

	Workers and watchers started for a test get the same queue through ``FRAPPE_REDIS_QUEUE``
	(``machhelpdesk.testing.processes.RedisQueue.env``); this is the in-process side of it.
	"""
	from frappe.utils import background_jobs

	saved = frappe.local.conf.redis_queue, background_jobs._redis_queue_conn
	frappe.local.conf.redis_queue = url
	background_jobs._redis_queue_conn = None  # Frappe keeps one connection per process; make a new one
	try:
		yield
	finally:
		frappe.local.conf.redis_queue, background_jobs._redis_queue_conn = saved
