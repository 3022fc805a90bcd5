"""Bench commands: `bench --site SITE mh-fetch [--account NAME] [--dry-run]`, `mh-rules-test`, `mh-idle`."""

from pathlib import Path

import click

from frappe.commands import get_site, pass_context


@click.command("mh-fetch")
@click.option("--account", "accounts", multiple=True, help="Pull only this IMAP account (repeatable).")
@click.option(
	"--dry-run", is_flag=True, help="Read and decide, but change nothing on the server or in the database."
)
@pass_context
def mh_fetch(context, accounts, dry_run):
	"""Pull mail from the helpdesk's IMAP accounts now, with progress and a summary."""
	import frappe

	from machhelpdesk.intake import pull_account

	site = get_site(context)
	frappe.init(site=site)
	frappe.connect()
	failed = False
	try:
		names = list(accounts) or frappe.get_all("MH IMAP Account", filters={"enabled": 1}, pluck="name")
		if not names:
			click.secho("No enabled IMAP account. Add one under Help Desk > Email Parser.", fg="yellow")
		for name in names:
			if not frappe.db.exists("MH IMAP Account", name):
				click.secho(f"No IMAP account named {name}.", fg="red")
				failed = True
				continue
			click.echo(f"Pulling {name}{' (dry run)' if dry_run else ''}...")
			summary = pull_account(name, dry_run=dry_run, progress=lambda message: click.echo(f"  {message}"))
			if dry_run:
				for plan in summary.get("plans", []):
					click.echo(
						f"  UID {plan['uid']}: {plan['state']} {plan['reason'] or ''} {plan['subject'][:60]!r}"
					)
					if plan["rules"]:
						click.echo("    " + plan["rules"].replace("\n", "\n    "))
			click.secho(summary["text"], fg="red" if summary["error"] or summary["failed"] else "green")
			failed = failed or bool(summary["error"])
	finally:
		frappe.destroy()
	if failed:
		raise SystemExit(1)


@click.command("mh-rules-test")
@click.option("--account", required=True, help="The IMAP account whose rules to run.")
@click.option("--last", type=int, default=0, help="Run against the last N ledger messages (raw copies kept).")
@click.option(
	"--file", "eml", type=click.Path(exists=True, dir_okay=False), help="Run against one .eml file."
)
@click.option(
	"--rule", "rules", multiple=True, help="Only these rules (names), even if disabled (repeatable)."
)
@pass_context
def mh_rules_test(context, account, last, eml, rules):
	"""Dry-run an account's processing rules on past or given mail. Changes nothing."""
	import frappe

	from machhelpdesk.rule_testing import dry_run

	if bool(last) == bool(eml):
		raise click.UsageError("Give exactly one of --last N or --file FILE.eml")
	frappe.init(site=get_site(context))
	frappe.connect()
	try:
		raw = Path(eml).read_bytes() if eml else None
		results = dry_run(account, rule_names=list(rules) or None, last=last, raw=raw)
		for result in results:
			click.echo(f"{result['source']}: {result['from']} {result['subject'][:70]!r}")
			click.echo(f"  -> {result['outcome']} {result['reason'] or ''}".rstrip())
			for key in ("department", "assign_to", "status", "priority"):
				if result.get(key):
					click.echo(f"     {key.replace('_', ' ')}: {result[key]}")
			for trace in result["trace"]:
				state = trace["skipped"] or ("matched" if trace["matched"] else "no match")
				click.echo(f"     rule {trace['rule']!r}: {state}")
				for condition in trace["conditions"]:
					mark = (
						"timed out" if condition["timed_out"] else ("yes" if condition["matched"] else "no")
					)
					click.echo(
						f"       {condition['field']} {condition['operator']} {condition['value']!r}: {mark}"
					)
		click.secho(f"{len(results)} message(s) tested; nothing was changed.", fg="green")
	finally:
		frappe.destroy()


@click.command("mh-idle")
@click.option(
	"--site",
	"sites",
	multiple=True,
	help="Watch only this site (repeatable). Default: every site of the bench that has machhelpdesk.",
)
@click.option(
	"--renew-seconds",
	type=float,
	default=None,
	help="Re-issue IDLE this often (default 1500 s; RFC 2177 asks for less than 29 minutes).",
)
@click.option(
	"--poll-seconds",
	type=float,
	default=None,
	help="Ask servers without IDLE for new mail this often (default 60 s).",
)
@click.option(
	"--refresh-seconds",
	type=float,
	default=None,
	help="Re-read the accounts this often, to notice added, changed and disabled ones (default 30 s).",
)
@click.pass_context
def mh_idle(ctx, sites, renew_seconds, poll_seconds, refresh_seconds):
	"""Watch the helpdesk's IMAP accounts with IMAP IDLE and queue a pull the moment mail arrives.

	One long-running process for the whole bench, next to the workers (see the README). It stops on
	SIGTERM or Ctrl-C. `bench --site SITE mh-idle` watches that site only.
	"""
	import logging
	import os

	from machhelpdesk.idle import WatchOptions, run_watcher

	chosen = list(sites)
	parent = ctx.parent
	while not chosen and parent is not None:
		if parent.params.get("site"):
			chosen = [] if parent.params["site"] == "all" else [parent.params["site"]]
			break
		parent = parent.parent
	defaults = WatchOptions()
	options = WatchOptions(
		renew_seconds=renew_seconds or defaults.renew_seconds,
		poll_seconds=poll_seconds or defaults.poll_seconds,
		refresh_seconds=refresh_seconds or defaults.refresh_seconds,
	)
	for value in (options.renew_seconds, options.poll_seconds, options.refresh_seconds):
		if value <= 0:
			raise click.UsageError("The intervals must be positive numbers of seconds.")
	logging.basicConfig(
		level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s", force=True
	)
	run_watcher(chosen or None, os.getcwd(), options)


commands = [mh_fetch, mh_rules_test, mh_idle]
