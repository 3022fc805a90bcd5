"""Bench commands: `bench --site SITE mh-fetch [--account NAME] [--dry-run]`."""

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


commands = [mh_fetch, mh_rules_test]
