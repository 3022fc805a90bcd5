"""Processing rules and blocking filters on real mail through intake, and dry runs that change nothing."""

import frappe

from machhelpdesk.rule_testing import dry_run
from machhelpdesk.tests.factories import bench_command, ledger, make_message
from machhelpdesk.tests.test_intake import IntakeTestCase


def make_rule(account: str, name: str, conditions: list[dict], actions: list[dict], **values):
	"""A saved MH Processing Rule on ``account`` (committed, because intake runs in its own transactions)."""
	doc = frappe.get_doc(
		{
			"doctype": "MH Processing Rule",
			"rule_name": name,
			"imap_account": account,
			"sequence": values.pop("sequence", 10),
			"conditions": conditions,
			"actions": actions,
			**values,
		}
	)
	doc.insert(ignore_permissions=True)
	frappe.db.commit()
	return doc


class TestSeedExamples(IntakeTestCase):
	def test_mail_to_support_lands_in_the_support_department(self):
		frappe.get_doc({"doctype": "MH Department", "department_name": "Sales"}).insert(
			ignore_permissions=True
		)
		self.account.db_set("default_department", "Sales")
		frappe.db.delete("MH Processing Rule", {"imap_account": self.account.name})
		frappe.db.commit()
		make_rule(
			self.account.name,
			"Support line",
			[{"field": "To", "operator": "equals", "value": "support@xyzhosting.com"}],
			[{"action": "Forward to Department", "department": "Support"}],
		)
		self.deliver(
			make_message(to="Someone <a@example.org>, Support <support@xyzhosting.com>, b@example.org")
		)
		self.deliver(make_message(subject="to sales", to="sales@xyzhosting.com"))
		self.pull()
		departments = dict(frappe.get_all("MH Ticket", fields=["subject", "department"], as_list=True))
		self.assertEqual(departments["Help, the printer is on fire"], "Support")
		self.assertEqual(departments["to sales"], "Sales")
		rule = frappe.get_doc("MH Processing Rule", {"rule_name": "Support line"})
		self.assertEqual(rule.hit_count, 1)
		self.assertIsNotNone(rule.last_hit_on)
		ticket = frappe.get_doc("MH Ticket", {"subject": "Help, the printer is on fire"})
		self.assertIn('Rule "Support line"', ticket.intake_note, "agents see why the mail went there")
		frappe.db.delete("MH Department", {"name": "Sales"})
		frappe.db.commit()

	def test_spam_subject_is_deleted_from_the_server_with_the_rule_named(self):
		make_rule(
			self.account.name,
			"Spam killer",
			[{"field": "Subject", "operator": "contains", "value": "[Spam]"}],
			[{"action": "Delete Message"}],
		)
		self.deliver(make_message(subject="=?utf-8?q?=5BSpam=5D_cheap_pills?="))
		self.deliver(make_message(subject="real question"))
		summary = self.pull()
		self.assertEqual((summary["deleted_by_rule"], summary["tickets"]), (1, 1), summary["text"])
		row = frappe.get_doc("MH Inbound Mail", {"state": "Deleted by Rule"})
		self.assertIn("Spam killer", row.reason)
		self.assertEqual(
			row.server_action, "Deleted", "a rule's delete removes it from the server, not moves it"
		)
		self.assertEqual(self.inbox(), [])
		self.assertEqual(len(self.parsed_folder()), 1, "only the real question was moved")
		self.assertEqual(frappe.db.count("MH Ticket"), 1)

	def test_rule_actions_set_assignment_status_and_priority(self):
		agent = "rules.agent@helpdesk.test"
		if not frappe.db.exists("User", agent):
			frappe.get_doc(
				{
					"doctype": "User",
					"email": agent,
					"first_name": "Agent",
					"roles": [{"role": "MH Agent"}],
					"send_welcome_email": 0,
				}
			).insert(ignore_permissions=True)
		make_rule(
			self.account.name,
			"VIP",
			[{"field": "From", "operator": "ends with", "value": "@vip.example"}],
			[
				{"action": "Assign To", "agent": agent},
				{"action": "Set Status", "status": "Waiting on Customer"},
				{"action": "Override Priority", "priority": "Urgent"},
			],
		)
		self.deliver(make_message(sender="Boss <boss@vip.example>"))
		self.pull()
		ticket = frappe.get_doc("MH Ticket", ledger(self.account.name)[0].ticket)
		self.assertEqual((ticket.status, ticket.priority), ("Waiting on Customer", "Urgent"))
		self.assertTrue(
			frappe.db.exists("ToDo", {"reference_name": ticket.name, "allocated_to": agent, "status": "Open"})
		)

	def test_rules_leave_replies_alone_unless_told(self):
		frappe.get_doc({"doctype": "MH Department", "department_name": "Billing"}).insert(
			ignore_permissions=True
		)
		frappe.db.commit()
		self.deliver(make_message(subject="first", message_id="<r1@example.com>"))
		self.pull()
		ticket = ledger(self.account.name)[0].ticket
		rule = make_rule(
			self.account.name,
			"Billing words",
			[{"field": "Body", "operator": "contains", "value": "invoice"}],
			[{"action": "Forward to Department", "department": "Billing"}],
		)
		self.deliver(
			make_message(
				subject="Re: first", body="about the invoice", headers={"In-Reply-To": "<r1@example.com>"}
			)
		)
		self.pull()
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket, "department"), "Support")
		rule.also_on_replies = 1
		rule.save()
		frappe.db.commit()
		self.deliver(
			make_message(
				subject="Re: first", body="invoice again", headers={"In-Reply-To": "<r1@example.com>"}
			)
		)
		self.pull()
		self.assertEqual(frappe.db.get_value("MH Ticket", ticket, "department"), "Billing")
		frappe.db.delete("MH Ticket", {"name": ticket})
		frappe.db.delete("MH Department", {"name": "Billing"})
		frappe.db.commit()


class TestBlockingFilters(IntakeTestCase):
	def test_address_domain_and_regex_filters_each_stop_a_real_message(self):
		for filter_type, value in (
			("Address", "spammer@junk.test"),
			("Domain", "evil.test"),
			("Regex", r"^promo[0-9]+@"),
		):
			frappe.get_doc(
				{"doctype": "MH Blocking Filter", "filter_type": filter_type, "value": value}
			).insert(ignore_permissions=True)
		frappe.db.commit()
		queued_before = frappe.db.count("Email Queue")
		self.deliver(make_message(sender="spammer@junk.test"))
		self.deliver(make_message(sender="x@mail.evil.test"))
		self.deliver(make_message(sender="promo42@shop.test"))
		self.deliver(make_message(sender="friend@good.test"))
		summary = self.pull()
		self.assertEqual((summary["blocked"], summary["tickets"]), (3, 1), summary["text"])
		self.assertEqual(frappe.get_all("MH Ticket", pluck="raised_by"), ["friend@good.test"])
		blocked = frappe.get_all(
			"MH Inbound Mail", filters={"state": "Blocked"}, fields=["reason", "server_action"]
		)
		self.assertTrue(all("MH-BF-" in b.reason and b.server_action == "Moved" for b in blocked), blocked)
		self.assertEqual(frappe.db.count("Email Queue"), queued_before, "blocked mail gets no mail back")
		hits = frappe.get_all("MH Blocking Filter", pluck="hit_count")
		self.assertEqual(sorted(hits), [1, 1, 1])
		self.assertEqual(self.inbox(), [])


class TestDryRuns(IntakeTestCase):
	def counts(self) -> dict:
		doctypes = ("MH Ticket", "MH Inbound Mail", "Communication", "File", "Contact", "Email Queue", "ToDo")
		return {dt: frappe.db.count(dt) for dt in doctypes} | {
			"hits": frappe.db.sql("select coalesce(sum(hit_count), 0) from `tabMH Processing Rule`")[0][0]
		}

	def test_rules_dry_run_changes_nothing_and_reports(self):
		self.deliver(make_message(subject="[Spam] buy now"))
		self.deliver(make_message(subject="normal"))
		self.pull()
		rule = make_rule(
			self.account.name,
			"Spam (off)",
			[{"field": "Subject", "operator": "contains", "value": "[spam]"}],
			[{"action": "Delete Message"}],
			enabled=0,
		)
		before, mailbox_before = self.counts(), (self.inbox(), self.parsed_folder())
		results = dry_run(self.account.name, rule_names=[rule.name], last=10)
		self.assertEqual(self.counts(), before)
		self.assertEqual((self.inbox(), self.parsed_folder()), mailbox_before)
		outcomes = {r["subject"]: r["outcome"] for r in results}
		self.assertEqual(outcomes["[Spam] buy now"], "Deleted by Rule")
		self.assertEqual(outcomes["normal"], "Ticketed")
		spam = next(r for r in results if r["subject"] == "[Spam] buy now")
		self.assertEqual(spam["trace"][0]["conditions"][0]["matched"], True)

		draft = {"rule_name": "Draft", "imap_account": self.account.name, "match": "All",
			"conditions": [{"field": "Subject", "operator": "matches regex", "value": "^norm"}],
			"actions": [{"action": "Set Status", "status": "Resolved"}]}  # fmt: skip
		[normal] = [
			r for r in dry_run(self.account.name, draft_rules=[draft], last=10) if r["subject"] == "normal"
		]
		self.assertEqual(normal["status"], "Resolved")
		self.assertEqual(self.counts(), before)

	def test_rules_test_command_on_a_file(self):
		path = frappe.get_site_path("private", "mh-dry-run-test.eml")
		with open(path, "wb") as fh:
			fh.write(make_message(subject="[Spam] from a file"))
		make_rule(
			self.account.name,
			"Spam",
			[{"field": "Subject", "operator": "contains", "value": "[spam]"}],
			[{"action": "Delete Message"}],
		)
		before = self.counts()
		result = bench_command("mh-rules-test", "--account", self.account.name, "--file", path)
		self.assertEqual(result.returncode, 0, result.stderr[-2000:])
		self.assertIn("Deleted by Rule", result.stdout)
		self.assertIn("rule 'Spam': matched", result.stdout)
		frappe.db.commit()
		self.assertEqual(self.counts(), before)

	def test_fetch_dry_run_changes_nothing_on_server_or_db(self):
		for i in range(3):
			self.deliver(make_message(subject=f"dry {i}"))
		before, inbox_before = self.counts(), self.inbox()
		result = bench_command("mh-fetch", "--account", self.account.name, "--dry-run")
		self.assertEqual(result.returncode, 0, result.stderr[-2000:])
		self.assertIn("dry run", result.stdout)
		self.assertIn("tickets 3", result.stdout)
		frappe.db.commit()
		self.assertEqual(self.counts(), before)
		self.assertEqual(self.inbox(), inbox_before)
		self.assertEqual(frappe.db.get_value("MH IMAP Account", self.account.name, "last_uid"), 0)
		flags = self.dovecot.flags(self.user, "INBOX")
		self.assertTrue(all(b"\\Seen" not in f for f in flags.values()))
