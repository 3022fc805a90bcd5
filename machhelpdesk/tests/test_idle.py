"""Push: `bench mh-idle` and a real `bench worker` against a real Dovecot turn new mail into tickets in seconds.

Every process of these tests is real: Dovecot on 127.0.0.1, a Redis job queue of the test's own (so its
worker never runs anyone else's jobs), `bench worker --queue long` and `bench mh-idle --site <this site>`
as subprocesses, stopped by their process ids. The only timing assertion is the issue's own bound: a
mail is a ticket within 5 seconds. The latency figures come from benchmarks/idle_latency.py.
"""

import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import frappe
from frappe.tests.utils import FrappeTestCase
from frappe.utils import add_to_date, now_datetime

from machhelpdesk.idle import accounts_due_for_scheduled_pull, pull_job_state
from machhelpdesk.intake import pull_account
from machhelpdesk.tasks import enqueue_pulls
from machhelpdesk.testing.dovecot import Dovecot
from machhelpdesk.testing.processes import BenchProcess, RedisQueue
from machhelpdesk.tests.factories import (
	job_queue,
	ledger,
	make_account,
	make_message,
	reset_intake_data,
	save_settings,
)

BENCH = [sys.executable, "-m", "frappe.utils.bench_helper", "frappe"]
PUSH_BOUND = 5.0  # the promise: a mail becomes a ticket within 5 seconds
NO_IDLE_CONFIG = (
	"imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE LITERAL+ UIDPLUS MOVE UNSELECT\n"
)


class WatcherTestCase(FrappeTestCase):
	"""One Dovecot, one private job queue and one real worker per class; each test its own mailbox and watcher."""

	refresh_seconds = "2"

	@classmethod
	def setUpClass(cls):
		super().setUpClass()
		cls.sites_path = frappe.local.sites_path
		cls.dovecot = Dovecot()
		cls.dovecot.start()
		cls.redis = RedisQueue()
		cls.redis.start()
		cls.worker = BenchProcess(
			cls.sites_path,
			["worker", "--queue", "long"],
			env=cls.redis.env,
			python=sys.executable,
			name="worker",
		)
		cls.worker.start()

	@classmethod
	def tearDownClass(cls):
		cls.worker.stop()
		cls.redis.stop()
		cls.dovecot.stop()
		reset_intake_data()
		save_settings(require_registration=1, auto_create_accounts=1)
		super().tearDownClass()

	def setUp(self):
		reset_intake_data()
		# Anyone's mail becomes a ticket here, without making the sender a website user (the second it takes
		# on a new sender's first mail is intake's, not push's); those paths have tests of their own.
		save_settings(require_registration=0, auto_create_accounts=0)
		self.user, self.password = self.dovecot.new_user(self._testMethodName[:30])
		self.account = make_account(self.dovecot, self.user, self.password)

	# -- processes --

	def start_watcher(self, *args: str) -> BenchProcess:
		"""`bench mh-idle --site <this site>` on the private job queue; stopped when the test ends."""
		if "--refresh-seconds" not in args and self.refresh_seconds:
			args = ("--refresh-seconds", self.refresh_seconds, *args)
		watcher = BenchProcess(
			self.sites_path,
			["mh-idle", "--site", frappe.local.site, *args],
			env=self.redis.env,
			python=sys.executable,
			name="mh-idle",
		)
		watcher.start()
		self.addCleanup(self.stop_watcher, watcher)
		return watcher

	def stop_watcher(self, watcher: BenchProcess) -> None:
		if watcher.running:
			status = watcher.stop()
			self.assertEqual(status, 0, f"mh-idle did not stop cleanly:\n{watcher.log_tail()}")

	# -- waiting --

	def wait_for(self, predicate, timeout: float, what: str, process: BenchProcess | None = None):
		"""Poll `predicate` (with a fresh database snapshot each time) until it is truthy; return its value."""
		deadline = time.monotonic() + timeout
		while True:
			frappe.db.rollback()  # see what the worker and the watcher committed
			value = predicate()
			if value:
				return value
			if time.monotonic() > deadline:
				logs = f"\n--- mh-idle ---\n{process.log_tail()}" if process else ""
				self.fail(
					f"timed out after {timeout:.0f} s waiting for {what}{logs}\n--- worker ---\n{self.worker.log_tail(20)}"
				)
			time.sleep(0.05)

	def account_value(self, fieldname: str, account: str | None = None):
		return frappe.db.get_value("MH IMAP Account", account or self.account.name, fieldname)

	def wait_until_watched(
		self, watcher: BenchProcess, mode: str = "Push", account: str | None = None
	) -> None:
		self.wait_for(
			lambda: self.account_value("watch_mode", account) == mode, 60, f"watch mode {mode}", watcher
		)
		# The watcher pulls once on connecting (mail that came while nobody watched): let that finish.
		self.wait_for(lambda: self.account_value("last_pulled_on", account), 60, "the first pull", watcher)
		self.wait_for(lambda: self.job_idle(), 60, "the first pull job to end", watcher)

	def job_idle(self) -> bool:
		with job_queue(self.redis.url):
			status, _result = pull_job_state(self.account.name)
		return status not in ("queued", "started")

	def ticket_for(self, subject: str) -> list[str]:
		return frappe.get_all("MH Ticket", filters={"subject": subject}, pluck="name")

	def deliver(self, subject: str, folder: str = "INBOX", user: str | None = None) -> float:
		self.dovecot.append(user or self.user, make_message(subject=subject), folder=folder)
		return time.monotonic()


class TestPush(WatcherTestCase):
	def test_appended_mail_becomes_a_ticket_within_5_seconds(self):
		watcher = self.start_watcher()
		self.wait_until_watched(watcher)
		for number in range(3):
			subject = f"Pushed {number}"
			sent = self.deliver(subject)
			self.wait_for(lambda subject=subject: self.ticket_for(subject), 30, subject, watcher)
			took = time.monotonic() - sent
			self.assertLess(took, PUSH_BOUND, f"{subject} took {took:.2f} s")
		self.assertTrue(self.account_value("last_push_on"))
		self.wait_for(self.job_idle, 60, "the last pull to move its mail", watcher)
		rows = ledger(self.account.name)
		self.assertEqual(Counter((row.state, row.server_action) for row in rows), {("Ticketed", "Moved"): 3})
		self.assertEqual(self.dovecot.folder_uids(self.user, "INBOX"), [])
		# Stopped, the watcher hands the account back to the 5-minute scheduler at once.
		self.stop_watcher(watcher)
		frappe.db.rollback()
		self.assertEqual(self.account_value("watch_mode"), "")
		self.assertIn(self.account.name, accounts_due_for_scheduled_pull())

	def test_killed_connection_reconnects_and_mail_of_the_outage_is_ticketed_once(self):
		watcher = self.start_watcher()
		self.wait_until_watched(watcher)
		connections = watcher.log_text().count("connected (Push)")
		# The outage: the watcher's connection is killed and it cannot log in again for a while.
		self.dovecot.add_user(self.user, "outage-" + self.password)
		mark = len(watcher.log_text())
		self.dovecot.kill_connections(self.user)
		self.assertTrue(watcher.wait_for_log("connecting again", 30, after=mark), watcher.log_tail())
		subjects = [f"Sent during the outage {n}" for n in range(3)]
		for subject in subjects:
			self.deliver(subject)
		self.assertTrue(watcher.wait_for_log("rejected the user name or password", 30, after=mark))
		self.assertEqual(frappe.db.count("MH Ticket"), 0, "nobody could read the mailbox during the outage")
		self.dovecot.add_user(self.user, self.password)  # the server is back
		for subject in subjects:
			self.wait_for(lambda subject=subject: self.ticket_for(subject), 120, subject, watcher)
		self.assertGreater(watcher.log_text().count("connected (Push)"), connections)
		self.wait_for(self.job_idle, 60, "the pulls to end", watcher)
		self.assertEqual(sorted(frappe.get_all("MH Ticket", pluck="subject")), sorted(subjects))
		self.assertEqual(len(ledger(self.account.name)), 3)
		# And push works again after the reconnection.
		sent = self.deliver("After the outage")
		self.wait_for(lambda: self.ticket_for("After the outage"), 30, "the mail after the outage", watcher)
		self.assertLess(time.monotonic() - sent, PUSH_BOUND)

	def test_push_and_the_safety_net_poll_together_make_no_duplicates(self):
		watcher = self.start_watcher()
		self.wait_until_watched(watcher)
		subjects = [f"Raced {n}" for n in range(8)]
		fetches = []
		skipped = 0
		with job_queue(self.redis.url):
			for subject in subjects:
				# A long-quiet account: the scheduler's safety net pulls it although push is healthy.
				frappe.db.set_value(
					"MH IMAP Account",
					self.account.name,
					"last_pulled_on",
					add_to_date(now_datetime(), hours=-2),
					update_modified=False,
				)
				frappe.db.commit()
				self.deliver(subject)
				# All at once: the watcher's push job, the safety net's job, a CLI pull in another process
				# and a pull in this one.
				self.assertIn(self.account.name, accounts_due_for_scheduled_pull())
				enqueue_pulls()
				fetches.append(
					subprocess.Popen(
						[*BENCH, "--site", frappe.local.site, "mh-fetch", "--account", self.account.name],
						cwd=self.sites_path,
						stdout=subprocess.DEVNULL,
						stderr=subprocess.PIPE,
					)
				)
				summary = pull_account(self.account.name)
				skipped += bool(summary["skipped"])
		for fetch in fetches:
			_out, err = fetch.communicate(timeout=300)
			self.assertEqual(fetch.returncode, 0, err[-2000:])
		for subject in subjects:
			self.wait_for(lambda subject=subject: self.ticket_for(subject), 60, subject, watcher)
		self.wait_for(self.job_idle, 60, "the pulls to end", watcher)
		tickets = Counter(frappe.get_all("MH Ticket", pluck="subject"))
		self.assertEqual(tickets, Counter(subjects), "every mail exactly one ticket")
		rows = ledger(self.account.name)
		self.assertEqual(Counter(row.state for row in rows), {"Ticketed": len(subjects)})
		self.assertEqual(self.dovecot.folder_uids(self.user, "INBOX"), [])
		self.assertEqual(len(self.dovecot.folder_uids(self.user, "Parsed")), len(subjects))
		print(f"\n  {skipped} of {len(subjects)} in-process pulls found another pull holding the lock")


class TestWatchFollowsAccounts(WatcherTestCase):
	def test_disabling_the_account_stops_its_watch_within_a_minute(self):
		watcher = self.start_watcher("--refresh-seconds", "30")  # the default
		self.wait_until_watched(watcher)
		self.assertTrue(self.dovecot.sessions(self.user))
		self.account.reload()
		self.account.enabled = 0
		self.account.save()
		frappe.db.commit()
		disabled = time.monotonic()
		self.wait_for(lambda: not self.dovecot.sessions(self.user), 60, "the watch to stop", watcher)
		self.assertLess(time.monotonic() - disabled, 60)
		self.assertEqual(self.account_value("watch_mode"), "")
		self.assertIn("no longer enabled", watcher.log_text())
		# Nothing reads the mailbox any more.
		self.deliver("While disabled")
		time.sleep(3)
		frappe.db.rollback()
		self.assertFalse(self.ticket_for("While disabled"))
		self.assertEqual(self.dovecot.sessions(self.user), [])

	def test_added_and_changed_accounts_are_noticed_without_a_restart(self):
		watcher = self.start_watcher()
		self.wait_until_watched(watcher)
		# Added while the watcher runs.
		user, password = self.dovecot.new_user("added")
		added = make_account(self.dovecot, user, password)
		self.wait_for(
			lambda: self.account_value("watch_mode", added.name) == "Push", 30, "the new account", watcher
		)
		self.deliver("To the added account", user=user)
		self.wait_for(lambda: self.ticket_for("To the added account"), 30, "its mail", watcher)
		# Changed: another folder is watched from now on.
		self.dovecot.create_folder(self.user, "Support")
		self.account.reload()
		self.account.folder = "Support"
		self.account.save()
		frappe.db.commit()
		self.assertTrue(watcher.wait_for_log("settings changed", 30), watcher.log_tail())
		self.wait_for(lambda: self.account_value("watch_mode") == "Push", 30, "the changed account", watcher)
		self.wait_for(self.job_idle, 60, "its first pull", watcher)
		sent = self.deliver("To the Support folder", folder="Support")
		self.wait_for(lambda: self.ticket_for("To the Support folder"), 30, "mail in the new folder", watcher)
		self.assertLess(time.monotonic() - sent, PUSH_BOUND)

	def test_server_without_idle_is_watched_by_polling(self):
		with Dovecot(extra_config=NO_IDLE_CONFIG) as old_server:
			user, password = old_server.new_user("no-idle")
			frappe.delete_doc("MH IMAP Account", self.account.name, force=True, ignore_permissions=True)
			self.account = make_account(old_server, user, password)
			watcher = self.start_watcher("--poll-seconds", "1")
			self.wait_until_watched(watcher, mode="Polling")
			old_server.append(user, make_message(subject="Found by polling"))
			self.wait_for(lambda: self.ticket_for("Found by polling"), 30, "the polled mail", watcher)
			self.assertFalse(self.account_value("last_push_on"), "polling is not push")
			# Polling is not push: the scheduler keeps pulling the account every 5 minutes too.
			self.assertIn(self.account.name, accounts_due_for_scheduled_pull())
			self.stop_watcher(watcher)

	def test_a_second_watcher_stands_by_and_takes_over(self):
		first = self.start_watcher()
		self.wait_until_watched(first)
		second = self.start_watcher()
		self.assertTrue(second.wait_for_log("standing by", 60), second.log_tail())
		self.assertEqual(len(self.dovecot.sessions(self.user)), 1)
		self.stop_watcher(first)
		self.assertTrue(second.wait_for_log("connected (Push)", 60), second.log_tail())
		self.wait_for(lambda: self.account_value("watch_mode") == "Push", 30, "the second watcher", second)
		sent = self.deliver("Taken over")
		self.wait_for(lambda: self.ticket_for("Taken over"), 30, "mail after the takeover", second)
		self.assertLess(time.monotonic() - sent, PUSH_BOUND)


class TestScheduledPolling(FrappeTestCase):
	"""Which accounts the 5-minute scheduler pulls, with and without healthy push (no processes needed)."""

	def setUp(self):
		reset_intake_data()
		self.dovecot = Dovecot()  # never started: only its host and port are used
		self.dovecot.port = 143

	def tearDown(self):
		reset_intake_data()

	def account(self, name: str, **values) -> str:
		doc = make_account(self.dovecot, name, "secret")
		frappe.db.set_value("MH IMAP Account", doc.name, values, update_modified=False)
		return doc.name

	def test_healthy_push_gets_only_the_safety_net(self):
		now = now_datetime()
		quiet = add_to_date(now, minutes=-31)
		recent = add_to_date(now, minutes=-1)
		unwatched = self.account("unwatched", last_pulled_on=recent)
		pushed = self.account("pushed", watch_mode="Push", watch_confirmed_on=now, last_pulled_on=recent)
		long_quiet = self.account(
			"long-quiet", watch_mode="Push", watch_confirmed_on=now, last_pulled_on=quiet
		)
		never_pulled = self.account("never-pulled", watch_mode="Push", watch_confirmed_on=now)
		stale = self.account(
			"stale-watcher",
			watch_mode="Push",
			watch_confirmed_on=now - timedelta(minutes=10),
			last_pulled_on=recent,
		)
		polling = self.account("polling", watch_mode="Polling", watch_confirmed_on=now, last_pulled_on=recent)
		disabled = self.account("disabled", enabled=0)
		due = accounts_due_for_scheduled_pull()
		self.assertEqual(sorted(due), sorted([unwatched, long_quiet, never_pulled, stale, polling]))
		self.assertNotIn(pushed, due)
		self.assertNotIn(disabled, due)
		with RedisQueue() as redis, job_queue(redis.url):
			enqueue_pulls()
			queued = {name for name in (unwatched, pushed, long_quiet, polling) if pull_job_state(name)[0]}
		self.assertEqual(queued, {unwatched, long_quiet, polling})
