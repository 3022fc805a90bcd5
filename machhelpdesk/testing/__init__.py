"""Real-server helpers shared by both test tiers (Dovecot, SMTP sink, web server).

Nothing here imports frappe, so plain pytest and ``bench run-tests`` use the same code.
"""
