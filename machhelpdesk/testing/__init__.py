"""Real-server helpers shared by both test tiers (Dovecot, SMTP sink, web server).

Nothing here imports frappe (except ``wsgi.py``, which only gunicorn loads), so plain pytest and
``bench run-tests`` use the same code.
"""
