"""Benchmark: how long from a mail reaching the mailbox to its ticket, with `bench mh-idle` and a `bench worker`.

Run with the bench's Python, from anywhere (``--bench`` defaults to $FRAPPE_BENCH or ~/frappe-bench):

	~/frappe-bench/env/bin/python benchmarks/idle_latency.py --site test_site --n 50

It starts a real Dovecot on 127.0.0.1, a Redis job queue of its own, ``bench worker --queue long`` and
``bench mh-idle --site SITE`` as subprocesses, creates one IMAP account, waits until the account is
watched with IDLE, and then:

- ``one by one``: APPENDs N mails, one at a time, each when the previous one is a ticket and its pull job
  has ended; the latency is from the APPEND's answer to the ticket being committed (polled every 10 ms);
- ``burst``: APPENDs N mails back to back and reports how long until all of them are tickets.

It prints figures and asserts nothing. It deletes the site's intake data (tickets, ledger, accounts) at
the start and the end: run it on a test site.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def percentile(values: list[float], fraction: float) -> float:
	"""The `fraction` percentile (nearest rank) of `values`."""
	ordered = sorted(values)
	rank = max(1, round(fraction * len(ordered)))
	return ordered[min(rank, len(ordered)) - 1]


def job_phases(worker_log: str, appended_at: list[float]) -> tuple[list[float], list[float]]:
	"""For each APPEND, the wait until the worker started the next pull job and how long that job ran,
	from the timestamps of the worker's log lines ("... execute_job(..." and "Job OK")."""
	starts, ends = [], []
	for line in worker_log.splitlines():
		found = _LOG_TIME.match(line)
		if not found:
			continue
		when = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
		if "execute_job(" in line and "pull_account" in line:
			starts.append(when)
		elif "Job OK" in line:
			ends.append(when)
	waits, runs = [], []
	for appended in appended_at:
		start = next((t for t in starts if t >= appended), None)
		end = next((t for t in ends if start is not None and t >= start), None)
		if start is not None and end is not None:
			waits.append(start - appended)
			runs.append(end - start)
	return waits, runs


def main() -> None:
	parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
	parser.add_argument("--site", default=os.environ.get("MH_SITE", "test_site"))
	parser.add_argument(
		"--bench", default=os.environ.get("FRAPPE_BENCH", os.path.expanduser("~/frappe-bench"))
	)
	parser.add_argument("--n", type=int, default=50, help="mails per run (default 50)")
	parser.add_argument("--timeout", type=float, default=60.0, help="give up on a mail after this long")
	args = parser.parse_args()
	sites_path = os.path.join(os.path.abspath(args.bench), "sites")

	sys.path.insert(0, str(REPO_ROOT))
	os.chdir(sites_path)
	import frappe

	frappe.init(site=args.site, sites_path=sites_path)
	frappe.connect()

	from machhelpdesk.idle import pull_job_state
	from machhelpdesk.testing.dovecot import Dovecot
	from machhelpdesk.testing.processes import BenchProcess, RedisQueue
	from machhelpdesk.tests.factories import job_queue, make_account, make_message, reset_intake_data

	def fresh(fn):
		frappe.db.rollback()  # a new snapshot: see what the worker committed
		return fn()

	def wait(fn, timeout: float, what: str):
		deadline = time.monotonic() + timeout
		while not fresh(fn):
			if time.monotonic() > deadline:
				raise SystemExit(f"timed out waiting for {what}\n--- mh-idle ---\n{watcher.log_tail()}")
			time.sleep(0.01)

	def job_idle() -> bool:
		with job_queue(redis.url):
			return pull_job_state(account.name)[0] not in ("queued", "started")

	def tickets(prefix: str) -> int:
		return frappe.db.count("MH Ticket", {"subject": ("like", prefix + "%")})

	reset_intake_data()
	saved = frappe.db.get_single_value("MH Settings", "require_registration")
	frappe.db.set_single_value("MH Settings", "require_registration", 0)
	frappe.db.commit()  # the worker and the watcher are other processes

	with Dovecot() as dovecot, RedisQueue() as redis:
		user, password = dovecot.new_user("idle-latency")
		account = make_account(dovecot, user, password)
		worker = BenchProcess(sites_path, ["worker", "--queue", "long"], env=redis.env, name="worker")
		watcher = BenchProcess(sites_path, ["mh-idle", "--site", args.site], env=redis.env, name="mh-idle")
		with worker, watcher:
			started = time.monotonic()
			wait(
				lambda: frappe.db.get_value("MH IMAP Account", account.name, "watch_mode") == "Push",
				120,
				"push",
			)
			wait(
				lambda: frappe.db.get_value("MH IMAP Account", account.name, "last_pulled_on"),
				120,
				"first pull",
			)
			wait(job_idle, 120, "the first pull to end")
			print(f"watching with IDLE after {time.monotonic() - started:.1f} s (process start included)")

			latencies = []
			appended_at = []  # wall clock, to line up with the worker's log
			for number in range(args.n):
				subject = f"Latency {number:03d}"
				dovecot.append(user, make_message(subject=subject))
				sent = time.monotonic()
				appended_at.append(time.time())
				wait(
					lambda subject=subject: frappe.db.exists("MH Ticket", {"subject": subject}),
					args.timeout,
					subject,
				)
				latencies.append(time.monotonic() - sent)
				wait(job_idle, args.timeout, "the pull to end")

			sent = time.monotonic()
			for number in range(args.n):
				dovecot.append(user, make_message(subject=f"Burst {number:03d}"))
			appended = time.monotonic() - sent
			wait(lambda: tickets("Burst ") == args.n, max(args.timeout, args.n * 2.0), "the burst")
			burst = time.monotonic() - sent
			wait(job_idle, args.timeout, "the last pull to end")
			worker_log = worker.log_text()
			jobs = worker_log.count("Job OK")

	reset_intake_data()
	frappe.db.set_single_value("MH Settings", "require_registration", saved)
	frappe.db.commit()  # put the site's settings back

	print(f"\nIMAP IDLE push, {args.n} mails one by one (APPEND answered -> ticket committed):")
	print(f"  median {statistics.median(latencies):.2f} s")
	print(f"  p95    {percentile(latencies, 0.95):.2f} s")
	print(
		f"  min    {min(latencies):.2f} s, max {max(latencies):.2f} s, mean {statistics.mean(latencies):.2f} s"
	)
	waits, runs = job_phases(worker_log, appended_at)
	if waits:
		print(
			f"  of which: APPEND -> pull job started (IDLE news, queueing, the worker's pick-up) median "
			f"{statistics.median(waits):.2f} s; job start -> job end median {statistics.median(runs):.2f} s"
		)
	print(f"\nBurst of {args.n} mails appended in {appended:.2f} s: all tickets after {burst:.2f} s")
	print(f"Pull jobs run by the worker in all: {jobs}")
	print("\nFor comparison, polling every 5 minutes waits 150 s on average and up to 300 s.")


if __name__ == "__main__":
	main()
