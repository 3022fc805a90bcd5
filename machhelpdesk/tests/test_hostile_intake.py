"""Hostile mail through the whole intake, from a real Dovecot: each ends as one ledger row an agent can
read, and a ticket wherever a person could have meant it. The engine's own hostile tests (tier 1,
``tests/test_hostile.py``) check the parser's output in detail; these check what reaches the desk.
"""

import base64
import gzip
import io
import zipfile

import frappe

from machhelpdesk.tests.factories import ledger
from machhelpdesk.tests.test_intake import IntakeTestCase

MB = 1024 * 1024
HEAD = "From: {sender}\r\nTo: support@helpdesk.test\r\nSubject: {subject}\r\nMessage-ID: <{mid}@hostile.test>\r\n"


def message(
	subject: str, body: bytes = b"Hello.\r\n", sender: str = "Hostile <hostile@example.com>", **extra
) -> bytes:
	head = HEAD.format(sender=sender, subject=subject, mid=abs(hash((subject, len(body)))))
	head += "".join(f"{name}: {value}\r\n" for name, value in extra.items())
	return head.encode("utf-8", "surrogateescape") + b"\r\n" + body


def multipart(subject: str, parts: list[bytes], **extra) -> bytes:
	body = b"".join(b"--B\r\n" + part + b"\r\n" for part in parts) + b"--B--\r\n"
	return message(
		subject, body, **{"MIME-Version": "1.0", "Content-Type": 'multipart/mixed; boundary="B"'}, **extra
	)


def attachment(filename: str, content: bytes, content_type: str = "application/octet-stream") -> bytes:
	encoded = base64.encodebytes(content)
	return (
		f'Content-Type: {content_type}\r\nContent-Disposition: attachment; filename="{filename}"\r\n'
		"Content-Transfer-Encoding: base64\r\n\r\n"
	).encode() + encoded


def nested(levels: int) -> bytes:
	inner = message("innermost", b"deep\r\n")
	for _ in range(levels):
		inner = b"Content-Type: message/rfc822\r\n\r\n" + inner
		inner = multipart("wrapper", [inner])
	return inner


def stored_bytes(file: str) -> bytes:
	with open(frappe.get_doc("File", file).get_full_path(), "rb") as stored:
		return stored.read()


class TestHostileMailThroughIntake(IntakeTestCase):
	def pull_one(self, raw: bytes):
		self.deliver(raw)
		summary = self.pull()
		[row] = ledger(self.account.name)
		self.assertEqual(self.inbox(), [] if row.state != "Failed" else self.inbox(), summary["text"])
		return row, (frappe.get_doc("MH Ticket", row.ticket) if row.ticket else None)

	def test_a_50_mb_attachment_is_listed_not_stored_and_the_mail_is_ticketed(self):
		row, ticket = self.pull_one(
			multipart(
				"Here is the dump",
				[b"Content-Type: text/plain\r\n\r\nsee attached", attachment("dump.bin", b"\0" * (50 * MB))],
			)
		)
		self.assertEqual(row.state, "Ticketed")
		self.assertIn("dump.bin (50.0 MB)", ticket.intake_note)
		self.assertEqual(frappe.get_all("File", filters={"attached_to_name": ticket.name}), [])

	def test_mail_bombs_each_become_one_readable_ticket(self):
		cases = {
			"10,000 parts": multipart("many parts", [b"Content-Type: text/plain\r\n\r\nx"] * 10_000),
			"nested 100 deep": nested(100),
			"1 MB subject": message("S" * MB),
			"5,000 recipients": message(
				"many recipients", Cc=", ".join(f"r{i}@example.org" for i in range(5000))
			),
			"1 MB header line": message("long header", **{"X-Long": "h" * MB}),
		}
		for name, raw in cases.items():
			with self.subTest(name=name):
				self.setUp()
				row, ticket = self.pull_one(raw)
				self.assertEqual(row.state, "Ticketed", row.reason)
				self.assertTrue(ticket.subject)
				self.assertLessEqual(len(ticket.subject), 500)
				self.assertLessEqual(len(ticket.cc or ""), 5000)

	def test_nul_bytes_and_invalid_utf8_everywhere(self):
		raw = (
			b"From: N\x00ul \xff <nul@example.com>\r\nTo: support@helpdesk.test\r\n"
			b"Subject: bad \xc3\x28 \x00 subject\r\nMessage-ID: <nul-1@hostile.test>\r\n"
			b"Content-Type: text/plain; charset=utf-8\r\n\r\nbody \xff\xfe \x00 end\r\n"
		)
		row, ticket = self.pull_one(raw)
		self.assertEqual(row.state, "Ticketed", row.reason)
		self.assertNotIn("\x00", ticket.subject)
		communication = frappe.get_doc(
			"Communication", row.get("communication") or {"reference_name": ticket.name}
		)
		self.assertNotIn("\x00", communication.content)

	def test_script_in_subject_name_body_and_file_names_is_stored_inert(self):
		xss = '<img src=x onerror=alert(1)><script>alert("x")</script>'
		raw = multipart(
			f"Hi {xss}",
			[
				f'Content-Type: text/html\r\n\r\n<p>Hello</p>{xss}<a href="javascript:alert(1)">x</a>'.encode(),
				attachment("../../x/passwd", b"root:x:0:0"),
				attachment("C:\\Windows\\evil<script>.txt", b"evil"),
				attachment("n" * 300 + ".txt", b"long name"),
			],
			sender=f'"{xss}" <xss@example.com>',
		)
		row, ticket = self.pull_one(raw)
		self.assertEqual(row.state, "Ticketed", row.reason)
		for bad in ("<script", "onerror"):
			self.assertNotIn(bad, ticket.subject, "Frappe's own filter leaves the subject inert")
		self.assertNotIn("<", ticket.raised_by_name, "a name is text")
		content = frappe.db.get_value("Communication", {"reference_name": ticket.name}, "content")
		for bad in ("<script", "onerror", "javascript:"):
			self.assertNotIn(bad, content)
		files = frappe.get_all(
			"File", filters={"attached_to_name": ticket.name}, fields=["file_name", "file_url"]
		)
		self.assertEqual(len(files), 3, (files, ticket.intake_note))
		for file in files:
			self.assertNotIn("/", file.file_name)
			self.assertNotIn("\\", file.file_name)
			self.assertNotIn("<", file.file_name)
			self.assertLessEqual(len(file.file_name.encode()), 255)
			self.assertTrue(file.file_url.startswith("/private/files/"))

	def test_encoding_traps_become_tickets_and_archives_are_stored_as_sent(self):
		# Archives of 64 MB of zeros are kept as the customer sent them, never unpacked; a gzip-encoded
		# text part is not inflated either. Quoted-printable soft breaks and a base64 attachment with a
		# break after every character cost time per line, not memory per line.
		zeros = b"\0" * (64 * MB)
		zipped = io.BytesIO()
		with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
			archive.writestr("zeros.txt", zeros)
		archives = {"zeros.gz": gzip.compress(zeros, mtime=0), "zeros.zip": zipped.getvalue()}
		gzipped_text = gzip.compress(b"hello " * MB, mtime=0)
		row, ticket = self.pull_one(
			multipart(
				"archives",
				[
					b"Content-Type: text/plain\r\n\r\nLogs attached.",
					b"Content-Type: text/plain\r\nContent-Transfer-Encoding: gzip\r\n\r\n" + gzipped_text,
					*(attachment(name, content, "application/gzip") for name, content in archives.items()),
				],
			)
		)
		self.assertEqual(row.state, "Ticketed", row.reason)
		stored = {
			file.file_name: stored_bytes(file.name)
			for file in frappe.get_all("File", filters={"attached_to_name": ticket.name}, fields=["*"])
		}
		self.assertEqual(stored, archives, ticket.intake_note)
		content = frappe.db.get_value("Communication", {"reference_name": ticket.name}, "content")
		self.assertIn("Logs attached.", content)
		self.assertLess(len(content), 2 * MB, "the gzip-encoded part was not inflated into the thread")

		self.setUp()
		qp = b"=\r\n" * (2 * MB) + b"=41" * (MB // 3) + b"\r\n=ZZ=4=\r\nend\r\n"
		row, ticket = self.pull_one(
			message("soft breaks", qp, **{"Content-Transfer-Encoding": "quoted-printable"})
		)
		self.assertEqual(row.state, "Ticketed", row.reason)
		content = frappe.db.get_value("Communication", {"reference_name": ticket.name}, "content")
		self.assertIn("AAAA", content)
		self.assertIn("end", content)

		self.setUp()
		row, ticket = self.pull_one(
			multipart(
				"one character per line",
				[b"Content-Type: text/plain\r\n\r\nsee attached", attachment("a.bin", b"") + b"A\r\n" * MB],
			)
		)
		self.assertEqual(row.state, "Ticketed", row.reason)
		[file] = frappe.get_all("File", filters={"attached_to_name": ticket.name}, pluck="name")
		self.assertEqual(stored_bytes(file), b"\0" * (MB // 4 * 3))
