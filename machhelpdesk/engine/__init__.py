"""Framework-free core of MachHelpdesk.

Every module in this package takes bytes and plain data and returns plain data.
None of them imports frappe: a guard test checks it.
"""
