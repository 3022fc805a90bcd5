"""The foundation: validations with their messages, ticket naming, defaults, roles and secrets."""

import frappe
from frappe.tests.utils import FrappeTestCase
from frappe.utils.password import get_decrypted_password

from machhelpdesk.install import DEFAULT_PRIORITIES, DEFAULT_STATUSES, create_defaults
from machhelpdesk.tests.factories import make_ticket, make_user


def account_doc(**values):
	return frappe.get_doc(
		{
			"doctype": "MH IMAP Account",
			"email_address": "support@helpdesk.test",
			"imap_server": "imap.helpdesk.test",
			"username": "support",
			"password": "s3cret-Pa55",
			**values,
		}
	)


class TestIMAPAccountValidation(FrappeTestCase):
	def tearDown(self):
		frappe.db.rollback()

	def assert_refused(self, message_part: str, **values):
		with self.assertRaises(frappe.ValidationError) as caught:
			account_doc(**values).insert()
		self.assertIn(message_part, str(caught.exception))

	def test_address_must_be_an_email_address(self):
		self.assert_refused("is not a valid email address", email_address="not-an-address")

	def test_port_range(self):
		self.assert_refused("from 1 to 65535", port=70000)
		self.assert_refused("from 1 to 65535", port=-5)

	def test_pop3_ports_are_explained(self):
		self.assert_refused("Port 110 is a POP3 port", port=110)
		self.assert_refused("Port 995 is a POP3 port", port=995)

	def test_folder_required_when_moving(self):
		self.assert_refused("Say which folder parsed email moves to", move_parsed_email=1, move_to_folder="")

	def test_folder_to_read_required(self):
		self.assert_refused("Say which folder to read", folder=" ")

	def test_move_folder_differs_from_read_folder(self):
		self.assert_refused(
			"cannot move to the folder it is read from", folder="INBOX", move_to_folder="inbox"
		)

	def test_port_follows_encryption(self):
		doc = account_doc(encryption="STARTTLS", port=None)
		doc.insert()
		self.assertEqual(doc.port, 143)
		doc.encryption = "SSL/TLS"
		doc.save()
		self.assertEqual(doc.port, 993)
		doc.port = 10993
		doc.encryption = "None"
		doc.save()
		self.assertEqual(doc.port, 10993, "a custom port is kept when the encryption changes")

	def test_defaults(self):
		doc = account_doc()
		doc.insert()
		self.assertEqual((doc.encryption, doc.port, doc.folder), ("SSL/TLS", 993, "INBOX"))
		self.assertEqual((doc.move_parsed_email, doc.move_to_folder, doc.enabled), (1, "Parsed", 1))

	def test_password_is_never_stored_or_returned_in_plain_text(self):
		doc = account_doc()
		doc.insert()
		stored = frappe.db.get_value("MH IMAP Account", doc.name, "password")
		self.assertNotIn("s3cret-Pa55", stored or "")
		raw_rows = frappe.db.sql(
			"select * from `tabMH IMAP Account` where name=%s", (doc.name,), as_dict=True
		)
		self.assertNotIn("s3cret-Pa55", frappe.as_json(raw_rows))
		api_view = frappe.get_doc("MH IMAP Account", doc.name).as_dict()
		self.assertNotIn("s3cret-Pa55", frappe.as_json(api_view))
		self.assertEqual(get_decrypted_password("MH IMAP Account", doc.name, "password"), "s3cret-Pa55")

	def test_default_rule_created_for_new_account(self):
		doc = account_doc(default_department="Support")
		doc.insert()
		rule = frappe.get_doc("MH Processing Rule", {"imap_account": doc.name})
		self.assertEqual(rule.rule_name, "Default Rule #1")
		self.assertEqual(rule.actions[0].action, "Forward to Department")
		self.assertEqual(rule.actions[0].department, "Support")


class TestTicketNaming(FrappeTestCase):
	def setUp(self):
		self.settings = frappe.get_single("MH Settings")
		self.original = (self.settings.ticket_prefix, self.settings.ticket_postfix)

	def tearDown(self):
		frappe.db.rollback()
		frappe.clear_document_cache("MH Settings", "MH Settings")

	def set_affixes(self, prefix, postfix=""):
		self.settings.ticket_prefix = prefix
		self.settings.ticket_postfix = postfix
		self.settings.save()

	def test_default_prefix(self):
		ticket = make_ticket()
		self.assertRegex(ticket.name, r"^MP-\d{6}$")

	def test_prefix_and_postfix(self):
		self.set_affixes("XY", "EU")
		ticket = make_ticket()
		self.assertRegex(ticket.name, r"^XY-\d{6}-EU$")

	def test_one_counter_across_prefix_change(self):
		first = make_ticket()
		self.set_affixes("NEW")
		second = make_ticket()
		self.assertTrue(second.name.startswith("NEW-"))
		self.assertEqual(int(second.name.split("-")[1]), int(first.name.split("-")[1]) + 1)
		self.assertTrue(frappe.db.exists("MH Ticket", first.name), "old tickets keep their names")

	def test_old_prefixes_are_remembered(self):
		from machhelpdesk.machhelpdesk.doctype.mh_settings.mh_settings import ticket_affixes

		self.set_affixes("OLD", "A")
		self.set_affixes("NEW", "B")
		prefixes, postfixes = ticket_affixes()
		self.assertEqual(prefixes[0], "NEW")
		self.assertIn("OLD", prefixes)
		self.assertIn("MP", prefixes)
		self.assertEqual(postfixes[0], "B")
		self.assertIn("A", postfixes)

	def test_invalid_prefix_refused(self):
		self.settings.ticket_prefix = "M P!"
		with self.assertRaises(frappe.ValidationError) as caught:
			self.settings.save()
		self.assertIn("1 to 12 letters or digits", str(caught.exception))

	def test_new_ticket_gets_default_status_and_priority(self):
		ticket = make_ticket()
		self.assertEqual(ticket.status, "Open")
		self.assertEqual(ticket.status_category, "Open")
		self.assertEqual(ticket.priority, "Medium")
		self.assertIsNotNone(ticket.opened_on)

	def test_closing_sets_closed_on(self):
		ticket = make_ticket()
		ticket.status = "Closed"
		ticket.save()
		self.assertEqual(ticket.status_category, "Closed")
		self.assertIsNotNone(ticket.closed_on)
		ticket.status = "Open"
		ticket.save()
		self.assertIsNone(ticket.closed_on)


class TestDefaults(FrappeTestCase):
	def test_defaults_exist(self):
		for name, category, *_ in DEFAULT_STATUSES:
			self.assertEqual(frappe.db.get_value("MH Ticket Status", name, "category"), category)
		for name, rank, _default in DEFAULT_PRIORITIES:
			self.assertEqual(frappe.db.get_value("MH Ticket Priority", name, "rank"), rank)
		self.assertTrue(frappe.db.exists("MH Department", "Support"))

	def test_settings_defaults_match_the_seed(self):
		settings = frappe.get_single("MH Settings")
		self.assertEqual(
			(settings.require_registration, settings.auto_create_accounts, settings.require_confirmation),
			(1, 1, 1),
		)
		self.assertEqual(settings.kill_unconfirmed_after_days, 2)
		self.assertEqual((settings.hide_helpdesk_from_client, settings.allow_reopen), (0, 1))
		self.assertEqual((settings.ticket_prefix, settings.ticket_postfix or ""), ("MP", ""))
		self.assertEqual(settings.tickets_per_page, 20)
		self.assertEqual((settings.auto_close_tickets, settings.auto_close_after_hours), (1, 10))
		self.assertEqual(settings.max_attachment_size_mb, 10)

	def test_defaults_are_created_once(self):
		counts = {
			dt: frappe.db.count(dt)
			for dt in ("MH Ticket Status", "MH Ticket Priority", "MH Department", "Role")
		}
		create_defaults()
		create_defaults()
		self.assertEqual(counts, {dt: frappe.db.count(dt) for dt in counts})

	def test_edited_defaults_are_not_overwritten(self):
		frappe.db.set_value("MH Ticket Status", "Replied", "color", "purple")
		create_defaults()
		self.assertEqual(frappe.db.get_value("MH Ticket Status", "Replied", "color"), "purple")
		frappe.db.rollback()

	def test_customer_role_has_no_desk_access(self):
		self.assertEqual(frappe.db.get_value("Role", "MH Customer", "desk_access"), 0)
		self.assertEqual(frappe.db.get_value("Role", "MH Agent", "desk_access"), 1)


class TestRoles(FrappeTestCase):
	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		cls.agent = make_user("agent.roles@helpdesk.test", ("MH Agent",))
		cls.manager = make_user("manager.roles@helpdesk.test", ("MH Manager",))

	def tearDown(self):
		frappe.set_user("Administrator")

	def test_agent_cannot_edit_settings(self):
		frappe.set_user(self.agent)
		self.assertTrue(frappe.has_permission("MH Settings", "read"))
		self.assertFalse(frappe.has_permission("MH Settings", "write"))
		settings = frappe.get_doc("MH Settings")
		settings.ticket_prefix = "AG"
		with self.assertRaises(frappe.PermissionError):
			settings.save()

	def test_manager_can_edit_settings_and_rules(self):
		frappe.set_user(self.manager)
		self.assertTrue(frappe.has_permission("MH Settings", "write"))
		self.assertTrue(frappe.has_permission("MH Processing Rule", "create"))
		self.assertTrue(frappe.has_permission("MH Blocking Filter", "create"))

	def test_agent_cannot_edit_rules_or_filters(self):
		frappe.set_user(self.agent)
		self.assertFalse(frappe.has_permission("MH Processing Rule", "create"))
		self.assertFalse(frappe.has_permission("MH Blocking Filter", "write"))
		self.assertTrue(frappe.has_permission("MH Ticket", "write"))


class TestRuleAndFilterValidation(FrappeTestCase):
	def tearDown(self):
		frappe.db.rollback()

	def test_invalid_regex_in_rule_is_refused_with_position(self):
		rule = frappe.get_doc(
			{
				"doctype": "MH Processing Rule",
				"rule_name": "Broken",
				"apply_to_all_accounts": 1,
				"conditions": [{"field": "Subject", "operator": "matches regex", "value": "(unclosed"}],
				"actions": [{"action": "Delete Message"}],
			}
		)
		with self.assertRaises(frappe.ValidationError) as caught:
			rule.insert()
		self.assertIn('Rule "Broken"', str(caught.exception))
		self.assertIn("position", str(caught.exception))

	def test_rule_needs_an_account_or_global_scope(self):
		rule = frappe.get_doc(
			{
				"doctype": "MH Processing Rule",
				"rule_name": "Nowhere",
				"actions": [{"action": "Delete Message"}],
			}
		)
		with self.assertRaises(frappe.ValidationError) as caught:
			rule.insert()
		self.assertIn("Choose the IMAP account", str(caught.exception))

	def test_blocking_filter_validation(self):
		cases = [
			("Address", "spam.example.com", "is not an email address"),
			("Domain", "not a domain", "is not a domain name"),
			("Regex", "([a-z]", "invalid at position"),
		]
		for filter_type, value, message in cases:
			with self.subTest(filter_type=filter_type):
				with self.assertRaises(frappe.ValidationError) as caught:
					frappe.get_doc(
						{"doctype": "MH Blocking Filter", "filter_type": filter_type, "value": value}
					).insert()
				self.assertIn(message, str(caught.exception))

	def test_domain_filter_covers_subdomains(self):
		bf = frappe.get_doc(
			{"doctype": "MH Blocking Filter", "filter_type": "Domain", "value": "@Spam.Example"}
		)
		bf.insert()
		self.assertEqual(bf.value, "spam.example")
		self.assertTrue(bf.matches("a@spam.example"))
		self.assertTrue(bf.matches("a@mx.spam.example"))
		self.assertFalse(bf.matches("a@notspam.example"))
