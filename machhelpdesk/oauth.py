"""OAuth2 access tokens for IMAP accounts, from Frappe's own Connected App and Token Cache.

An account with *Authentication* = OAuth2 names a Connected App (the provider: Microsoft 365, Google
Workspace, or any OAuth2 server) and a Connected User, who authorizes once in the desk. Frappe keeps the
tokens in that user's Token Cache. Before each login the access token is read from there and, when it has
expired (or expires within a minute), refreshed with the refresh token, under a lock so that the watcher
and a pull job do not both spend the same refresh token.

When the provider refuses to refresh (the grant was revoked, the password changed, consent withdrawn), or
the mail server refuses a token it should accept, pulling is switched off for the account with a plain
message on its form and a notification to managers: only a person can authorize again. Nothing retries in
a loop meanwhile.
"""

from __future__ import annotations

import hashlib

import frappe
from frappe import _
from frappe.utils import now_datetime

OAUTH2 = "OAuth2"
# Refresh a token this many seconds before it expires, so it does not expire in the middle of a login.
EXPIRY_MARGIN_SECONDS = 60
REFRESH_LOCK_SECONDS = 30


class OAuthTokenError(frappe.ValidationError):
	"""No usable access token. `permanent`: only authorizing again helps (else a later try may work)."""

	def __init__(self, message: str, permanent: bool = True):
		super().__init__(message)
		self.permanent = permanent


def access_token(account) -> str:
	"""A current access token for `account` (an MH IMAP Account using OAuth2), refreshed if needed."""
	app, cache = token_cache(account)
	if cache.get_expires_in() <= EXPIRY_MARGIN_SECONDS:
		cache = refresh_token(account, app, cache)
	return cache.get_password("access_token", raise_exception=False)


def token_cache(account):
	"""The Connected App and the Connected User's Token Cache; OAuthTokenError when not authorized yet."""
	if not account.connected_app or not account.connected_user:
		raise OAuthTokenError(
			_("{0} uses OAuth2 but names no Connected App and Connected User.").format(account.email_address)
		)
	app = frappe.get_doc("Connected App", account.connected_app)
	cache = app.get_token_cache(account.connected_user)
	if cache is None or not cache.get_password("access_token", raise_exception=False):
		raise OAuthTokenError(not_authorized_message(account))
	return app, cache


def refresh_token(account, app=None, cache=None, force: bool = False):
	"""Get a new access token with the refresh token; returns the updated Token Cache.

	Refreshes are serialised per app and user (a MariaDB named lock). A process that waited for the lock
	finds the token already refreshed and uses it, unless `force` (the server refused the current one).
	"""
	from oauthlib.oauth2.rfc6749.errors import OAuth2Error
	from requests.exceptions import RequestException

	if app is None or cache is None:
		app, cache = token_cache(account)
	lock = (
		"mh-oauth:"
		+ hashlib.sha1(  # noqa: S324 - a lock name, not a secret
			f"{frappe.local.site}:{app.name}:{account.connected_user}".encode()
		).hexdigest()
	)
	if frappe.db.sql("SELECT GET_LOCK(%s, %s)", (lock, REFRESH_LOCK_SECONDS))[0][0] != 1:
		raise OAuthTokenError(
			_("Another process is refreshing the OAuth2 token of {0}; try again shortly.").format(
				account.email_address
			),
			permanent=False,
		)
	try:
		previous = cache.get_password("access_token", raise_exception=False)
		# End this transaction's snapshot (MariaDB's REPEATABLE READ) to see a token refreshed meanwhile;
		# Frappe's Token Cache commits when it stores a token anyway.
		frappe.db.commit()  # see the note above: a fresh read of the token, nothing of ours is pending
		cache.reload()
		current = cache.get_password("access_token", raise_exception=False)
		if cache.get_expires_in() > EXPIRY_MARGIN_SECONDS and (not force or current != previous):
			return cache  # refreshed by someone else while we waited
		if not cache.get_password("refresh_token", raise_exception=False):
			raise OAuthTokenError(
				_(
					"The OAuth2 access token of {0} has expired and the provider gave no refresh token. {1}"
				).format(account.email_address, authorize_again_hint(account))
			)
		session = app.get_oauth2_session(account.connected_user)
		try:
			# As Frappe's ConnectedApp.get_active_token does, but telling a refusal from a network error.
			token = session.refresh_token(body=f"redirect_uri={app.redirect_uri}", token_url=app.token_uri)
		except OAuth2Error as e:
			raise OAuthTokenError(
				_("{0} refused to renew the OAuth2 token of {1} ({2}). {3}").format(
					app.provider_name or app.name,
					account.email_address,
					e.error or e.description or type(e).__name__,
					authorize_again_hint(account),
				)
			) from None
		except (RequestException, OSError, ValueError) as e:
			raise OAuthTokenError(
				_(
					"Could not reach {0} to renew the OAuth2 token of {1} ({2}). The next pull tries again."
				).format(app.provider_name or app.name, account.email_address, type(e).__name__),
				permanent=False,
			) from None
		cache.update_data(token)  # Frappe's Token Cache saves and commits the new token itself
		return cache
	finally:
		frappe.db.sql("SELECT RELEASE_LOCK(%s)", (lock,))


def renew_refused_token(account) -> bool:
	"""After the mail server refused the token: get a new one (OAuthTokenError when the provider says no)."""
	if account.auth_method != OAUTH2:
		return False
	try:
		refresh_token(account, force=True)
	except OAuthTokenError as e:
		raise OAuthTokenError(
			_("The mail server refused the OAuth2 access token of {0}. {1}").format(account.email_address, e),
			permanent=e.permanent,
		) from None
	return True


def not_authorized_message(account) -> str:
	return _("{0} uses OAuth2 but has not been authorized yet. {1}").format(
		account.email_address, authorize_again_hint(account)
	)


def authorize_again_hint(account) -> str:
	return _(
		"Open the IMAP account, log in to the desk as {0}, press Authorize OAuth2 and sign in at the provider; "
		"then enable the account again."
	).format(account.connected_user or _("the Connected User"))


def disable_for_token_failure(doc, error: Exception) -> None:
	"""Switch pulling off for an account whose OAuth2 token cannot be used, say why, and tell managers.

	A temporary failure (the provider could not be reached) is only recorded: the next pull tries again.
	"""
	from machhelpdesk.engine.imap import IMAPTokenError
	from machhelpdesk.intake import notify_managers  # intake imports this module

	frappe.db.rollback()
	permanent = isinstance(error, IMAPTokenError) or getattr(error, "permanent", True)
	if not permanent:
		frappe.db.set_value(
			"MH IMAP Account",
			doc.name,
			{"last_error": str(error)[:1000], "last_pulled_on": now_datetime()},
			update_modified=False,
		)
		frappe.db.commit()  # the error shows on the form; the job ends here
		return
	message = _("Pulling is off for this account: {0}").format(error)
	if isinstance(error, IMAPTokenError):
		message += " " + authorize_again_hint(doc)
	frappe.db.set_value(
		"MH IMAP Account",
		doc.name,
		{"enabled": 0, "last_error": message[:1000], "last_pulled_on": now_datetime(), "watch_mode": ""},
		update_modified=False,
	)
	notify_managers(
		doc,
		_("Email Parser: {0} needs OAuth2 authorization again; pulling is off").format(doc.email_address),
		message,
	)
	frappe.db.commit()  # the account is off and managers know, before the job ends
