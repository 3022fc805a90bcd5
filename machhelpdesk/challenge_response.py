"""Challenge-response for unknown senders: hold their mail until they confirm (being built)."""


def hold_message(account, row, parsed, plan) -> None:
	"""Called by intake, inside its transaction, for mail from an unknown sender that must be held.

	The row is already marked Held with its raw copy; sending the challenge comes next.
	"""
