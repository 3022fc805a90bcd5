"""Mail intake: an IMAP account's messages become tickets and replies, exactly once.

The flow for one account is mailbox -> ledger -> decide -> persist -> act on the server:

1. Take the account's lock (MariaDB ``GET_LOCK``: it holds across commits and across workers on
   several machines, and the server drops it if the worker dies).
2. Select the folder. When its UIDVALIDITY changed, every UID is read again and matched to the
   ledger by Message-ID (or content hash), so nothing is skipped and nothing is ticketed twice.
3. For each message, a ledger row (``MH Inbound Mail``) is committed in state *Processing* before
   any work, with the raw copy on disk. Then the message is parsed, classified, run through the
   blocking filters and processing rules, and turned into a ticket or a reply. The ticket, its
   thread, its files and the row's final state are committed together.
4. Only after that commit is the message moved (or deleted) on the server, a batch of committed
   messages in one command. The rows record the server action, so a crash between commit and move
   is finished by the next pull.

A message that raises is rolled back and its row says *Failed* with the error; it stays on the
server and is not retried by later pulls, until an admin presses Re-process. A row left in
*Processing* by a killed worker is retried, at most ``MAX_ATTEMPTS`` times, so a message that
crashes the worker itself cannot block the mailbox.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import frappe
from frappe import _
from frappe.utils import add_days, cint, escape_html, get_datetime, now_datetime, validate_email_address

from machhelpdesk.engine import imap as transport
from machhelpdesk.engine.loops import Automation, bounced_message_ids, classify_automation
from machhelpdesk.engine.message import MessageParseError, ParsedMessage, parse_message
from machhelpdesk.engine.rules import Decision, apply_rules
from machhelpdesk.engine.threads import choose_thread, find_ticket_numbers, thread_message_ids
from machhelpdesk.oauth import OAuthTokenError, disable_for_token_failure, renew_refused_token

MAX_ATTEMPTS = 3
# Errors of the site's disk, not of the attachment: the message must wait on the server.
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
LOGIN_FAILURE_LIMIT = 5
FETCH_BATCH = 20
REOPEN_WINDOW_DAYS = 30
SUBJECT_LENGTH = 500
FILE_NAME_LENGTH = 140  # File.file_name is a Data field
ERROR_LENGTH = 20000

# Ledger states. Every message ends in exactly one of the terminal ones.
PROCESSING = "Processing"
TICKETED = "Ticketed"
REPLIED = "Replied"
IGNORED = "Ignored"
BOUNCED = "Bounced"
BLOCKED = "Blocked"
HELD = "Held"
DISCARDED = "Discarded"
DELETED_BY_RULE = "Deleted by Rule"
DUPLICATE = "Duplicate"
FAILED = "Failed"
EXPIRED = "Expired"

# Server actions recorded on the row.
PENDING = "Pending"
MOVED = "Moved"
DELETED = "Deleted"
LEFT = "Left in Folder"

SUMMARY_KEYS = (
	"seen",
	"tickets",
	"replies",
	"held",
	"blocked",
	"discarded",
	"ignored",
	"bounced",
	"deleted_by_rule",
	"duplicates",
	"failed",
	"moved",
	"deleted",
)
STATE_COUNTER = {
	TICKETED: "tickets",
	REPLIED: "replies",
	HELD: "held",
	BLOCKED: "blocked",
	DISCARDED: "discarded",
	IGNORED: "ignored",
	BOUNCED: "bounced",
	DELETED_BY_RULE: "deleted_by_rule",
	DUPLICATE: "duplicates",
	FAILED: "failed",
}


class IntakeError(frappe.ValidationError):
	"""A pull could not run at all (login, TLS, folder); the message says why in plain words."""


@dataclass
class PullSummary:
	"""What one pull did, for the CLI, the desk and the logs."""

	account: str
	dry_run: bool = False
	counts: Counter = field(default_factory=Counter)
	error: str = ""
	skipped: str = ""
	plans: list[dict] = field(default_factory=list)

	def add(self, key: str, n: int = 1) -> None:
		self.counts[key] += n

	def as_dict(self) -> dict:
		return {
			"account": self.account,
			"dry_run": self.dry_run,
			"error": self.error,
			"skipped": self.skipped,
			**{key: self.counts[key] for key in SUMMARY_KEYS},
			"plans": self.plans,
		}

	def text(self) -> str:
		head = _("{0}: dry run").format(self.account) if self.dry_run else self.account
		if self.skipped:
			return f"{head}: {self.skipped}"
		parts = [f"{key.replace('_', ' ')} {self.counts[key]}" for key in SUMMARY_KEYS]
		line = f"{head}: " + ", ".join(parts)
		return f"{line}\n  error: {self.error}" if self.error else line


@dataclass
class Plan:
	"""What intake will do with one parsed message. Built without writing anything (dry runs use it)."""

	state: str
	reason: str = ""
	ticket: str | None = None  # the ticket a reply, bounce or ignored auto-reply belongs to
	decision: Decision | None = None
	automation: Automation | None = None
	create_contact: bool = False
	duplicate_of: str | None = None
	blocking_filter: str | None = None

	def as_dict(self) -> dict:
		return {
			"state": self.state,
			"reason": self.reason,
			"ticket": self.ticket,
			"rules": self.decision.summary() if self.decision else "",
		}


_failpoint_hits: Counter = Counter()


def failpoint(step: str) -> None:
	"""Fault injection for the fault tests; unset in production, where this does nothing.

	``MH_INTAKE_FAILPOINT=step[:n]`` SIGKILLs this process the n-th time (default 1st) intake reaches
	``step``. ``step:n:pause`` instead writes this process's database connection id to the file
	``MH_INTAKE_PAUSED_FILE`` and waits (at most 2 minutes) until ``MH_INTAKE_RESUME_FILE`` exists,
	so that a test can break something (the IMAP server, the database connection) at that moment.

	Steps: after_fetch, after_ledger, before_commit, after_commit (per message), and after_move
	(after a batch's move or delete command, before it is recorded).
	"""
	wanted = os.environ.get("MH_INTAKE_FAILPOINT")
	if not wanted:
		return
	name, _sep, rest = wanted.partition(":")
	if name != step:
		return
	nth, _sep, action = rest.partition(":")
	_failpoint_hits[step] += 1
	if _failpoint_hits[step] != int(nth or 1):
		return
	if action != "pause":
		os.kill(os.getpid(), signal.SIGKILL)
	connection_id = frappe.db.sql("SELECT CONNECTION_ID()")[0][0]
	paused = os.environ["MH_INTAKE_PAUSED_FILE"]
	with open(paused + ".tmp", "w") as fh:
		fh.write(str(connection_id))
	os.replace(paused + ".tmp", paused)
	deadline = time.monotonic() + 120
	while not os.path.exists(os.environ["MH_INTAKE_RESUME_FILE"]) and time.monotonic() < deadline:
		time.sleep(0.05)


# --- entry points -----------------------------------------------------------------------------------


def pull_account(account: str, dry_run: bool = False, progress: Callable[[str], None] | None = None) -> dict:
	"""Pull one account now. Returns the summary as a dict. Used by the scheduler job and the CLI."""
	summary = PullSummary(account=account, dry_run=dry_run)
	with account_lock(account) as locked:
		if not locked:
			summary.skipped = _("another pull of this account is running; nothing done")
			return summary.as_dict() | {"text": summary.text()}
		doc = frappe.get_doc("MH IMAP Account", account)
		try:
			try:
				MailboxPull(doc, summary, dry_run=dry_run, progress=progress).run()
			except transport.IMAPTokenError:
				# The server refused an OAuth2 token the cache thought valid: one new token, one more try.
				if dry_run or not renew_refused_token(doc):
					raise
				MailboxPull(doc, summary, dry_run=dry_run, progress=progress).run()
		except (transport.IMAPTokenError, OAuthTokenError) as e:
			# Only a person can authorize again: pulling stops here, with a message on the account's form.
			summary.error = str(e)
			if not dry_run:
				disable_for_token_failure(doc, e)
		except transport.IMAPError as e:
			summary.error = str(e)
			if not dry_run:
				record_pull_error(doc, e)
		except OSError as e:
			# The site's disk refused the raw copy (full, read-only): nothing was taken from the server.
			summary.error = _("the site could not store mail: {0}").format(e)
			if not dry_run:
				record_pull_error(doc, e)
	return summary.as_dict() | {"text": summary.text()}


@contextmanager
def account_lock(account: str) -> Iterator[bool]:
	"""A named MariaDB lock per site and account: held across commits, released if the worker dies."""
	name = "mh-pull:" + hashlib.sha1(f"{frappe.local.site}:{account}".encode()).hexdigest()  # noqa: S324
	got = frappe.db.sql("SELECT GET_LOCK(%s, 0)", (name,))[0][0] == 1
	try:
		yield got
	finally:
		if got:
			frappe.db.sql("SELECT RELEASE_LOCK(%s)", (name,))


def record_pull_error(doc, error: Exception) -> None:
	"""Remember the error on the account; after 5 failed logins in a row, disable it and tell managers."""
	frappe.db.rollback()
	values = {"last_error": str(error)[:1000], "last_pulled_on": now_datetime()}
	if isinstance(error, transport.IMAPAuthError):
		failures = cint(frappe.db.get_value("MH IMAP Account", doc.name, "login_failures")) + 1
		values["login_failures"] = failures
		if failures >= LOGIN_FAILURE_LIMIT:
			values["enabled"] = 0
			notify_managers_of_disabled_account(doc, error)
	frappe.db.set_value("MH IMAP Account", doc.name, values, update_modified=False)
	frappe.db.commit()  # the failure count must survive the job, which ends here


def notify_managers_of_disabled_account(doc, error: Exception) -> None:
	subject = _("Email Parser: {0} was disabled after {1} failed logins").format(
		doc.email_address, LOGIN_FAILURE_LIMIT
	)
	notify_managers(doc, subject, str(error))


def notify_managers(doc, subject: str, message: str) -> None:
	"""A desk notification about the IMAP account `doc` for every enabled MH Manager and System Manager."""
	managers = frappe.get_all(
		"Has Role",
		filters={"role": ("in", ("MH Manager", "System Manager")), "parenttype": "User"},
		pluck="parent",
		distinct=True,
	)
	for user in managers:
		if user in ("Administrator", "Guest") or not frappe.db.get_value("User", user, "enabled"):
			continue
		frappe.get_doc(
			{
				"doctype": "Notification Log",
				"for_user": user,
				"type": "Alert",
				"document_type": "MH IMAP Account",
				"document_name": doc.name,
				"subject": subject,
				"email_content": escape_html(message),
			}
		).insert(ignore_permissions=True)


# --- one pull ---------------------------------------------------------------------------------------


class MailboxPull:
	"""One pass over one account's folder. Every write to the database happens here or below."""

	def __init__(self, account, summary: PullSummary, dry_run: bool = False, progress=None):
		self.account = account
		self.summary = summary
		self.dry_run = dry_run
		self.progress = progress or (lambda _message: None)
		self.settings = frappe.get_cached_doc("MH Settings")
		self.max_attachment_size = effective_attachment_limit(self.settings)
		self.session: transport.MailboxSession | None = None
		self.uidvalidity = ""
		self.context = IntakeContext(account.name)
		# Committed rows whose move or delete on the server is still to do: done a batch at a time.
		self.unsettled: list[frappe._dict] = []
		self.ledgered: dict[int, str] = {}  # UID -> ledger row, for the UIDs this pull will read
		self.highest_taken_uid = 0

	def run(self) -> None:
		settings = self.account.imap_settings()
		with transport.MailboxSession(settings) as session:
			self.session = session
			state = session.select(self.account.folder, readonly=self.dry_run)
			self.uidvalidity = str(state.uidvalidity)
			resync = bool(self.account.uidvalidity) and self.account.uidvalidity != self.uidvalidity
			if not self.dry_run:
				self.finish_pending_server_actions()
			last_uid = 0 if resync else cint(self.account.last_uid)
			uids = session.all_uids() if not last_uid else session.uids_since(last_uid)
			self.ledgered = self.ledgered_uids(uids)
			if resync:
				self.progress(
					_("UIDVALIDITY changed from {0} to {1}: re-syncing {2} messages by Message-ID").format(
						self.account.uidvalidity, self.uidvalidity, len(uids)
					)
				)
			self.progress(_("{0}: {1} new messages").format(self.account.name, len(uids)))
			for fetched in session.fetch(uids, batch=FETCH_BATCH, max_bytes=max_message_bytes()):
				self.take(fetched)
				self.summary.add("seen")
				if len(self.unsettled) >= FETCH_BATCH:
					self.settle()
				if self.summary.counts["seen"] % 50 == 0:
					self.progress(
						_("{0} of {1} messages read").format(self.summary.counts["seen"], len(uids))
					)
			if not self.dry_run:
				self.settle()
				frappe.db.set_value(
					"MH IMAP Account",
					self.account.name,
					{"last_pulled_on": now_datetime(), "last_error": "", "login_failures": 0},
					update_modified=False,
				)
				frappe.db.commit()  # the pull's bookkeeping; every message committed on its own already

	# -- per message --

	def mailbox_key(self, uid: int) -> str:
		return f"{self.account.name}|{self.account.folder}|{self.uidvalidity}|{uid}"

	def take(self, fetched: transport.FetchedMessage) -> None:
		"""Give one fetched message exactly one ledger outcome."""
		failpoint("after_fetch")
		row_name = self.ledgered.get(fetched.uid)
		if self.dry_run:
			if not row_name:
				self.plan_only(fetched)
			return
		if row_name:
			self.resume(frappe.get_doc("MH Inbound Mail", row_name), fetched)
		else:
			self.take_new(fetched)
		self.highest_taken_uid = max(self.highest_taken_uid, fetched.uid)

	def ledgered_uids(self, uids: list[int]) -> dict[int, str]:
		"""The ledger rows this folder's UIDs already have (one query per thousand UIDs, not one per message)."""
		found: dict[int, str] = {}
		for start in range(0, len(uids), 1000):
			for name, uid in frappe.get_all(
				"MH Inbound Mail",
				filters={
					"imap_account": self.account.name,
					"folder": self.account.folder,
					"uidvalidity": self.uidvalidity,
					"uid": ("in", uids[start : start + 1000]),
				},
				fields=["name", "uid"],
				as_list=True,
			):
				found[cint(uid)] = name
		return found

	def take_new(self, fetched: transport.FetchedMessage) -> None:
		if fetched.refused:
			self.take_refused(fetched)
			return
		parsed, parse_error = safe_parse(fetched.raw, self.max_attachment_size)
		message_key = make_message_key(parsed, fetched.raw)
		earlier = self.same_message_elsewhere(message_key)
		if earlier and earlier.imap_account == self.account.name and earlier.folder == self.account.folder:
			if earlier.uidvalidity != self.uidvalidity:
				# The folder was renumbered (UIDVALIDITY changed): the same row, at its new address.
				earlier.db_set(
					{
						"uidvalidity": self.uidvalidity,
						"uid": fetched.uid,
						"mailbox_key": self.mailbox_key(fetched.uid),
					}
				)
				frappe.db.commit()  # the row's new coordinates, before anything is done with them
				self.resume(earlier, fetched, parsed=parsed)
				return
		row = self.insert_row(fetched, parsed, message_key)
		if earlier and earlier.state not in (FAILED, PROCESSING):
			self.finish(
				row,
				Plan(
					state=DUPLICATE,
					reason=_("already taken as {0}").format(earlier.name),
					duplicate_of=earlier.name,
					ticket=earlier.ticket,
				),
			)
			return
		self.process(row, parsed, parse_error)

	def take_refused(self, fetched: transport.FetchedMessage) -> None:
		"""A message that was not downloaded (too large, or the server would not send it): a Failed row
		that says why, with what its header tells, and the message left on the server."""
		parsed, _error = safe_parse(fetched.raw, 0) if fetched.raw else (None, None)
		key = make_message_key(parsed, fetched.raw) if parsed and parsed.message_id else None
		row = self.insert_row(
			fetched, parsed, key or "refused:" + self.mailbox_key(fetched.uid), keep_raw=False
		)
		self.fail(row, fetched.refused)

	def resume(self, row, fetched: transport.FetchedMessage, parsed: ParsedMessage | None = None) -> None:
		"""A message the ledger already knows: finish whatever an earlier pull left undone."""
		if row.state == PROCESSING and fetched.refused:
			self.fail(row, fetched.refused)
			return
		if row.state == PROCESSING:
			if cint(row.attempts) >= MAX_ATTEMPTS:
				self.fail(
					row,
					_(
						"processing was interrupted {0} times; the worker may have crashed on this message"
					).format(row.attempts),
				)
				return
			row.db_set("attempts", cint(row.attempts) + 1)
			frappe.db.commit()  # count the attempt before trying, so a crashing message cannot loop
			if parsed is None:
				parsed, parse_error = safe_parse(fetched.raw, self.max_attachment_size)
			else:
				parse_error = None
			self.process(row, parsed, parse_error)
		elif row.server_action == PENDING:
			self.unsettled.append(
				frappe._dict(name=row.name, uid=row.uid, state=row.state, reason=row.reason)
			)

	def plan_only(self, fetched: transport.FetchedMessage) -> None:
		parsed, parse_error = safe_parse(fetched.raw, self.max_attachment_size)
		if parsed is None:
			plan = Plan(state=FAILED, reason=parse_error or "")
		else:
			earlier = self.same_message_elsewhere(make_message_key(parsed, fetched.raw))
			plan = (
				Plan(state=DUPLICATE, reason=_("already taken as {0}").format(earlier.name))
				if earlier and earlier.state not in (FAILED, PROCESSING)
				else plan_message(self.account, parsed, context=self.context)
			)
		self.summary.add(STATE_COUNTER.get(plan.state, "failed"))
		self.summary.plans.append(
			{"uid": fetched.uid, "subject": parsed.subject if parsed else ""} | plan.as_dict()
		)

	def same_message_elsewhere(self, message_key: str):
		name = frappe.db.get_value(
			"MH Inbound Mail", {"message_key": message_key}, "name", order_by="creation asc"
		)
		return frappe.get_doc("MH Inbound Mail", name) if name else None

	def insert_row(
		self,
		fetched: transport.FetchedMessage,
		parsed: ParsedMessage | None,
		message_key: str,
		keep_raw: bool = True,
	):
		sender = parsed.sender if parsed else None
		received = to_naive_utc(fetched.internal_date or (parsed.date if parsed else None)) or now_datetime()
		row = frappe.get_doc(
			{
				"doctype": "MH Inbound Mail",
				"state": PROCESSING,
				"server_action": PENDING,
				"attempts": 1,
				"imap_account": self.account.name,
				"folder": self.account.folder,
				"uidvalidity": self.uidvalidity,
				"uid": fetched.uid,
				"mailbox_key": self.mailbox_key(fetched.uid),
				"message_id": (parsed.message_id or "")[:255] if parsed else "",
				"message_key": message_key,
				"from_email": (sender.email if sender else "")[:255],
				"from_name": (sender.name if sender else "")[:255],
				"subject": (parsed.subject if parsed else "")[:SUBJECT_LENGTH],
				"size": fetched.size or len(fetched.raw),
				"received_at": received,
				"raw_path": store_raw(fetched.raw) if keep_raw else "",
			}
		)
		row.insert(ignore_permissions=True)
		frappe.db.commit()  # the row exists before any work, so a crash leaves a trace and a retry count
		failpoint("after_ledger")
		return row

	def process(self, row, parsed: ParsedMessage | None, parse_error: str | None) -> None:
		if parsed is None:
			self.fail(row, parse_error or _("the message could not be parsed"))
			return
		try:
			plan = plan_message(self.account, parsed, context=self.context)
			persist(self.account, row, parsed, plan, context=self.context)
		except Exception:
			frappe.db.rollback()
			self.context.forget_senders()  # contacts made for this message were rolled back with it
			self.fail(row, traceback.format_exc())
			return
		self.finish(row, plan)

	def finish(self, row, plan: Plan) -> None:
		"""Commit the outcome with everything it created; the server action follows with its batch."""
		values = {
			"state": plan.state,
			"reason": plan.reason[:1000],
			"ticket": plan.ticket,
			"communication": row.get("communication"),
		}
		if plan.duplicate_of:
			values["duplicate_of"] = plan.duplicate_of
		if plan.automation and plan.automation.is_automated:
			values["automation"] = f"{plan.automation.kind}: {plan.automation.reason}"[:140]
		if plan.decision:
			values["rule_trace"] = frappe.as_json(plan.decision.as_dict())
		frappe.db.set_value("MH Inbound Mail", row.name, values)
		failpoint("before_commit")
		frappe.db.commit()  # the ticket, its thread and the row's outcome become durable together
		failpoint("after_commit")
		self.summary.add(STATE_COUNTER[plan.state])
		self.context.count_hits(plan)
		self.unsettled.append(frappe._dict(name=row.name, uid=row.uid, state=plan.state, reason=plan.reason))

	def fail(self, row, error: str) -> None:
		reason = error.strip().splitlines()[-1][:1000] if error.strip() else ""
		frappe.db.set_value(
			"MH Inbound Mail",
			row.name,
			{"state": FAILED, "server_action": LEFT, "reason": reason, "error": error[-ERROR_LENGTH:]},
		)
		frappe.db.commit()  # a failed message is recorded and left on the server for an admin
		self.summary.add("failed")
		self.progress(_("message UID {0} failed: {1}").format(row.uid, reason))

	def server_action_for(self, state: str) -> str:
		"""Moved, or Deleted: "Delete Message" rules delete, even on an account that moves parsed mail."""
		return MOVED if self.account.move_parsed_email and state != DELETED_BY_RULE else DELETED

	def settle(self) -> None:
		"""Move or delete the committed messages on the server, one command per action, then record it.

		A dropped connection ends the pull (the rows stay Pending and the next pull finishes them); a
		refusal by the server is noted on the rows, which also stay Pending.
		"""
		rows, self.unsettled = self.unsettled, []
		done: dict[str, list] = {}
		for action in (MOVED, DELETED):
			group = [row for row in rows if self.server_action_for(row.state) == action]
			if not group:
				continue
			uids = [cint(row.uid) for row in group]
			try:
				if action == MOVED:
					self.session.move(uids, self.account.move_to_folder)
				else:
					self.session.delete(uids)
			except transport.IMAPConnectError:
				raise
			except transport.IMAPError as e:
				for row in group:
					frappe.db.set_value(
						"MH Inbound Mail", row.name, "reason", f"{row.reason or ''}\n{e}".strip()[:1000]
					)
				continue
			failpoint("after_move")
			done[action] = group
		for action, group in done.items():
			self.record_server_action(group, action)
			self.summary.add("moved" if action == MOVED else "deleted", len(group))
		self.context.save_hits()
		self.advance_last_uid()
		frappe.db.commit()  # server actions, rule hits and the UID mark of this batch

	def record_server_action(self, rows: list, action: str) -> None:
		inbound = frappe.qb.DocType("MH Inbound Mail")
		(
			frappe.qb.update(inbound)
			.set(inbound.server_action, action)
			.where(inbound.name.isin([row.name for row in rows]))
		).run()

	def finish_pending_server_actions(self) -> None:
		"""Rows committed by an earlier pull whose move or delete did not happen (crash, dropped link)."""
		rows = frappe.get_all(
			"MH Inbound Mail",
			filters={
				"imap_account": self.account.name,
				"folder": self.account.folder,
				"uidvalidity": self.uidvalidity,
				"server_action": PENDING,
				"state": ("not in", (PROCESSING, FAILED)),
			},
			fields=["name", "uid", "state", "reason"],
		)
		if not rows:
			return
		present = set(self.session.all_uids())
		gone = [row for row in rows if cint(row.uid) not in present]
		for action in (MOVED, DELETED):
			group = [row for row in gone if self.server_action_for(row.state) == action]
			if group:
				self.record_server_action(group, action)  # someone else already did it; record what we found
		self.unsettled = [row for row in rows if cint(row.uid) in present]
		self.settle()

	def advance_last_uid(self) -> None:
		uid = self.highest_taken_uid
		if uid and (uid > cint(self.account.last_uid) or self.account.uidvalidity != self.uidvalidity):
			self.account.last_uid = uid
			self.account.uidvalidity = self.uidvalidity
			frappe.db.set_value(
				"MH IMAP Account",
				self.account.name,
				{"last_uid": uid, "uidvalidity": self.uidvalidity},
				update_modified=False,
			)


# --- what a pull looks up once --------------------------------------------------------------------


class IntakeContext:
	"""What intake looks up once per pull instead of once per message: the helpdesk's own addresses,
	the blocking filters, the account's rules, default statuses and priorities, and senders' contacts.

	It also counts rule and filter hits, which are written with each batch's server actions.
	"""

	def __init__(self, account: str):
		self.account = account
		self._own: set[str] | None = None
		self._filters: list | None = None
		self._rules: list | None = None
		self._rule_docs: dict[str, list[str]] = {}
		self._defaults: dict[str, str | None] = {}
		self._contacts: dict[str, str | None] = {}
		self._contact_links: dict[str, list[tuple[str, str]]] = {}
		self._known: dict[str, bool] = {}
		self.rule_hits: Counter = Counter()
		self.filter_hits: Counter = Counter()

	def is_own_address(self, address: str) -> bool:
		if self._own is None:
			self._own = {(a or "").lower() for a in frappe.get_all("MH IMAP Account", pluck="email_address")}
		return (address or "").lower() in self._own

	def blocking_filter_for(self, address: str):
		"""The first enabled filter that blocks this sender, if any."""
		if self._filters is None:
			self._filters = [
				frappe.get_cached_doc("MH Blocking Filter", name)
				for name in frappe.get_all(
					"MH Blocking Filter", filters={"enabled": 1}, order_by="creation asc", pluck="name"
				)
			]
		return next((f for f in self._filters if f.matches(address)), None)

	def rules(self) -> list:
		"""The account's enabled rules (and the global ones) as engine rules, in order."""
		if self._rules is None:
			docs = account_rules(self.account)
			self._rules = [doc.as_engine_rule() for doc in docs]
			for doc in docs:
				self._rule_docs.setdefault(doc.rule_name, []).append(doc.name)
		return self._rules

	def default_status(self, category: str) -> str | None:
		from machhelpdesk.machhelpdesk.doctype.mh_ticket.mh_ticket import default_status

		key = "status:" + category
		if key not in self._defaults:
			self._defaults[key] = default_status(category)
		return self._defaults[key]

	def default_priority(self) -> str | None:
		from machhelpdesk.machhelpdesk.doctype.mh_ticket.mh_ticket import default_priority

		if "priority" not in self._defaults:
			self._defaults["priority"] = default_priority()
		return self._defaults["priority"]

	def contact_for(self, address: str) -> str | None:
		key = (address or "").lower()
		if key not in self._contacts:
			self._contacts[key] = contact_for(address)
		return self._contacts[key]

	def remember_contact(self, address: str, contact: str) -> None:
		self._contacts[(address or "").lower()] = contact
		self._known.pop((address or "").lower(), None)

	def contact_links(self, contact: str) -> list[tuple[str, str]]:
		"""The contact and what it is linked to (a Customer, a Supplier...): the thread's timeline links."""
		if contact not in self._contact_links:
			links = frappe.get_all(
				"Dynamic Link",
				filters={"parenttype": "Contact", "parent": contact},
				fields=["link_doctype", "link_name"],
				as_list=True,
			)
			self._contact_links[contact] = [("Contact", contact), *((dt, dn) for dt, dn in links)]
		return self._contact_links[contact]

	def is_known_sender(self, address: str) -> bool:
		key = (address or "").lower()
		if key not in self._known:
			contact = self.contact_for(address)
			self._known[key] = bool(contact and frappe.db.get_value("Contact", contact, "user")) or bool(
				frappe.db.get_value("User", {"name": address, "user_type": "System User", "enabled": 1})
			)
		return self._known[key]

	def forget_senders(self) -> None:
		"""After a rollback: contacts and users made for the failed message are gone."""
		self._contacts.clear()
		self._contact_links.clear()
		self._known.clear()

	def count_hits(self, plan: Plan) -> None:
		if plan.decision:
			self.rules()
			for rule_name in plan.decision.matched_rules:
				for name in self._rule_docs.get(rule_name, ()):
					self.rule_hits[name] += 1
		if plan.blocking_filter:
			self.filter_hits[plan.blocking_filter] += 1

	def save_hits(self) -> None:
		"""Add the counted hits to the rules and filters (one statement per rule or filter hit)."""
		for doctype, hits in (
			("MH Processing Rule", self.rule_hits),
			("MH Blocking Filter", self.filter_hits),
		):
			table = frappe.qb.DocType(doctype)
			for name, count in hits.items():
				(
					frappe.qb.update(table)
					.set(table.hit_count, table.hit_count + count)
					.set(table.last_hit_on, now_datetime())
					.where(table.name == name)
				).run()
			hits.clear()


# --- parse and decide (no writes) -------------------------------------------------------------------


def max_message_bytes() -> int:
	"""The largest message intake downloads: site config ``mh_max_message_mb``, else 200 MB."""
	return cint(frappe.conf.get("mh_max_message_mb")) * 1024 * 1024 or transport.MAX_MESSAGE_BYTES


def effective_attachment_limit(settings) -> int:
	"""The lower of the helpdesk's own limit (0 = none) and Frappe's file size limit, in bytes."""
	from frappe.core.api.file import get_max_file_size

	ours = cint(settings.max_attachment_size_mb) * 1024 * 1024
	return min(ours, get_max_file_size()) if ours else get_max_file_size()


def safe_parse(raw: bytes, max_attachment_size: int | None) -> tuple[ParsedMessage | None, str | None]:
	try:
		return parse_message(raw, max_attachment_size=max_attachment_size), None
	except MessageParseError as e:
		return None, _("the message could not be parsed: {0}").format(e)


def make_message_key(parsed: ParsedMessage | None, raw: bytes) -> str:
	"""The Message-ID, or a content hash when there is none: two copies of one message share it."""
	if parsed and parsed.message_id:
		return parsed.message_id[:255]
	return "sha256:" + hashlib.sha256(raw).hexdigest()


def plan_message(
	account, parsed: ParsedMessage, rules: list | None = None, context: IntakeContext | None = None
) -> Plan:
	"""Decide what to do with a message, reading the database but writing nothing.

	``rules`` (engine rules) replaces the account's saved rules, for dry runs of rules being edited.
	``context`` carries what a pull has looked up already.
	"""
	context = context or IntakeContext(account.name)
	automation = classify_automation(parsed)
	sender = parsed.sender.email if parsed.sender else ""
	if automation.kind == "bounce":
		ticket = ticket_for_message_ids(bounced_message_ids(parsed))
		return Plan(state=BOUNCED, reason=automation.reason, ticket=ticket, automation=automation)
	if not sender:
		return Plan(state=DISCARDED, reason=_("the message has no sender address"), automation=automation)
	if context.is_own_address(sender):
		return Plan(
			state=IGNORED, reason=_("sent from one of the helpdesk's own addresses"), automation=automation
		)
	blocking = context.blocking_filter_for(sender)
	if blocking:
		return Plan(
			state=BLOCKED,
			reason=_("blocked by filter {0} ({1} {2})").format(
				blocking.name, blocking.filter_type, blocking.value
			),
			automation=automation,
			blocking_filter=blocking.name,
		)
	thread = find_thread(parsed)
	if not automation.may_open_ticket:
		return Plan(state=IGNORED, reason=automation.reason, ticket=thread, automation=automation)
	if rules is None:
		rules = context.rules()
	decision = apply_rules(rules, parsed, is_reply=bool(thread))
	if decision.delete:
		return Plan(
			state=DELETED_BY_RULE,
			reason=_("deleted by rule {0}").format(decision.deleted_by),
			decision=decision,
			automation=automation,
			ticket=thread,
		)
	if thread:
		return Plan(state=REPLIED, ticket=thread, decision=decision, automation=automation)
	state, reason, create_contact = unknown_sender_outcome(sender, context=context)
	return Plan(
		state=state, reason=reason, decision=decision, automation=automation, create_contact=create_contact
	)


def ticket_from_held(row_name: str, reason: str, create_contact: bool = True) -> str:
	"""Turn a held message into its ticket, dated by when the mail arrived; the caller commits.

	The account's rules run as they would have on arrival; the sender is known by now (confirmed, or
	released by an agent), so the unknown-sender policy is not asked again. ``create_contact=False``
	(an agent releasing one message) makes the ticket without giving the sender an account.
	"""
	row = frappe.get_doc("MH Inbound Mail", row_name)
	if row.state != HELD:
		frappe.throw(_("Only held mail can be released; this message is {0}.").format(_(row.state)))
	if not row.raw_path:
		frappe.throw(_("The raw copy of this held message is gone."))
	account = frappe.get_doc("MH IMAP Account", row.imap_account)
	limit = effective_attachment_limit(frappe.get_cached_doc("MH Settings"))
	parsed = parse_message(read_raw(row.raw_path), max_attachment_size=limit)
	context = IntakeContext(account.name)
	plan = Plan(
		state=TICKETED,
		reason=reason,
		decision=apply_rules(context.rules(), parsed),
		create_contact=create_contact,
	)
	persist(account, row, parsed, plan, context=context)
	context.count_hits(plan)
	context.save_hits()
	row.db_set(
		{
			"state": TICKETED,
			"ticket": plan.ticket,
			"reason": reason[:1000],
			"communication": row.get("communication"),
		}
	)
	return plan.ticket


def account_rules(account: str):
	from machhelpdesk.machhelpdesk.doctype.mh_processing_rule.mh_processing_rule import rules_for_account

	return rules_for_account(account)


def find_thread(parsed: ParsedMessage) -> str | None:
	"""The ticket this message answers: by Message-ID, or by ticket number from a known participant."""
	from machhelpdesk.machhelpdesk.doctype.mh_settings.mh_settings import ticket_affixes

	prefixes, postfixes = ticket_affixes()
	by_message_id = tickets_by_message_id(thread_message_ids(parsed))
	subject_tickets = {}
	for number in find_ticket_numbers(parsed.subject, prefixes, postfixes):
		values = frappe.db.get_value("MH Ticket", number, ["raised_by", "cc"], as_dict=True)
		if values:
			subject_tickets[number] = participants(values.raised_by, values.cc)
	candidate = choose_thread(
		parsed,
		by_message_id=by_message_id,
		subject_tickets=subject_tickets,
		prefixes=prefixes,
		postfixes=postfixes,
	)
	if not candidate:
		return None
	closed_on = frappe.db.get_value("MH Ticket", candidate.ticket, "closed_on")
	if closed_on and get_datetime(closed_on) < add_days(now_datetime(), -REOPEN_WINDOW_DAYS):
		return None  # a reply to a ticket closed long ago opens a new one instead of reopening it
	return candidate.ticket


def participants(raised_by: str | None, cc: str | None) -> set[str]:
	people = {(raised_by or "").lower()}
	people.update(
		a.strip().lower() for a in (cc or "").replace(";", ",").replace("\n", ",").split(",") if a.strip()
	)
	people.discard("")
	return people


def tickets_by_message_id(message_ids: list[str]) -> dict[str, str]:
	"""Message-IDs we received or sent, mapped to their tickets."""
	if not message_ids:
		return {}
	found: dict[str, str] = {}
	for message_id, ticket in frappe.get_all(
		"MH Inbound Mail",
		filters={"message_id": ("in", message_ids), "ticket": ("is", "set")},
		fields=["message_id", "ticket"],
		as_list=True,
	):
		found.setdefault(message_id, ticket)
	bare = {m.strip("<>"): m for m in message_ids}
	for message_id, ticket in frappe.get_all(
		"Communication",
		filters={"message_id": ("in", list(bare) + message_ids), "reference_doctype": "MH Ticket"},
		fields=["message_id", "reference_name"],
		as_list=True,
	):
		found.setdefault(bare.get(message_id, message_id), ticket)
	for message_id, ticket in frappe.get_all(
		"MH Ticket",
		filters={"first_message_id": ("in", message_ids)},
		fields=["first_message_id", "name"],
		as_list=True,
	):
		found.setdefault(message_id, ticket)
	return found


def ticket_for_message_ids(message_ids: list[str]) -> str | None:
	found = tickets_by_message_id(message_ids)
	for message_id in message_ids:
		if message_id in found:
			return found[message_id]
	return None


def unknown_sender_outcome(sender: str, context: IntakeContext | None = None) -> tuple[str, str, bool]:
	"""What happens to a new ticket's sender, by the registration settings.

	Returns (state, reason, create_contact). Apps can replace the policy with the
	``mh_unknown_sender_policy`` hook (a dotted path to a function taking the sender's address).
	"""
	hooks = frappe.get_hooks("mh_unknown_sender_policy")
	if hooks:
		return frappe.get_attr(hooks[-1])(sender)
	settings = frappe.get_cached_doc("MH Settings")
	if not settings.require_registration:
		# Anyone may open a ticket; with auto-generate on, a sender without a contact gets one.
		return TICKETED, "", bool(settings.auto_create_accounts)
	if (context or IntakeContext("")).is_known_sender(sender):
		return TICKETED, "", False
	if not settings.auto_create_accounts:
		return DISCARDED, _("discarded: unknown sender"), False
	if settings.require_confirmation:
		return HELD, _("unknown sender: held until the sender confirms"), True
	return TICKETED, _("unknown sender: support account created"), True


def is_known_sender(address: str) -> bool:
	"""A contact with this address linked to a user, or a desk user (an agent writing in)."""
	return IntakeContext("").is_known_sender(address)


def contact_for(address: str) -> str | None:
	return frappe.db.get_value("Contact Email", {"email_id": address, "parenttype": "Contact"}, "parent")


# --- persist ----------------------------------------------------------------------------------------


def persist(account, row, parsed: ParsedMessage, plan: Plan, context: IntakeContext | None = None) -> None:
	"""Write what the plan says, without committing (the caller commits once and counts rule hits)."""
	context = context or IntakeContext(account.name)
	if plan.state == TICKETED:
		plan.ticket = create_ticket(account, row, parsed, plan, context)
	elif plan.state == REPLIED:
		add_reply(account, row, parsed, plan, context)
	elif plan.state == HELD:
		from machhelpdesk.challenge_response import hold_message

		hold_message(account, row, parsed, plan)
	elif plan.state == BOUNCED and plan.ticket:
		frappe.get_doc("MH Ticket", plan.ticket).add_comment(
			"Comment",
			_("A delivery failure report arrived for this ticket ({0}): {1}").format(
				escape_html(parsed.subject), escape_html(plan.reason)
			),
		)


def create_ticket(account, row, parsed: ParsedMessage, plan: Plan, context: IntakeContext) -> str:
	sender = parsed.sender
	contact = context.contact_for(sender.email)
	if not contact and plan.create_contact and validate_email_address(sender.email):
		contact = ensure_contact(sender)
		context.remember_contact(sender.email, contact)
	decision = plan.decision or Decision()
	received = get_datetime(row.received_at)
	status = decision.status or context.default_status("Open")
	ticket = frappe.get_doc(
		{
			"doctype": "MH Ticket",
			"subject": (parsed.subject or _("(no subject)"))[:SUBJECT_LENGTH],
			"raised_by": sender.email,
			"raised_by_name": without_tags(sender.name or "")[:140],
			"contact": contact,
			"cc": ", ".join(other_participants(account, parsed, context)),
			"department": decision.department or account.default_department,
			"status": status,
			"priority": decision.priority or context.default_priority(),
			"imap_account": account.name,
			"first_message_id": (parsed.message_id or "")[:255],
			"opened_on": received,
			"last_customer_message_on": received,
			"intake_note": decision.summary() if decision.matched_rules else None,
		}
	)
	ticket.insert(ignore_permissions=True)
	file_notes, content = save_attachments(ticket.name, parsed)
	row.communication = add_communication(ticket, parsed, row, contact, content, context)
	if file_notes:
		note = "\n".join(filter(None, [ticket.intake_note, *file_notes]))[:5000]
		frappe.db.set_value("MH Ticket", ticket.name, "intake_note", note, update_modified=False)
	if decision.assign_to:
		assign(ticket.name, decision.assign_to)
	return ticket.name


def add_reply(account, row, parsed: ParsedMessage, plan: Plan, context: IntakeContext) -> None:
	ticket = frappe.get_doc("MH Ticket", plan.ticket)
	contact = ticket.contact or context.contact_for(parsed.sender.email)
	notes, content = save_attachments(ticket.name, parsed)
	row.communication = add_communication(ticket, parsed, row, contact, content, context)
	decision = plan.decision or Decision()
	ticket.last_customer_message_on = get_datetime(row.received_at)
	customer = parsed.sender.email in participants(ticket.raised_by, ticket.cc)
	if decision.status:
		ticket.status = decision.status
	elif customer and frappe.get_cached_value("MH Ticket Status", ticket.status, "category") != "Open":
		ticket.status = context.default_status("Open")  # the customer answered: the agents' turn
	if decision.department:
		ticket.department = decision.department
	if decision.priority:
		ticket.priority = decision.priority
	if notes:
		ticket.intake_note = "\n".join(filter(None, [ticket.intake_note, *notes]))[:5000]
	ticket.flags.ignore_permissions = True
	ticket.save()
	if decision.assign_to:
		assign(ticket.name, decision.assign_to)


def other_participants(account, parsed: ParsedMessage, context: IntakeContext) -> list[str]:
	ours = {account.email_address, parsed.sender.email}
	seen = []
	for address in [*parsed.to, *parsed.cc]:
		if (
			address.email
			and address.email not in ours
			and address.email not in seen
			and not context.is_own_address(address.email)
		):
			seen.append(address.email)
	return seen[:50]


def add_communication(
	ticket, parsed: ParsedMessage, row, contact: str | None, content: str, context: IntakeContext
) -> str:
	"""The received mail in the ticket's timeline, as Frappe's Communication; returns its name.

	``Communication.insert`` spends about 20 queries a message finding out what intake already knows:
	the reference's owner, the contacts of every address (and their links), the sender's full name,
	the Email Rule spam flag, then the reference's comment cache and status. Intake resolves the
	contact once per sender, so the row and its timeline links are inserted directly, and the ticket
	form gets the same realtime notice. Left out on purpose: the spam flag (blocking filters run
	before), the list view's comment count cache, and the parent's status (intake sets it).
	"""
	valid_sender = validate_email_address(parsed.sender.email)
	communication = frappe.get_doc(
		{
			"doctype": "Communication",
			"communication_type": "Communication",
			"communication_medium": "Email",
			"sent_or_received": "Received",
			"status": "Linked",
			"email_status": "Open",
			# The controller's XSS filter is skipped here, and the desk prints these two as HTML.
			"subject": without_tags((parsed.subject or _("(no subject)"))[:SUBJECT_LENGTH]),
			# Communication only takes addresses Frappe's validator accepts (no IDN, no bare host);
			# the ticket and the ledger keep the true ones.
			"sender": parsed.sender.email if valid_sender else None,
			"sender_full_name": without_tags(
				(parsed.sender.name or parsed.sender.email)
				if valid_sender
				else f"{parsed.sender.name} <{parsed.sender.email}>".strip()
			)[:140],
			"recipients": frappe_addresses(parsed.to),
			"cc": frappe_addresses(parsed.cc),
			"content": content,
			"text_content": parsed.text[:100000],
			"reference_doctype": "MH Ticket",
			"reference_name": ticket.name,
			"reference_owner": ticket.owner,
			"user": frappe.session.user,
			"message_id": (parsed.message_id or "").strip("<>")[:995],
			"in_reply_to": communication_answered(parsed),
			"communication_date": row.received_at,
			"has_attachment": 1 if any(not a.inline for a in parsed.attachments) else 0,
			"seen": 0,
		}
	)
	if contact:
		for link_doctype, link_name in context.contact_links(contact):
			communication.add_link(link_doctype, link_name)
	insert_without_controller(communication)
	communication.notify_change("add")
	return communication.name


def insert_without_controller(doc) -> None:
	"""Insert a fully prepared document and its child rows, without its controller or doc hooks."""
	doc.set_new_name()
	doc.set_user_and_timestamp()
	doc.set_parent_in_children()
	doc.db_insert()
	for child in doc.get_all_children():
		child.db_insert()


def without_tags(text: str) -> str:
	"""Header text that stays text wherever Frappe prints it as HTML: ``<`` and ``>`` become entities."""
	return text.replace("<", "&lt;").replace(">", "&gt;")


def frappe_addresses(addresses) -> str:
	return ", ".join(a.email for a in addresses if validate_email_address(a.email))[:5000]


def communication_answered(parsed: ParsedMessage) -> str | None:
	"""The Communication this message answers (Communication.in_reply_to links to one), if we have it."""
	ids = [m.strip("<>") for m in parsed.in_reply_to[:5] if m.strip("<>")]
	if not ids:
		return None
	return frappe.db.get_value("Communication", {"message_id": ("in", ids), "reference_doctype": "MH Ticket"})


def message_html(parsed: ParsedMessage) -> str:
	if parsed.html:
		return parsed.html
	return (
		'<div class="mh-plain-text" style="white-space: pre-wrap">'
		+ escape_html(parsed.text or "")
		+ "</div>"
	)


def save_attachments(ticket: str, parsed: ParsedMessage) -> tuple[list[str], str]:
	"""Store attachments as private files on the ticket; list the ones that could not be stored.

	Returns notes for the ticket and the message's HTML for the thread, with inline ``cid:``
	images pointing at their stored files.
	"""
	html = message_html(parsed)
	oversized, unreadable, empty = [], [], []
	for attachment in parsed.attachments:
		if attachment.oversized:
			oversized.append(f"{attachment.filename} ({human_size(attachment.size)})")
			continue
		if not attachment.content:
			empty.append(attachment.filename)
			continue
		file_url, renamed = store_attachment(ticket, attachment.filename, attachment.content)
		if not file_url:
			unreadable.append(attachment.filename)
			continue
		if renamed:
			unreadable.append(_("{0} (stored as {1})").format(attachment.filename, renamed))
		if attachment.content_id:
			html = html.replace(f"cid:{attachment.content_id}", file_url)
	notes = []
	if oversized:
		notes.append(_("Attachments over the size limit were not stored: {0}").format(", ".join(oversized)))
	if unreadable:
		notes.append(
			_(
				"Attachments that Frappe could not read as their type: {0}. The raw message keeps them."
			).format(", ".join(unreadable))
		)
	if empty:
		notes.append(_("Empty attachments, nothing to store: {0}").format(", ".join(empty)))
	return notes, html


def store_attachment(ticket: str, filename: str, content: bytes) -> tuple[str | None, str | None]:
	"""Save one private file on the ticket. Returns (file URL, new name if it had to be renamed).

	Frappe re-encodes images to strip EXIF data and refuses an image it cannot decode; such a file
	is kept as opaque bytes under a ``.bin`` name instead of failing the whole message. A disk that
	refuses the write fails the message instead, so that it stays on the server until there is room.
	"""
	fitted = fit_file_name(filename)
	for name in (fitted, fit_file_name(f"{filename}.bin")):
		frappe.db.savepoint("mh_attachment")
		try:
			file = frappe.get_doc(
				{
					"doctype": "File",
					"file_name": name,
					"attached_to_doctype": "MH Ticket",
					"attached_to_name": ticket,
					"is_private": 1,
					"content": content,
				}
			)
			file.save(ignore_permissions=True)
			return file.file_url, (name if name != fitted else None)
		except OSError as e:
			if e.errno in DISK_ERRORS:
				raise
			frappe.db.rollback(save_point="mh_attachment")
		except Exception:
			frappe.db.rollback(save_point="mh_attachment")
	return None, None


def fit_file_name(filename: str, limit: int = FILE_NAME_LENGTH) -> str:
	"""``filename`` shortened to what Frappe's File keeps (a Data field), keeping its extension."""
	if len(filename) <= limit:
		return filename
	stem, dot, extension = filename.rpartition(".")
	if not dot or not stem or len(extension) > 16:
		return filename[:limit]
	return stem[: limit - len(extension) - 2] + "~." + extension


def human_size(size: int) -> str:
	for unit in ("bytes", "KB", "MB", "GB"):
		if size < 1024 or unit == "GB":
			return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
		size /= 1024
	return str(size)


def assign(ticket: str, user: str) -> None:
	from frappe.desk.form.assign_to import add as add_assignment

	if not frappe.db.get_value("User", {"name": user, "enabled": 1}):
		return
	add_assignment({"assign_to": [user], "doctype": "MH Ticket", "name": ticket}, ignore_permissions=True)


def ensure_contact(sender) -> str:
	"""A Contact and Website User for a new sender, with the customer role and no welcome mail."""
	user = frappe.db.get_value("User", sender.email)
	if not user and user_creation_throttled():
		user = None  # a flood of new senders: the contact is made now, the account when they register
	elif not user:
		user = create_customer_user(sender)
	contact = frappe.get_doc(
		{
			"doctype": "Contact",
			"first_name": first_name_of(sender),
			"user": user,
			"email_ids": [{"email_id": sender.email, "is_primary": 1}],
		}
	)
	contact.insert(ignore_permissions=True)
	return contact.name


def first_name_of(sender) -> str:
	"""The sender's display name for their Contact and User. Frappe refuses names with < or > (a
	Contact is named after it), which would fail the whole message."""
	name = " ".join((sender.name or "").replace("<", " ").replace(">", " ").split())
	return (name or sender.email.split("@")[0])[:100]


def create_customer_user(sender) -> str:
	"""A Website User with the customer role and no welcome mail (a password comes by "forgot password")."""
	user_doc = frappe.get_doc(
		{
			"doctype": "User",
			"email": sender.email,
			"first_name": first_name_of(sender),
			"user_type": "Website User",
			"send_welcome_email": 0,
			"roles": [{"role": "MH Customer"}],
		}
	)
	user_doc.flags.ignore_permissions = True
	user_doc.flags.no_welcome_mail = True
	user_doc.insert()
	return user_doc.name


def user_creation_throttled() -> bool:
	"""Frappe refuses more than ``throttle_user_limit`` new users a minute; check first instead of failing."""
	return frappe.db.get_creation_count("User", 60) >= cint(frappe.local.conf.get("throttle_user_limit", 60))


# --- raw copies ---------------------------------------------------------------------------------------


def raw_root() -> str:
	"""Raw copies live in the site's private folder, outside private/files, so the web never serves them."""
	return frappe.get_site_path("private", "machhelpdesk", "raw")


def store_raw(raw: bytes) -> str:
	"""Write the raw message once per content; returns the path relative to the raw folder."""
	digest = hashlib.sha256(raw).hexdigest()
	relative = os.path.join(digest[:2], digest + ".eml")
	path = os.path.join(raw_root(), relative)
	if not os.path.exists(path):
		os.makedirs(os.path.dirname(path), exist_ok=True)
		tmp = f"{path}.{os.getpid()}.tmp"
		with open(tmp, "wb") as fh:
			fh.write(raw)
			fh.flush()
			os.fsync(fh.fileno())
		os.replace(tmp, path)
	return relative


def read_raw(relative: str) -> bytes:
	path = os.path.realpath(os.path.join(raw_root(), relative))
	if not path.startswith(os.path.realpath(raw_root()) + os.sep):
		frappe.throw(_("Invalid raw copy path"))
	with open(path, "rb") as fh:
		return fh.read()


def purge_raw_copies() -> int:
	"""Daily: delete raw copies past the retention period, keeping failed and held mail."""
	days = cint(frappe.db.get_single_value("MH Settings", "raw_retention_days"))
	if not days:
		return 0
	cutoff = add_days(now_datetime(), -days)
	keep_states = (FAILED, HELD, PROCESSING)
	old = frappe.get_all(
		"MH Inbound Mail",
		filters={"creation": ("<", cutoff), "raw_path": ("is", "set"), "state": ("not in", keep_states)},
		fields=["name", "raw_path"],
		limit=5000,
	)
	removed = 0
	for row in old:
		still_needed = frappe.db.exists(
			"MH Inbound Mail",
			{"raw_path": row.raw_path, "name": ("!=", row.name), "state": ("in", keep_states)},
		)
		frappe.db.set_value("MH Inbound Mail", row.name, "raw_path", "", update_modified=False)
		if not still_needed:
			with_path = os.path.join(raw_root(), row.raw_path)
			if os.path.exists(with_path):
				os.remove(with_path)
				removed += 1
	frappe.db.commit()  # scheduled job: purge in one go
	return removed


# --- re-process -----------------------------------------------------------------------------------


def reprocess(row_name: str) -> str:
	"""Run a failed message again from its raw copy, then move it on the server like parsed mail."""
	row = frappe.get_doc("MH Inbound Mail", row_name)
	if row.state != FAILED:
		frappe.throw(_("Only failed messages can be re-processed; this one is {0}.").format(_(row.state)))
	if not row.raw_path:
		frappe.throw(_("The raw copy of this message is gone, so it cannot be re-processed."))
	account = frappe.get_doc("MH IMAP Account", row.imap_account)
	raw = read_raw(row.raw_path)
	row.db_set(
		{"state": PROCESSING, "attempts": cint(row.attempts) + 1, "server_action": PENDING, "error": ""}
	)
	frappe.db.commit()  # visible as Processing while it runs
	summary = PullSummary(account=account.name)
	with account_lock(account.name) as locked:
		if not locked:
			row.db_set({"state": FAILED, "server_action": LEFT})
			frappe.db.commit()  # back to where it was
			frappe.throw(_("A pull of {0} is running. Try again in a minute.").format(account.name))
		pull = MailboxPull(account, summary)
		pull.uidvalidity = row.uidvalidity
		parsed, parse_error = safe_parse(raw, pull.max_attachment_size)
		with transport.MailboxSession(account.imap_settings()) as session:
			session.select(row.folder)
			pull.session = session
			pull.process(row, parsed, parse_error)
			pull.settle()
	row.reload()
	return row.state


def to_naive_utc(value: datetime | None) -> datetime | None:
	"""Frappe stores naive datetimes in the system time zone; convert an aware one to it."""
	if value is None:
		return None
	if value.tzinfo is None:
		return value
	from frappe.utils import convert_utc_to_system_timezone

	return convert_utc_to_system_timezone(value.astimezone(timezone.utc)).replace(tzinfo=None)
