"""Scheduler entry points: each only enqueues or delegates to intake.py or challenge_response.py."""

import frappe
from frappe import _

PULL_TIMEOUT = 60 * 60  # a long first sync of a big folder may take a while


def enqueue_pulls() -> None:
	"""Every 5 minutes: one deduplicated pull job per enabled account that needs one, on the long queue.

	When the job queue (Redis) cannot be reached, that is logged once, in plain words, and nothing
	else happens: the next run catches up, since a pull takes everything since the last one.
	"""
	from redis.exceptions import ConnectionError as RedisConnectionError
	from redis.exceptions import TimeoutError as RedisTimeoutError

	from machhelpdesk.idle import accounts_due_for_scheduled_pull

	# Accounts that bench mh-idle watches with IDLE get only the safety-net pull, every 30 minutes.
	accounts = accounts_due_for_scheduled_pull()
	try:
		for account in accounts:
			enqueue_pull(account)
	except (RedisConnectionError, RedisTimeoutError) as e:
		frappe.log_error(
			title=_("Email Parser: the job queue is unreachable, no mail was pulled this time"),
			message=_(
				"The scheduler could not queue the pulls of {0} account(s): {1}. Mail stays on the "
				"server; the next run, once Redis (redis_queue) answers again, takes everything since "
				"the last pull."
			).format(len(accounts), e),
		)


def enqueue_pull(account: str) -> None:
	frappe.enqueue(
		"machhelpdesk.intake.pull_account",
		queue="long",
		timeout=PULL_TIMEOUT,
		job_id=pull_job_id(account),
		deduplicate=True,
		account=account,
	)


def pull_job_id(account: str) -> str:
	"""One pull job per account: a second request while one is queued is dropped (deduplicated)."""
	return f"machhelpdesk:pull:{frappe.local.site}:{account}"


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


def close_waiting_tickets() -> None:
	from machhelpdesk.auto_close import close_waiting_tickets as close

	close()
