"""The engine package must stay framework-free: importing all of it must not import frappe."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

GUARD = """
import importlib, pkgutil, sys
import machhelpdesk.engine as engine
names = [info.name for info in pkgutil.walk_packages(engine.__path__, engine.__name__ + ".")]
for name in names:
	importlib.import_module(name)
print(len(names))
print("frappe" in sys.modules)
"""


def test_engine_modules_import_without_frappe() -> None:
	result = subprocess.run(
		[sys.executable, "-c", GUARD], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
	)
	assert result.returncode == 0, result.stderr
	count, frappe_loaded = result.stdout.split()
	assert int(count) >= 3  # message, loops, threads at least
	assert frappe_loaded == "False"
