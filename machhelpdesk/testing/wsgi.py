"""WSGI entry point for :class:`machhelpdesk.testing.webserver.FrappeWebServer` (loaded by gunicorn only).

Serves one site (``MH_WSGI_SITE``) whatever the Host header, with /assets and /files, like
``bench serve --site`` does in development.
"""

import os

import frappe.app

frappe.app._site = os.environ["MH_WSGI_SITE"]
frappe.app._sites_path = os.environ.get("MH_WSGI_SITES_PATH", ".")
application = frappe.app.application_with_statics()
