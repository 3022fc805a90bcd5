"""Scheduler entry points: each only enqueues or delegates to intake.py or challenge_response.py."""

import frappe

PULL_TIMEOUT = 60 * 60  # a long first sync of a big folder may take a while


def enqueue_pulls() -> None:
	"""Every 5 minutes: one deduplicated pull job per enabled account, on the long queue."""
	for account in frappe.get_all("MH IMAP Account", filters={"enabled": 1}, pluck="name"):
		enqueue_pull(account)


def enqueue_pull(account: str) -> None:
	frappe.enqueue(
		"machhelpdesk.intake.pull_account",
		queue="long",
		timeout=PULL_TIMEOUT,
		job_id=f"machhelpdesk:pull:{frappe.local.site}:{account}",
		deduplicate=True,
		account=account,
	)


def purge_raw_copies() -> None:
	from machhelpdesk.intake import purge_raw_copies as purge

	purge()


def expire_held_mail() -> None:
	from machhelpdesk.challenge_response import expire_held_mail as expire

	expire()


def scrub_sent_challenge_mail() -> None:
	from machhelpdesk.challenge_response import scrub_sent_challenge_mail as scrub

	scrub()


def release_mail_of_confirmed_senders() -> None:
	from machhelpdesk.challenge_response import release_mail_of_confirmed_senders as release

	release()
