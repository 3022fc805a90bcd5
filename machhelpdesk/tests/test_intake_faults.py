"""Intake under fire: a worker SIGKILLed at each step, two workers at once, IMAP dropped mid-batch.

Every case ends with a clean pull and then checks the promise: each message has exactly one ticket,
nothing is lost, and the server folder ends where it should. The kills are real (``SIGKILL`` of a
real ``bench mh-fetch`` process); the failpoint environment variable only chooses the moment.
"""

import subprocess
import sys
import time

import frappe
from frappe.tests.utils import FrappeTestCase

from machhelpdesk.intake import MAX_ATTEMPTS
from machhelpdesk.tests.factories import ledger, make_message
from machhelpdesk.tests.test_intake import IntakeTestCase

BATCH = 12
STEPS = ("after_fetch", "after_ledger", "before_commit", "after_commit", "after_move")


class TestKilledWorker(IntakeTestCase):
	def fill(self, count: int = BATCH) -> list[str]:
		subjects = [f"Crash test {i:03d}" for i in range(count)]
		for subject in subjects:
			self.deliver(make_message(subject=subject))
		return subjects

	def assert_exactly_once(self, subjects: list[str]) -> None:
		tickets = frappe.get_all("MH Ticket", pluck="subject")
		self.assertEqual(sorted(tickets), sorted(subjects), "every mail has exactly one ticket")
		rows = ledger(self.account.name)
		self.assertEqual(len(rows), len(subjects), "one ledger row per mail")
		self.assertEqual({(r.state, r.server_action) for r in rows}, {("Ticketed", "Moved")})
		self.assertEqual(self.inbox(), [])
		self.assertEqual(len(self.parsed_folder()), len(subjects))
		communications = frappe.db.count("Communication", {"reference_doctype": "MH Ticket"})
		self.assertEqual(communications, len(subjects), "one thread entry per mail")

	def test_sigkill_at_every_step_loses_and_duplicates_nothing(self):
		for step in STEPS:
			with self.subTest(step=step):
				self.setUp()
				subjects = self.fill()
				# Mid-batch for the per-message steps; the batch's messages move in one command.
				nth = 1 if step == "after_move" else 4
				killed = self.pull_in_worker(env={"MH_INTAKE_FAILPOINT": f"{step}:{nth}"})
				self.assertEqual(
					killed.returncode, -9, f"the worker must really die at {step}: {killed.stderr[-500:]}"
				)
				clean = self.pull_in_worker()
				self.assertEqual(clean.returncode, 0, clean.stderr[-2000:])
				self.assert_exactly_once(subjects)

	def test_message_that_keeps_killing_the_worker_is_failed_after_max_attempts(self):
		subjects = self.fill(3)
		for _ in range(MAX_ATTEMPTS):
			result = self.pull_in_worker(env={"MH_INTAKE_FAILPOINT": "before_commit:1"})
			self.assertEqual(result.returncode, -9)
		final = self.pull_in_worker()
		self.assertEqual(final.returncode, 0, final.stderr[-2000:])
		rows = ledger(self.account.name)
		states = sorted(r.state for r in rows)
		self.assertEqual(states, ["Failed", "Ticketed", "Ticketed"])
		failed = next(r for r in rows if r.state == "Failed")
		self.assertIn("interrupted", failed.reason)
		self.assertEqual(len(self.inbox()), 1, "the poison message stays on the server for an admin")
		self.assertEqual(frappe.db.count("MH Ticket"), len(subjects) - 1)


class TestConcurrentWorkers(IntakeTestCase):
	def test_two_workers_at_once_make_each_ticket_once(self):
		subjects = [f"Race {i}" for i in range(20)]
		for subject in subjects:
			self.deliver(make_message(subject=subject))
		command = [
			sys.executable, "-m", "frappe.utils.bench_helper", "frappe", "--site", frappe.local.site,
			"mh-fetch", "--account", self.account.name,
		]  # fmt: skip
		workers = [
			subprocess.Popen(
				command,
				cwd=frappe.local.sites_path,
				stdout=subprocess.PIPE,
				stderr=subprocess.PIPE,
				text=True,
			)
			for _ in range(2)
		]
		outputs = [worker.communicate(timeout=300) for worker in workers]
		for worker, (_out, err) in zip(workers, outputs, strict=True):
			self.assertEqual(worker.returncode, 0, err[-2000:])
		frappe.db.commit()
		self.assertEqual(sorted(frappe.get_all("MH Ticket", pluck="subject")), sorted(subjects))
		self.assertEqual(frappe.db.count("MH Inbound Mail"), len(subjects))
		self.assertEqual(self.inbox(), [])


class TestDroppedConnection(IntakeTestCase):
	def test_imap_dropped_mid_batch_then_clean_pull(self):
		subjects = [f"Dropped {i}" for i in range(40)]
		for subject in subjects:
			self.deliver(make_message(subject=subject, body="x" * 20000))
		command = [
			sys.executable, "-m", "frappe.utils.bench_helper", "frappe", "--site", frappe.local.site,
			"mh-fetch", "--account", self.account.name,
		]  # fmt: skip
		worker = subprocess.Popen(
			command, cwd=frappe.local.sites_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
		)
		deadline = time.monotonic() + 120
		while time.monotonic() < deadline and worker.poll() is None:
			frappe.db.commit()
			if frappe.db.count("MH Inbound Mail", {"imap_account": self.account.name}) >= 3:
				break
			time.sleep(0.05)
		self.dovecot.kill_connections(self.user)
		out, err = worker.communicate(timeout=300)
		frappe.db.commit()
		dropped_midway = frappe.db.count("MH Ticket") < len(subjects)
		clean = self.pull_in_worker()
		self.assertEqual(clean.returncode, 0, clean.stderr[-2000:])
		self.assertEqual(sorted(frappe.get_all("MH Ticket", pluck="subject")), sorted(subjects))
		self.assertEqual(frappe.db.count("MH Inbound Mail"), len(subjects))
		self.assertEqual(
			{(r.state, r.server_action) for r in ledger(self.account.name)}, {("Ticketed", "Moved")}
		)
		self.assertEqual(self.inbox(), [])
		if not dropped_midway:
			self.skipTest("the first pull finished before the connection could be dropped; nothing to prove")
		self.assertIn("error", out + err, "the interrupted pull reports the dropped connection")


# Keep FrappeTestCase imported for the test runner's discovery of this module's classes.
__all__ = ["FrappeTestCase", "TestConcurrentWorkers", "TestDroppedConnection", "TestKilledWorker"]
