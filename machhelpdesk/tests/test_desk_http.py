"""The desk over real HTTP (gunicorn on 127.0.0.1): every MH DocType loads, secrets stay secret, roles hold."""

import json
import sys

import requests

import frappe
from frappe.tests.utils import FrappeTestCase

from machhelpdesk.testing.dovecot import Dovecot
from machhelpdesk.testing.webserver import FrappeWebServer
from machhelpdesk.tests.factories import make_account, make_user, reset_intake_data

PASSWORD = "Desk-Test-Pa55word!"
SECRET = "imap-secret-Xy7"


def mh_doctypes() -> list[frappe._dict]:
	return frappe.get_all(
		"DocType", filters={"module": "MachHelpdesk"}, fields=["name", "istable", "issingle"]
	)


class TestDeskOverHTTP(FrappeTestCase):
	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		reset_intake_data()
		cls.admin = make_user("desk.admin@helpdesk.test", ("System Manager", "MH Manager"), password=PASSWORD)
		cls.agent = make_user("desk.agent@helpdesk.test", ("MH Agent",), password=PASSWORD)
		cls.dovecot = Dovecot()
		cls.dovecot.start()
		user, password = cls.dovecot.new_user("desk")
		cls.account = make_account(cls.dovecot, user, password)
		frappe.db.commit()  # gunicorn is another process: it must see these
		cls.web = FrappeWebServer(frappe.local.sites_path, frappe.local.site, python=sys.executable)
		cls.web.start()

	@classmethod
	def tearDownClass(cls):
		cls.web.stop()
		cls.dovecot.stop()
		reset_intake_data()
		super().tearDownClass()

	def session(self, user: str) -> requests.Session:
		return self.web.login(user, PASSWORD)

	def test_every_mh_doctype_loads_in_the_desk(self):
		s = self.session(self.admin)
		doctypes = mh_doctypes()
		self.assertGreaterEqual(len(doctypes), 12)
		for dt in doctypes:
			with self.subTest(doctype=dt.name):
				response = s.get(
					self.web.url("/api/method/frappe.desk.form.load.getdoctype"),
					params={"doctype": dt.name},
					timeout=30,
				)
				self.assertEqual(response.status_code, 200, response.text[:500])
				docs = response.json()["docs"]
				self.assertEqual(docs[0]["name"], dt.name)
				self.assertTrue(docs[0]["fields"])
				if dt.issingle:
					response = s.get(
						self.web.url("/api/method/frappe.desk.form.load.getdoc"),
						params={"doctype": dt.name, "name": dt.name},
						timeout=30,
					)
					self.assertEqual(response.status_code, 200, response.text[:500])
				elif not dt.istable:
					response = s.get(
						self.web.url("/api/method/frappe.desk.reportview.get"),
						params={"doctype": dt.name, "fields": json.dumps([f"`tab{dt.name}`.`name`"])},
						timeout=30,
					)
					self.assertEqual(response.status_code, 200, response.text[:500])

	def test_workspace_loads(self):
		s = self.session(self.admin)
		response = s.get(
			self.web.url("/api/method/frappe.desk.desktop.get_desktop_page"),
			params={"page": json.dumps({"name": "Help Desk", "title": "Help Desk", "public": 1})},
			timeout=30,
		)
		self.assertEqual(response.status_code, 200, response.text[:500])
		shortcuts = [s["label"] for s in response.json()["message"]["shortcuts"]["items"]]
		for label in ("Tickets", "Help Desk Users", "Manage Departments", "General Settings", "Manage Statuses",
				"Manage Priorities", "Blocking Filters", "Email Parser"):  # fmt: skip
			self.assertIn(label, shortcuts)

	def test_imap_password_never_in_api_responses(self):
		account = frappe.get_doc("MH IMAP Account", self.account.name)
		account.password = SECRET
		account.save()
		frappe.db.commit()
		s = self.session(self.admin)
		for response in (
			s.get(self.web.url(f"/api/resource/MH IMAP Account/{self.account.name}"), timeout=30),
			s.get(
				self.web.url("/api/method/frappe.desk.form.load.getdoc"),
				params={"doctype": "MH IMAP Account", "name": self.account.name},
				timeout=30,
			),
			s.get(
				self.web.url("/api/method/frappe.client.get_list"),
				params={"doctype": "MH IMAP Account", "fields": json.dumps(["*"])},
				timeout=30,
			),
		):
			self.assertEqual(response.status_code, 200, response.text[:300])
			self.assertNotIn(SECRET, response.text)

	def test_test_connection_reports_plain_words(self):
		s = self.session(self.admin)
		account = frappe.get_doc("MH IMAP Account", self.account.name)
		account.password = self.dovecot.users[account.username]
		account.save()
		frappe.db.commit()
		ok = s.post(
			self.web.url("/api/method/run_doc_method"),
			data={"dt": "MH IMAP Account", "dn": self.account.name, "method": "test_connection"},
			timeout=60,
		)
		self.assertEqual(ok.status_code, 200, ok.text[:500])
		self.assertTrue(ok.json()["message"]["ok"], ok.text[:500])
		self.assertIn("INBOX", ok.json()["message"]["folders"])

		account.password = "wrong"
		account.save()
		frappe.db.commit()
		bad = s.post(
			self.web.url("/api/method/run_doc_method"),
			data={"dt": "MH IMAP Account", "dn": self.account.name, "method": "test_connection"},
			timeout=60,
		)
		report = bad.json()["message"]
		self.assertFalse(report["ok"])
		self.assertIn("password", report["message"].lower())
		self.assertNotIn("wrong", report["message"])

	def test_agent_cannot_change_settings_over_http(self):
		s = self.session(self.agent)
		response = s.post(
			self.web.url("/api/method/frappe.client.set_value"),
			data={
				"doctype": "MH Settings",
				"name": "MH Settings",
				"fieldname": "ticket_prefix",
				"value": "HACK",
			},
			timeout=30,
		)
		self.assertEqual(response.status_code, 403, response.text[:300])
		self.assertEqual(frappe.db.get_single_value("MH Settings", "ticket_prefix"), "MP")
