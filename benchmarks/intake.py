"""Benchmark: intake end to end, against Frappe core's InboundMail on the same messages.

Run with the bench's Python, from anywhere (``--bench`` defaults to $FRAPPE_BENCH or ~/frappe-bench):

	~/frappe-bench/env/bin/python benchmarks/intake.py --site test_site --n 1000 --n 10000

For each N it starts a real Dovecot on 127.0.0.1, fills a mailbox with N messages (the corpus,
replicated, each copy with a Message-ID of its own so that no two are the same message), and then,
each step in a fresh process so its peak memory is its own:

- ``parse``: parses the N messages with the app's parser and with core's ``frappe.email.receive.Email``;
- ``ours``: pulls the mailbox into the site with :func:`machhelpdesk.intake.pull_account` (fetch, ledger,
  parse, rules, ticket, thread, files, commit, move: everything), counting SQL statements;
- ``core``: runs the same messages through ``InboundMail(...).process()`` into ``Communication``,
  committing after each, as ``EmailAccount.receive`` does. That is core's processing only, without
  its IMAP fetch, so the ratio flatters core a little. Core takes about a third of a second a message,
  so it runs on the first ``--core-max`` messages (default 1000) and its rate is taken from those.

It prints figures and asserts nothing. What it creates in the site is deleted at the end of each step;
run it on a test site all the same.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_USER = "mhbench"
BENCH_ADDRESS = "support@bench.test"
CORE_ADDRESS = "core@bench.test"

_MESSAGE_ID_HEADER = re.compile(rb"^message-id:", re.IGNORECASE)


def corpus_dir() -> Path:
	return Path(os.environ.get("MH_CORPUS_DIR") or REPO_ROOT.parent / "shared" / "corpus")


def with_message_id(raw: bytes, message_id: str) -> bytes:
	"""``raw`` with its Message-ID header (and its folded lines) replaced by ``message_id``."""
	cut = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=len(raw))
	head, body = raw[:cut], raw[cut:]
	lines, skipping = [], False
	for line in head.splitlines(keepends=True):
		if skipping and line[:1] in (b" ", b"\t"):
			continue
		skipping = bool(_MESSAGE_ID_HEADER.match(line))
		if not skipping:
			lines.append(line)
	return f"Message-ID: <{message_id}>\r\n".encode() + b"".join(lines) + body


def replicated_corpus(n: int) -> list[bytes]:
	"""N distinct messages: the corpus, round after round, each copy with its own Message-ID."""
	originals = [p.read_bytes() for p in sorted(corpus_dir().glob("*.eml"))]
	if not originals:
		raise SystemExit(f"no corpus at {corpus_dir()} (set MH_CORPUS_DIR)")
	return [with_message_id(originals[i % len(originals)], f"bench-{n}-{i}@bench.test") for i in range(n)]


def peak_rss_mb() -> float:
	"""This process's peak resident memory. ``ru_maxrss`` would count the parent's memory too, which a
	child holds between fork and exec; the kernel's VmHWM starts again at exec."""
	try:
		with open("/proc/self/status") as status:
			for line in status:
				if line.startswith("VmHWM:"):
					return int(line.split()[1]) / 1024
	except OSError:
		pass
	return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the steps, each run in a child process with frappe --------------------------------------------


def connect(site: str, sites_path: str):
	import frappe

	os.chdir(sites_path)
	frappe.init(site=site, sites_path=sites_path)
	frappe.connect()
	return frappe


def statements() -> int:
	"""Statements this connection has sent to MariaDB so far (the status query itself included)."""
	import frappe

	return int(frappe.db.sql("SHOW SESSION STATUS LIKE 'Questions'")[0][1])


def step_parse(args) -> dict:
	connect(args.site, args.sites_path)
	from frappe.email.receive import Email

	from machhelpdesk.engine.message import parse_message

	messages = replicated_corpus(args.n)
	result = {}
	for name, parse in (("ours", parse_message), ("core", Email)):
		failed = 0
		started = time.perf_counter()
		for raw in messages:
			try:
				parse(raw)
			except Exception:
				failed += 1
		result[name] = {"seconds": time.perf_counter() - started, "failed": failed}
	result["peak_rss_mb"] = peak_rss_mb()
	return result


def step_ours(args) -> dict:
	frappe = connect(args.site, args.sites_path)
	from machhelpdesk.intake import pull_account
	from machhelpdesk.tests.factories import reset_intake_data

	reset_intake_data()
	saved = {
		key: frappe.db.get_single_value("MH Settings", key)
		for key in ("require_registration", "auto_create_accounts")
	}
	# Tickets for everyone, no accounts made: the path every message of a known sender takes.
	frappe.db.set_single_value("MH Settings", {"require_registration": 0, "auto_create_accounts": 0})
	account = frappe.get_doc(
		{
			"doctype": "MH IMAP Account",
			"email_address": BENCH_ADDRESS,
			"imap_server": "127.0.0.1",
			"encryption": "None",
			"port": args.port,
			"username": BENCH_USER,
			"password": args.password,
			"folder": "INBOX",
			"move_parsed_email": 1,
			"move_to_folder": "Parsed",
			"default_department": frappe.get_all("MH Department", pluck="name", limit=1)[0],
		}
	).insert(ignore_permissions=True)
	frappe.db.commit()  # the account must exist for the pull, which commits on its own
	before = statements()
	started = time.perf_counter()
	summary = pull_account(account.name)
	seconds = time.perf_counter() - started
	queries = statements() - before
	result = {
		"seconds": seconds,
		"queries": queries,
		"summary": {k: v for k, v in summary.items() if isinstance(v, int) and v},
		"error": summary["error"],
		"peak_rss_mb": peak_rss_mb(),
	}
	reset_intake_data()
	frappe.db.set_single_value("MH Settings", saved)
	frappe.db.commit()  # put the site's settings back
	return result


def step_core(args) -> dict:
	frappe = connect(args.site, args.sites_path)
	from frappe.email.receive import InboundMail

	messages = replicated_corpus(args.n)[: args.core_max]
	if frappe.db.exists("Email Account", {"email_id": CORE_ADDRESS}):
		email_account = frappe.get_doc("Email Account", {"email_id": CORE_ADDRESS})
	else:
		email_account = frappe.get_doc(
			{
				"doctype": "Email Account",
				"email_account_name": "MH benchmark (core)",
				"email_id": CORE_ADDRESS,
				"enable_incoming": 0,
				"enable_outgoing": 0,
				"use_imap": 1,
				"awaiting_password": 1,
			}
		).insert(ignore_permissions=True)
		frappe.db.commit()  # the account the core path files its Communications under
	before = statements()
	failed = 0
	started = time.perf_counter()
	for uid, raw in enumerate(messages, start=1):
		try:
			InboundMail(raw, email_account, uid=uid).process()
			frappe.db.commit()  # as EmailAccount.receive does, per message
		except Exception:
			frappe.db.rollback()
			failed += 1
	seconds = time.perf_counter() - started
	queries = statements() - before
	created = frappe.get_all("Communication", filters={"email_account": email_account.name}, pluck="name")
	result = {
		"seconds": seconds,
		"queries": queries,
		"messages": len(messages),
		"communications": len(created),
		"failed": failed,
		"peak_rss_mb": peak_rss_mb(),
	}
	for name in created:
		for file in frappe.get_all(
			"File", filters={"attached_to_doctype": "Communication", "attached_to_name": name}, pluck="name"
		):
			frappe.delete_doc("File", file, force=True, ignore_permissions=True)
	if created:
		frappe.db.delete("Communication", {"name": ("in", created)})
		frappe.db.delete("Communication Link", {"parent": ("in", created)})
	frappe.delete_doc("Email Account", email_account.name, force=True, ignore_permissions=True)
	frappe.db.commit()  # leave the site as it was
	return result


STEPS = {"parse": step_parse, "ours": step_ours, "core": step_core}


# --- the driver ----------------------------------------------------------------------------------------


def run_step(step: str, args, n: int, port: int = 0, password: str = "") -> dict:
	command = [
		sys.executable, __file__, "--step", step, "--site", args.site, "--bench", args.bench,
		"--n", str(n), "--port", str(port), "--password", password, "--core-max", str(args.core_max),
	]  # fmt: skip
	done = subprocess.run(command, capture_output=True, text=True, check=False)
	if done.returncode:
		raise SystemExit(f"step {step} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
	return json.loads(done.stdout.strip().splitlines()[-1])


def fill_mailbox(dovecot, user: str, messages: list[bytes]) -> float:
	started = time.perf_counter()
	with dovecot.client(user) as imap:
		for raw in messages:
			imap.append("INBOX", raw)
	return time.perf_counter() - started


def main() -> None:
	parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
	parser.add_argument("--site", default=os.environ.get("MH_SITE", "test_site"))
	parser.add_argument(
		"--bench", default=os.environ.get("FRAPPE_BENCH", os.path.expanduser("~/frappe-bench"))
	)
	parser.add_argument("--n", type=int, action="append", help="messages per run (repeatable)")
	parser.add_argument(
		"--core-max",
		type=int,
		default=1000,
		help="messages core processes at most (its rate is taken from them)",
	)
	parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
	parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
	parser.add_argument("--password", default="", help=argparse.SUPPRESS)
	args = parser.parse_args()
	args.sites_path = os.path.join(os.path.abspath(args.bench), "sites")
	sizes = args.n or [1000]

	if args.step:
		args.n = sizes[0]
		print(json.dumps(STEPS[args.step](args)))
		return

	sys.path.insert(0, str(REPO_ROOT))
	from machhelpdesk.testing.dovecot import Dovecot

	rows = []
	for n in sizes:
		messages = replicated_corpus(n)
		with Dovecot(tls=False) as dovecot:
			password = "bench-secret"
			dovecot.add_user(BENCH_USER, password)
			filled = fill_mailbox(dovecot, BENCH_USER, messages)
			print(f"N={n}: mailbox filled in {filled:.1f} s ({sum(map(len, messages)) / 2**20:.1f} MB)")
			parse = run_step("parse", args, n)
			ours = run_step("ours", args, n, dovecot.port, password)
			left = len(dovecot.folder_uids(BENCH_USER))
		core = run_step("core", args, n)
		rows.append((n, parse, ours, core, left))
		print_run(n, parse, ours, core, left)

	if len(rows) > 1:
		print("\nmemory, peak RSS of the intake process:")
		for n, _parse, ours, _core, _left in rows:
			print(f"  N={n:>6}: {ours['peak_rss_mb']:.0f} MB")


def print_run(n: int, parse: dict, ours: dict, core: dict, left: int) -> None:
	ours_rate = n / ours["seconds"]
	core_rate = (core["messages"] - core["failed"]) / core["seconds"]
	ours_parse = n / parse["ours"]["seconds"]
	core_parse = n / parse["core"]["seconds"]
	summary = ours["summary"]
	new_tickets = summary.get("tickets", 0)
	print(f"\nN = {n}")
	print(f"  ours, end to end:   {ours_rate:8.1f} messages/s  ({ours['seconds']:.1f} s)  {summary}")
	if ours["error"]:
		print(f"  ours, pull error:   {ours['error']}")
	print(f"  left in INBOX:      {left} (failed messages stay)")
	print(
		f"  core InboundMail:   {core_rate:8.1f} messages/s  ({core['seconds']:.1f} s for the first "
		f"{core['messages']}: {core['communications']} Communications, {core['failed']} failed)"
	)
	print(f"  ratio end to end:   {ours_rate / core_rate:8.2f}x core (core without its IMAP fetch)")
	print(
		f"  parse only:         ours {ours_parse:8.1f}/s ({parse['ours']['failed']} failed), "
		f"core {core_parse:8.1f}/s ({parse['core']['failed']} failed), ratio {ours_parse / core_parse:.2f}x"
	)
	print(
		f"  SQL statements:     ours {ours['queries'] / n:.1f} per message"
		f" ({ours['queries'] / max(new_tickets, 1):.1f} per new ticket, all messages counted),"
		f" core {core['queries'] / core['messages']:.1f} per message"
	)
	print(
		f"  peak RSS:           ours {ours['peak_rss_mb']:.0f} MB, core {core['peak_rss_mb']:.0f} MB,"
		f" parse step {parse['peak_rss_mb']:.0f} MB"
	)


if __name__ == "__main__":
	main()
