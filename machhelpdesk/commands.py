"""Bench commands: `bench --site SITE mh-fetch [--account NAME] [--dry-run]`."""

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


commands = [mh_fetch]
