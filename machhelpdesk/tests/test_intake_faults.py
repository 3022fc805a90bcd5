"""Intake under fire: a worker SIGKILLed at each step, two workers at once, IMAP dropped mid-batch.

Every case ends with a clean pull and then checks the promise: each message has exactly one ticket,
nothing is lost, and the server folder ends where it should. The kills are real (``SIGKILL`` of a
real ``bench mh-fetch`` process); the failpoint environment variable only chooses the moment.
"""

import errno
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from unittest.mock import patch

import frappe

from machhelpdesk.intake import MAX_ATTEMPTS, reprocess
from machhelpdesk.testing.ports import free_port, wait_for_ports
from machhelpdesk.tests.factories import ledger, make_message
from machhelpdesk.tests.test_intake import IntakeTestCase

BATCH = 100
FETCH = [sys.executable, "-m", "frappe.utils.bench_helper", "frappe", "--site"]
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
				# Mid-batch: the 40th message, or the second batch's move (a batch moves in one command).
				nth = 2 if step == "after_move" else 40
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


class PausedWorkerMixin:
	"""A real ``bench mh-fetch`` paused by the failpoint at a chosen step, so a test can break
	something at that moment; the worker then resumes into the fault."""

	@contextmanager
	def paused_pull(self, where: str):
		folder = tempfile.mkdtemp(prefix="mh-failpoint-")
		paused, resume = os.path.join(folder, "paused"), os.path.join(folder, "resume")
		env = {
			**os.environ,
			"MH_INTAKE_FAILPOINT": f"{where}:pause",
			"MH_INTAKE_PAUSED_FILE": paused,
			"MH_INTAKE_RESUME_FILE": resume,
		}
		log_path = os.path.join(folder, "worker.log")
		with open(log_path, "w") as log:
			worker = subprocess.Popen(
				[*FETCH, frappe.local.site, "mh-fetch", "--account", self.account.name],
				cwd=frappe.local.sites_path,
				env=env,
				stdout=log,
				stderr=subprocess.STDOUT,
			)

		def output() -> str:
			with open(log_path, errors="replace") as fh:
				return fh.read()

		try:
			deadline = time.monotonic() + 120
			while not os.path.exists(paused):
				self.assertIsNone(worker.poll(), f"the worker ended before {where}: {output()[-2000:]}")
				self.assertLess(time.monotonic(), deadline, f"the worker never reached {where}: {output()}")
				time.sleep(0.05)
			with open(paused) as fh:
				yield int(fh.read())
		finally:
			open(resume, "w").close()
			worker.wait(timeout=300)
			self.worker_result = (worker.returncode, output())
			frappe.db.commit()  # see the worker's commits

	def assert_all_ticketed_once(self, subjects: list[str]) -> None:
		self.assertEqual(sorted(frappe.get_all("MH Ticket", pluck="subject")), sorted(subjects))
		self.assertEqual(frappe.db.count("MH Inbound Mail"), len(subjects), "one ledger row per mail")
		self.assertEqual(
			{(r.state, r.server_action) for r in ledger(self.account.name)}, {("Ticketed", "Moved")}
		)
		self.assertEqual(self.inbox(), [])
		self.assertEqual(len(self.parsed_folder()), len(subjects))


class TestBrokenServers(PausedWorkerMixin, IntakeTestCase):
	def fill(self, count: int = 40) -> list[str]:
		subjects = [f"Fault {i:03d}" for i in range(count)]
		for subject in subjects:
			self.deliver(make_message(subject=subject, body="x" * 2000))
		return subjects

	def test_imap_connection_dropped_mid_batch_then_clean_pull(self):
		subjects = self.fill()
		with self.paused_pull("after_commit:10"):
			self.dovecot.kill_connections(self.user)
		returncode, output = self.worker_result
		self.assertEqual(returncode, 1, "the interrupted pull says it failed")
		self.assertIn("error", output)
		frappe.db.commit()
		self.assertLess(frappe.db.count("MH Ticket"), len(subjects), "the drop happened mid-batch")
		clean = self.pull_in_worker()
		self.assertEqual(clean.returncode, 0, clean.stderr[-2000:])
		self.assert_all_ticketed_once(subjects)

	def test_dovecot_stopped_and_restarted_mid_batch(self):
		subjects = self.fill()
		with self.paused_pull("after_commit:15"):
			self.dovecot.halt()
		returncode, output = self.worker_result
		self.assertEqual(returncode, 1, output[-2000:])
		error = frappe.db.get_value("MH IMAP Account", self.account.name, "last_error")
		self.assertTrue(error, "the account shows why the pull stopped")
		self.dovecot.resume()
		clean = self.pull_in_worker()
		self.assertEqual(clean.returncode, 0, clean.stderr[-2000:])
		self.assert_all_ticketed_once(subjects)
		self.assertFalse(frappe.db.get_value("MH IMAP Account", self.account.name, "last_error"))

	def test_database_connection_killed_mid_batch(self):
		subjects = self.fill()
		with self.paused_pull("after_commit:12") as connection_id:
			frappe.db.sql("KILL %s", (int(connection_id),))
		returncode, output = self.worker_result
		self.assertNotEqual(returncode, 0, "a worker whose database connection died stops")
		self.assertRegex(output, "(?i)lost connection|gone away|connection", output[-2000:])
		clean = self.pull_in_worker()
		self.assertEqual(clean.returncode, 0, clean.stderr[-2000:])
		self.assert_all_ticketed_once(subjects)

	def test_uidvalidity_reset_with_the_same_mail_appended_again(self):
		raws = [make_message(subject=f"Renumbered {i}") for i in range(10)]
		for raw in raws:
			self.deliver(raw)
		killed = self.pull_in_worker(env={"MH_INTAKE_FAILPOINT": "after_commit:5"})
		self.assertEqual(killed.returncode, -9, killed.stderr[-500:])
		# The server renumbers the folder (a new UIDVALIDITY), and three messages arrive once more.
		self.dovecot.recreate_folder(self.user, "INBOX", keep_messages=True)
		for raw in raws[:3]:
			self.deliver(raw)
		clean = self.pull_in_worker()
		self.assertEqual(clean.returncode, 0, clean.stderr[-2000:])
		subjects = [f"Renumbered {i}" for i in range(10)]
		self.assertEqual(sorted(frappe.get_all("MH Ticket", pluck="subject")), sorted(subjects))
		states = Counter(row.state for row in ledger(self.account.name))
		self.assertEqual(states, {"Ticketed": 10, "Duplicate": 3})
		self.assertEqual(self.inbox(), [])


class TestUnavailableQueue(IntakeTestCase):
	"""The Redis queue refusing connections when the scheduler fires: a throwaway real redis-server."""

	def test_scheduler_tick_with_the_queue_down_logs_once_and_the_next_tick_catches_up(self):
		from frappe.utils import background_jobs
		from frappe.utils.background_jobs import get_job

		from machhelpdesk import tasks

		port = free_port()
		folder = tempfile.mkdtemp(prefix="mh-redis-")
		conf = frappe.local.conf
		saved_url, saved_conn = conf.get("redis_queue"), background_jobs._redis_queue_conn

		def start_redis():
			process = subprocess.Popen(
				["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", folder],
				stdout=subprocess.DEVNULL,
				stderr=subprocess.DEVNULL,
			)
			self.assertTrue(wait_for_ports("127.0.0.1", [port], timeout=10), "redis-server did not start")
			return process

		conf.redis_queue = f"redis://127.0.0.1:{port}"
		background_jobs._redis_queue_conn = None
		redis = start_redis()
		try:
			redis.terminate()
			redis.wait(10)
			ours = {"method": ("like", "%job queue is unreachable%")}
			errors_before = frappe.db.count("Error Log", ours)
			tasks.enqueue_pulls()  # the tick while Redis is down: no exception escapes
			self.assertEqual(frappe.db.count("Error Log", ours), errors_before + 1, "logged once")
			logged = frappe.get_all("Error Log", filters=ours, pluck="error", order_by="creation desc")
			self.assertIn("next run", logged[0])

			redis = start_redis()
			background_jobs._redis_queue_conn = None
			tasks.enqueue_pulls()  # the next tick
			job = get_job(f"machhelpdesk:pull:{frappe.local.site}:{self.account.name}")
			self.assertIsNotNone(job, "the next tick queues the pull")
			self.assertEqual(job.kwargs["kwargs"]["account"], self.account.name)
		finally:
			redis.terminate()
			redis.wait(10)
			conf.redis_queue = saved_url
			background_jobs._redis_queue_conn = saved_conn


class TestFullDisk(IntakeTestCase):
	"""Disk full while storing an attachment. A real full disk needs a tiny filesystem mounted for the
	site; here Frappe's ``File.save_file`` is patched to raise ENOSPC, the error such a disk gives."""

	def test_attachment_on_a_full_disk_leaves_the_mail_on_the_server_with_the_reason(self):
		self.deliver(
			make_message(subject="With a log", attachments=[("log.txt", b"smoke\n" * 100, "text/plain")])
		)
		full = OSError(errno.ENOSPC, "No space left on device")
		with patch("frappe.core.doctype.file.file.File.save_file", side_effect=full):
			summary = self.pull()
		self.assertEqual((summary["failed"], summary["tickets"]), (1, 0), summary["text"])
		[row] = ledger(self.account.name)
		self.assertEqual(row.state, "Failed")
		self.assertIn("No space left on device", row.reason)
		self.assertEqual(len(self.inbox()), 1, "the mail waits on the server")
		self.assertEqual(frappe.db.count("MH Ticket"), 0, "nothing half-made is left behind")
		self.assertEqual(frappe.db.count("Communication", {"reference_doctype": "MH Ticket"}), 0)

		# Room again: the admin re-processes it from the ledger.
		self.assertEqual(reprocess(row.name), "Ticketed")
		self.assertEqual(self.inbox(), [])
		ticket = frappe.db.get_value("MH Inbound Mail", row.name, "ticket")
		files = frappe.get_all("File", filters={"attached_to_name": ticket}, pluck="file_name")
		self.assertEqual(files, ["log.txt"])
