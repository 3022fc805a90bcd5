"""The IMAP IDLE watcher, `bench mh-idle`: new mail is noticed in seconds and pulled by the normal job.

One process for the whole bench. It watches every enabled IMAP account of every site that has the app
(or of the sites given), and when the server reports new mail (EXISTS), it queues that account's normal,
deduplicated pull job on the long queue. It never reads messages or writes tickets: `intake.pull_account`
stays the one path from mail to tickets, and its lock per account plus the job's deduplication make
duplicates impossible whoever triggers a pull (push, the scheduler's safety net, Pull now, `mh-fetch`).

Threads, not a selector loop:

- one **account thread** per watched account (`AccountWatch`). It imports no frappe: it holds one IMAP
  connection (`engine.imap.MailboxSession.watch`: IDLE renewed every `renew_seconds`, or NOOP every
  `poll_seconds` for servers without IDLE) and only reports events into its site's queue. It reconnects
  with exponential backoff (1 s doubling to 5 minutes, with jitter), and asks for a pull on every
  (re)connection, so mail that arrived while nobody watched is taken too. imapclient is blocking, and
  logins and TLS handshakes block as well; a thread per mailbox keeps one slow or dead server from
  delaying the others, and a helpdesk has tens of mailboxes, not thousands.
- one **site thread** per site (`SiteWatcher`), the only code here that touches frappe. It keeps the
  site's database connection, reads the accounts every `refresh_seconds` (added, changed and disabled
  accounts are noticed without a restart), starts and stops account threads, turns events into pull jobs,
  and writes the account's *Watch mode* (Push / Polling), *Last push* and *Watch confirmed on*. A named
  MariaDB lock per site lets a second watcher (on another machine, for instance) stand by instead of
  watching twice.

A job that is already running when new mail arrives may have listed the folder before the mail came;
deduplication would drop a second job while the first runs, so the site thread queues another pull as soon
as the running one ends (and again when a pull was skipped because a manual pull held the lock).

The scheduler keeps pulling every 5 minutes the accounts whose push is not healthy (not watched, polling,
or no word from the watcher for `HEALTHY_PUSH_SECONDS`). Accounts with healthy push get the safety-net
pull only after `SAFETY_NET_MINUTES` without any pull (`accounts_due_for_scheduled_pull`).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from machhelpdesk.engine.imap import IDLE_RENEW_SECONDS, POLL_SECONDS, IMAPError, IMAPSettings, MailboxSession

PUSH = "Push"
POLLING = "Polling"
REFRESH_SECONDS = 30.0
# The watcher writes "Watch confirmed on" at least this often while an account is connected...
HEARTBEAT_SECONDS = 60.0
# ...and push counts as healthy while that is at most this old.
HEALTHY_PUSH_SECONDS = 180
# While push is healthy, the scheduler still pulls an account that has not been pulled for this long.
SAFETY_NET_MINUTES = 30
BACKOFF_START = 1.0
BACKOFF_MAX = 300.0
# A connection that stayed up this long resets the backoff.
STABLE_SECONDS = 60.0
# How long a site waits before trying again after its database or job queue failed.
SITE_RETRY_SECONDS = 10.0
SITE_RETRY_MAX_SECONDS = 300.0
# How often the watcher looks for new sites with the app, when it watches every site.
SITE_SCAN_SECONDS = 300.0
# How often a site thread checks a running pull job it waits for.
CHASE_SECONDS = 0.2

logger = logging.getLogger("machhelpdesk.idle")


@dataclass(frozen=True)
class WatchOptions:
	"""How the watcher waits; the defaults suit production, tests shorten them."""

	renew_seconds: float = IDLE_RENEW_SECONDS
	poll_seconds: float = POLL_SECONDS
	refresh_seconds: float = REFRESH_SECONDS
	tick: float = 1.0
	backoff_max: float = BACKOFF_MAX


@dataclass(frozen=True)
class WatchEvent:
	"""What an account thread tells its site thread."""

	kind: str  # "connected", "news", "lost", "stopped"
	account: str
	mode: str = ""
	error: str = ""
	retry_in: float = 0.0
	watch: AccountWatch | None = field(default=None, compare=False, repr=False)


def backoff_delay(failures: int, maximum: float = BACKOFF_MAX) -> float:
	"""Seconds to wait after `failures` failed connections in a row: 1, 2, 4, ... up to `maximum`, ±20%."""
	base = min(maximum, BACKOFF_START * 2 ** max(0, failures - 1))
	return base * random.uniform(0.8, 1.2)


# --- account threads: no frappe below this line until SiteWatcher -------------------------------------------


class AccountWatch(threading.Thread):
	"""Keeps one IMAP connection to one account's folder and reports news; never touches the database."""

	def __init__(
		self,
		site: str,
		account: str,
		folder: str,
		settings: IMAPSettings,
		fingerprint: tuple,
		events: queue.Queue,
		options: WatchOptions,
	) -> None:
		super().__init__(name=f"mh-idle {site} {account}", daemon=True)
		self.site = site
		self.account = account
		self.folder = folder
		# Replaced by the site thread when the secret changes (a new password, a refreshed OAuth token);
		# read afresh before each connection.
		self.settings = settings
		self.fingerprint = fingerprint
		self.events = events
		self.options = options
		self.stopping = threading.Event()
		self.mode = ""

	def stop(self) -> None:
		"""Ask the thread to end; it leaves IDLE and logs out within one tick."""
		self.stopping.set()

	def report(self, kind: str, **values) -> None:
		self.events.put(WatchEvent(kind=kind, account=self.account, watch=self, **values))

	def run(self) -> None:
		failures = 0
		while not self.stopping.is_set():
			error = ""
			connected_at = None
			try:
				with MailboxSession(self.settings) as session:
					session.select(self.folder, readonly=True)
					watch = session.watch(
						renew_seconds=self.options.renew_seconds,
						poll_seconds=self.options.poll_seconds,
						tick=self.options.tick,
					)
					try:
						for news in watch:
							if connected_at is None:
								connected_at = time.monotonic()
								self.mode = PUSH if session.watch_mode == "idle" else POLLING
								self.report("connected", mode=self.mode)
								# Whatever arrived while nobody watched is pulled now.
								self.report("news")
							if self.stopping.is_set():
								break
							if news.new_mail:
								self.report("news")
							if failures and time.monotonic() - connected_at >= STABLE_SECONDS:
								failures = 0
					finally:
						watch.close()
			except IMAPError as e:
				error = str(e)
			except Exception as e:  # a bug must not end the watch for good: report it and reconnect
				logger.exception("%s %s: unexpected error while watching", self.site, self.account)
				error = f"{type(e).__name__}: {e}"
			self.mode = ""
			if self.stopping.is_set():
				break
			if connected_at is not None and time.monotonic() - connected_at >= STABLE_SECONDS:
				failures = 0
			failures += 1
			delay = backoff_delay(failures, self.options.backoff_max)
			self.report("lost", error=error or "the connection ended", retry_in=delay)
			self.stopping.wait(delay)
		self.report("stopped")


# --- site threads: frappe ----------------------------------------------------------------------------------


class SiteWatcher(threading.Thread):
	"""Watches the accounts of one site: the only thread of its site that talks to frappe."""

	def __init__(self, site: str, sites_path: str, options: WatchOptions) -> None:
		super().__init__(name=f"mh-idle {site}", daemon=True)
		self.site = site
		self.sites_path = sites_path
		self.options = options
		self.events: queue.Queue[WatchEvent] = queue.Queue()
		self.watches: dict[str, AccountWatch] = {}
		self.stopping = threading.Event()
		self.installed: bool | None = None
		self.locked = False
		self.standby_logged = False
		# Accounts that need a pull queued, and not before when (monotonic).
		self.dirty: dict[str, float] = {}
		# Accounts whose queued pull we follow, to queue another if it was skipped.
		self.awaiting: set[str] = set()
		self.last_heartbeat: dict[str, float] = {}

	def stop(self) -> None:
		self.stopping.set()
		self.events.put(None)  # wake the loop now rather than at the next refresh

	# -- lifecycle --

	def run(self) -> None:
		failures = 0
		while not self.stopping.is_set():
			try:
				self.open_site()
				if not self.installed:
					logger.warning("%s: the machhelpdesk app is not installed; not watching it", self.site)
					break
				self.serve()
				failures = 0
			except Exception as e:
				# A site being migrated, a database restart: say so (the traceback once), and try again later.
				failures += 1
				delay = min(SITE_RETRY_MAX_SECONDS, SITE_RETRY_SECONDS * 2 ** (failures - 1))
				logger.error(
					"%s: watcher error (%s: %s); trying again in %.0f s",
					self.site,
					type(e).__name__,
					e,
					delay,
					exc_info=failures == 1,
				)
			finally:
				self.close_site()
			if not self.stopping.is_set():
				self.stopping.wait(delay if failures else SITE_RETRY_SECONDS)
		self.shutdown()

	def shutdown(self) -> None:
		"""Stop every account thread, then clear their watch modes so the scheduler polls them again at once."""
		names = self.stop_all_watches()
		if not names:
			return
		try:
			self.open_site()
			self.clear_modes(names)
		except Exception:
			logger.exception("%s: could not clear the watch modes on the way out", self.site)
		finally:
			self.close_site()

	def open_site(self) -> None:
		import frappe

		frappe.init(site=self.site, sites_path=self.sites_path)
		frappe.connect()
		self.locked = False
		if self.installed is None:
			self.installed = "machhelpdesk" in frappe.get_installed_apps()

	def close_site(self) -> None:
		import frappe

		try:
			if getattr(frappe.local, "db", None) is not None:
				frappe.db.rollback()
		except Exception:  # noqa: S110 - the connection may be gone already
			pass
		frappe.destroy()
		self.locked = False

	# -- the loop --

	def serve(self) -> None:
		import frappe

		next_refresh = 0.0
		while not self.stopping.is_set():
			if time.monotonic() >= next_refresh:
				self.refresh()
				next_refresh = time.monotonic() + self.options.refresh_seconds
			timeout = max(0.0, next_refresh - time.monotonic())
			if self.dirty or self.awaiting:
				timeout = min(timeout, CHASE_SECONDS)
			batch = []
			try:
				batch.append(self.events.get(timeout=timeout))
				while True:
					batch.append(self.events.get_nowait())
			except queue.Empty:
				pass
			for event in batch:
				if event is not None:
					self.apply(event)
			self.chase_pulls()
			frappe.db.commit()  # the account states written above, visible to the desk and the scheduler now

	def refresh(self) -> None:
		"""Read the enabled accounts; start, restart or stop account threads to match."""
		import frappe

		frappe.db.rollback()  # a fresh snapshot: see accounts changed since the last look
		if not self.take_site_lock():
			self.stop_all_watches()  # the watcher holding the lock keeps the accounts' states
			return
		rows = frappe.get_all(
			"MH IMAP Account",
			filters={"enabled": 1},
			fields=["name", "folder", *FINGERPRINT_FIELDS],
		)
		wanted = {row.name: row for row in rows}
		for name in list(self.watches):
			if name not in wanted:
				logger.info("%s %s: no longer enabled; stopping its watch", self.site, name)
				self.stop_watch(name)
		for name, row in wanted.items():
			fingerprint = tuple(row.get(fieldname) for fieldname in ("folder", *FINGERPRINT_FIELDS))
			current = self.watches.get(name)
			if current is not None and (current.fingerprint != fingerprint or not current.is_alive()):
				logger.info("%s %s: settings changed; watching it afresh", self.site, name)
				self.stop_watch(name)
				current = None
			settings = self.account_settings(name)
			if settings is None:
				if current is not None:
					self.stop_watch(name)
				continue
			if current is None:
				self.start_watch(name, row.folder, settings, fingerprint)
			else:
				current.settings = settings
		self.heartbeat()

	def take_site_lock(self) -> bool:
		"""One watcher per site: the others stand by until the lock is free (their watcher stopped or died)."""
		import frappe

		if self.locked:
			return True
		name = "mh-idle:" + hashlib.sha1(self.site.encode()).hexdigest()  # noqa: S324 - a lock name, not a secret
		self.locked = frappe.db.sql("SELECT GET_LOCK(%s, 0)", (name,))[0][0] == 1
		if not self.locked and not self.standby_logged:
			logger.info("%s: another mh-idle watches this site; standing by", self.site)
			self.standby_logged = True
		elif self.locked:
			self.standby_logged = False
		return self.locked

	def account_settings(self, name: str) -> IMAPSettings | None:
		"""The account's transport settings, or None when they cannot be had (logged, not raised)."""
		import frappe

		try:
			return frappe.get_doc("MH IMAP Account", name).imap_settings()
		except Exception as e:
			frappe.db.rollback()
			logger.warning("%s %s: not watched: %s", self.site, name, e)
			return None

	def start_watch(self, name: str, folder: str, settings: IMAPSettings, fingerprint: tuple) -> None:
		watch = AccountWatch(self.site, name, folder, settings, fingerprint, self.events, self.options)
		self.watches[name] = watch
		logger.info("%s %s: watching %s on %s", self.site, name, folder, settings.address)
		watch.start()

	def stop_watch(self, name: str) -> None:
		watch = self.watches.pop(name, None)
		if watch is not None:
			watch.stop()
		self.dirty.pop(name, None)
		self.awaiting.discard(name)
		self.clear_modes([name])

	def stop_all_watches(self) -> list[str]:
		"""Stop and join every account thread; return the accounts that were watched."""
		for watch in self.watches.values():
			watch.stop()
		for watch in self.watches.values():
			watch.join(timeout=self.options.tick + 10)
		names = list(self.watches)
		self.watches.clear()
		self.dirty.clear()
		self.awaiting.clear()
		return names

	# -- events --

	def apply(self, event: WatchEvent) -> None:
		import frappe
		from frappe.utils import now_datetime

		if self.watches.get(event.account) is not event.watch:
			return  # from a watch that was stopped or replaced meanwhile
		if event.kind == "connected":
			logger.info("%s %s: connected (%s)", self.site, event.account, event.mode)
			self.write_state(event.account, {"watch_mode": event.mode, "watch_confirmed_on": now_datetime()})
		elif event.kind == "news":
			self.dirty.setdefault(event.account, 0.0)
			if event.watch is not None and event.watch.mode == PUSH:
				self.write_state(event.account, {"last_push_on": now_datetime()})
		elif event.kind == "lost":
			logger.warning(
				"%s %s: %s; connecting again in %.0f s",
				self.site,
				event.account,
				event.error.rstrip("."),
				event.retry_in,
			)
			self.write_state(event.account, {"watch_mode": ""})
			frappe.db.commit()  # the state above, before reading settings (a token refresh commits too)
			# A refreshed OAuth token or a corrected password is used for the next attempt.
			settings = self.account_settings(event.account)
			if settings is not None and event.watch is not None:
				event.watch.settings = settings
		elif event.kind == "stopped":
			self.watches.pop(event.account, None)
		frappe.db.commit()  # the state just written, before the next wait

	def write_state(self, account: str, values: dict) -> None:
		import frappe

		if "watch_confirmed_on" in values or "watch_mode" in values:
			self.last_heartbeat[account] = time.monotonic()
		frappe.db.set_value("MH IMAP Account", account, values, update_modified=False)

	def heartbeat(self) -> None:
		"""Say the watch is alive, for the scheduler's "push is healthy" test, at least every HEARTBEAT_SECONDS."""
		from frappe.utils import now_datetime

		now = time.monotonic()
		interval = min(HEARTBEAT_SECONDS, self.options.refresh_seconds)
		for name, watch in self.watches.items():
			if watch.mode and now - self.last_heartbeat.get(name, 0.0) >= interval * 0.9:
				self.write_state(name, {"watch_mode": watch.mode, "watch_confirmed_on": now_datetime()})

	def clear_modes(self, names: list[str]) -> None:
		import frappe

		for name in names:
			self.last_heartbeat.pop(name, None)
			if frappe.db.exists("MH IMAP Account", name):
				frappe.db.set_value("MH IMAP Account", name, "watch_mode", "", update_modified=False)
		frappe.db.commit()  # the scheduler resumes polling these accounts at once

	# -- pull jobs --

	def chase_pulls(self) -> None:
		"""Queue the pulls that news asked for; wait for a running one to end first (it may have listed the
		folder before the news), and queue again after a pull that was skipped because another held the lock."""
		from machhelpdesk.tasks import enqueue_pull

		now = time.monotonic()
		for account in list(self.awaiting):
			status, result = pull_job_state(account)
			if status in ("queued", "started", "deferred", "scheduled"):
				continue
			self.awaiting.discard(account)
			if status == "finished" and isinstance(result, dict) and result.get("skipped"):
				self.dirty.setdefault(account, now + 1.0)
		for account, not_before in list(self.dirty.items()):
			if now < not_before:
				continue
			status, _result = pull_job_state(account)
			if status == "started":
				continue
			if status not in ("queued", "deferred", "scheduled"):
				enqueue_pull(account)
			del self.dirty[account]
			self.awaiting.add(account)


FINGERPRINT_FIELDS = (
	"imap_server",
	"port",
	"encryption",
	"allow_self_signed",
	"username",
	"auth_method",
	"connected_app",
	"connected_user",
)


def pull_job_state(account: str) -> tuple[str | None, object]:
	"""The status ("queued", "started", "finished", "failed", ...) and result of the account's pull job."""
	from frappe.utils.background_jobs import get_job

	from machhelpdesk.tasks import pull_job_id

	job = get_job(pull_job_id(account))
	if job is None:
		return None, None
	status = job.get_status(refresh=True)
	status = getattr(status, "value", status)
	result = job.return_value() if status == "finished" else None
	return status, result


# --- the process -------------------------------------------------------------------------------------------


class Watcher:
	"""`bench mh-idle`: one site thread per site, until SIGTERM or SIGINT."""

	def __init__(self, sites: list[str] | None, sites_path: str, options: WatchOptions) -> None:
		self.explicit_sites = list(sites) if sites else None
		self.sites_path = sites_path
		self.options = options
		self.site_watchers: dict[str, SiteWatcher] = {}
		self.skipped: set[str] = set()
		self.stopping = threading.Event()

	def run(self) -> None:
		for sig in (signal.SIGTERM, signal.SIGINT):
			signal.signal(sig, lambda _signum, _frame: self.stopping.set())
		logger.info(
			"mh-idle: watching %s (IDLE renewed every %.0f s, polling every %.0f s without IDLE, "
			"accounts re-read every %.0f s)",
			", ".join(self.explicit_sites) if self.explicit_sites else "every site with machhelpdesk",
			self.options.renew_seconds,
			self.options.poll_seconds,
			self.options.refresh_seconds,
		)
		next_scan = 0.0
		while not self.stopping.is_set():
			if time.monotonic() >= next_scan:
				self.start_sites()
				next_scan = time.monotonic() + SITE_SCAN_SECONDS
			self.stopping.wait(1.0)
		logger.info("mh-idle: stopping")
		for watcher in self.site_watchers.values():
			watcher.stop()
		for watcher in self.site_watchers.values():
			watcher.join(timeout=self.options.tick + 30)
		logger.info("mh-idle: stopped")

	def start_sites(self) -> None:
		from frappe.utils import get_sites

		sites = self.explicit_sites or get_sites(self.sites_path)
		for site in sites:
			current = self.site_watchers.get(site)
			if current is not None and current.is_alive():
				continue
			if current is not None and current.installed is False and not self.explicit_sites:
				self.site_watchers.pop(site)
				continue
			watcher = SiteWatcher(site, self.sites_path, self.options)
			self.site_watchers[site] = watcher
			watcher.start()


def run_watcher(sites: list[str] | None, sites_path: str, options: WatchOptions) -> None:
	"""Watch until stopped. `sites` None: every site of the bench with the app, new ones included."""
	Watcher(sites, sites_path, options).run()


# --- the scheduler's side ----------------------------------------------------------------------------------


def push_is_healthy(account, now=None) -> bool:
	"""True while the watcher holds an IDLE connection to the account and said so recently."""
	from frappe.utils import get_datetime, now_datetime

	if account.get("watch_mode") != PUSH or not account.get("watch_confirmed_on"):
		return False
	now = now or now_datetime()
	return get_datetime(account.watch_confirmed_on) >= now - timedelta(seconds=HEALTHY_PUSH_SECONDS)


def accounts_due_for_scheduled_pull() -> list[str]:
	"""The enabled accounts the 5-minute scheduler pulls: all of them, except those with healthy push that
	were pulled less than SAFETY_NET_MINUTES ago."""
	import frappe
	from frappe.utils import get_datetime, now_datetime

	now = now_datetime()
	due = []
	for account in frappe.get_all(
		"MH IMAP Account",
		filters={"enabled": 1},
		fields=["name", "watch_mode", "watch_confirmed_on", "last_pulled_on"],
	):
		if push_is_healthy(account, now) and account.last_pulled_on:
			if get_datetime(account.last_pulled_on) > now - timedelta(minutes=SAFETY_NET_MINUTES):
				continue
		due.append(account.name)
	return due
