"""Benchmark: parse_message over the corpus, the fast MIME splitter against the stdlib tree parser.

Run from the repository root: ``python benchmarks/parse.py`` (``--rounds N``, ``--no-memory``). Prints

- messages/s and MB/s of ``parse_message`` over every corpus message (``MH_CORPUS_DIR``, default
  ``<repo>/../shared/corpus``), best and median of the rounds, for the current path ("fast": the splitter,
  the stdlib for what it leaves) and the old one ("stdlib": ``_parse_message_stdlib``, the tree always
  from the stdlib feed parser);
- with the bench's Python (``~/frappe-bench/env/bin/python benchmarks/parse.py``), the same for Frappe
  core's parser, ``frappe.email.receive.Email(raw)``, connected to a site (``--site``, default $MH_SITE or
  test_site; ``--bench``, default $FRAPPE_BENCH or ~/frappe-bench) as benchmarks/intake.py does: without
  one, core skips part of its work and looks faster than it is;
- time, peak of traced memory and maximum RSS of parsing the hostile message with 15 M short base64
  lines (``benchmarks/hostile.py``, "base64, 15 M lines, 1 MB limit"), each path in a fresh subprocess.

Rates are CPU time of this process, so that other processes on the machine slow them less than the wall
clock; the rounds interleave the parsers. The regular-expression cache is emptied before each pass: the
stdlib parser compiles one expression per boundary, and every real message has a boundary of its own, so
a cache warmed by the previous pass (or by the other parser) would flatter the stdlib paths and core.

Asserts nothing; the equivalence of both paths is tests/test_parser_equivalence.py's job.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

SCRIPT = Path(__file__).resolve()  # connecting to a site changes the working directory
REPO_ROOT = SCRIPT.parent.parent
if str(REPO_ROOT) not in sys.path:
	sys.path.insert(0, str(REPO_ROOT))

from benchmarks import hostile  # noqa: E402
from machhelpdesk.engine.message import _parse_message_stdlib, parse_message  # noqa: E402

MB = 1024 * 1024
HOSTILE_CASE = "base64, 15 M lines, 1 MB limit"
PATHS: dict[str, Callable] = {"fast": parse_message, "stdlib": _parse_message_stdlib}


def corpus_dir() -> Path:
	return Path(os.environ.get("MH_CORPUS_DIR") or REPO_ROOT.parent / "shared" / "corpus")


def core_parser(site: str, bench: str) -> tuple[Callable | None, str]:
	"""Frappe core's parser, connected to `site`, and a note; None when frappe or the site is missing."""
	try:
		import frappe  # noqa: F401
	except ImportError:
		return None, "frappe core: not importable here (run with the bench's Python to compare)"
	from benchmarks.intake import connect

	try:
		connect(site, os.path.join(os.path.abspath(bench), "sites"))
	except Exception as exc:
		return None, f"frappe core: site {site!r} not reachable ({type(exc).__name__}: {str(exc)[:100]})"
	from frappe.email.receive import Email

	return Email, f"frappe core: connected to site {site!r}"


def parse_all(parse: Callable, messages: list[bytes]) -> float:
	"""CPU seconds to parse every message once; exceptions count as done (core raises on some)."""
	re.purge()
	started = time.process_time()
	for raw in messages:
		try:
			parse(raw)
		except Exception:  # noqa: S112 - measured as done, as benchmarks/intake.py does
			continue
	return time.process_time() - started


def corpus_rates(rounds: int, site: str, bench: str) -> None:
	files = sorted(corpus_dir().glob("*.eml"))
	if not files:
		raise SystemExit(f"no corpus at {corpus_dir()} (set MH_CORPUS_DIR)")
	messages = [path.read_bytes() for path in files]
	megabytes = sum(map(len, messages)) / MB
	parsers = dict(PATHS)
	core, core_note = core_parser(site, bench)
	if core is not None:
		parsers["frappe core"] = core
	for parse in parsers.values():
		parse_all(parse, messages[:20])  # warm up imports and caches
	seconds: dict[str, list[float]] = {name: [] for name in parsers}
	for _round in range(rounds):
		for name, parse in parsers.items():
			gc.collect()
			seconds[name].append(parse_all(parse, messages))
	print(f"corpus: {len(messages)} messages, {megabytes:.1f} MB, {rounds} rounds, CPU time")
	print(core_note)
	print(f"{'parser':12} {'msg/s best':>11} {'msg/s median':>13} {'MB/s best':>10} {'MB/s median':>12}")
	rates = {}
	for name, times in seconds.items():
		best, median = min(times), statistics.median(times)
		rates[name] = (len(messages) / best, len(messages) / median)
		print(
			f"{name:12} {len(messages) / best:11.0f} {len(messages) / median:13.0f}"
			f" {megabytes / best:10.2f} {megabytes / median:12.2f}"
		)
	fast, old = rates["fast"], rates["stdlib"]
	print(f"fast / stdlib: {fast[0] / old[0]:.2f}x best, {fast[1] / old[1]:.2f}x median")
	if "frappe core" in rates:
		core_rate = rates["frappe core"]
		print(f"fast / frappe core: {fast[0] / core_rate[0]:.2f}x best, {fast[1] / core_rate[1]:.2f}x median")
		print(f"stdlib / frappe core: {old[0] / core_rate[0]:.2f}x best, {old[1] / core_rate[1]:.2f}x median")


def peak_rss_mb() -> float:
	"""This process's peak RSS: VmHWM (reset at exec); ru_maxrss where there is no /proc, which on Linux
	also counts the parent's RSS at the fork."""
	try:
		status = Path("/proc/self/status").read_text()
	except OSError:
		return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
	for line in status.splitlines():
		if line.startswith("VmHWM:"):
			return int(line.split()[1]) / 1024
	return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hostile_child(path: str, message_file: str) -> dict[str, float]:
	"""Parse the hostile message once for the time and RSS, once more under tracemalloc for the peak."""
	raw = Path(message_file).read_bytes()
	_builder, options = hostile.CASES[HOSTILE_CASE]
	parse = PATHS[path]
	gc.collect()
	rss_before = peak_rss_mb()
	started = time.perf_counter()
	parse(raw, **options)
	seconds = time.perf_counter() - started
	max_rss = peak_rss_mb()
	gc.collect()
	tracemalloc.start()
	parse(raw, **options)
	_current, peak = tracemalloc.get_traced_memory()
	tracemalloc.stop()
	return {
		"input_mb": len(raw) / MB,
		"seconds": seconds,
		"peak_mb": peak / MB,
		"rss_before_mb": rss_before,
		"max_rss_mb": max_rss,
	}


def hostile_memory() -> None:
	"""Build the hostile message once (the builder's temporaries would mask the RSS), parse it in children."""
	builder, _options = hostile.CASES[HOSTILE_CASE]
	print(f"\nhostile case {HOSTILE_CASE!r}, each path in its own process:")
	print(f"{'path':8} {'input MB':>9} {'time s':>8} {'peak MB':>9} {'RSS before MB':>14} {'max RSS MB':>11}")
	with tempfile.TemporaryDirectory() as folder:
		message_file = Path(folder) / "hostile.eml"
		message_file.write_bytes(builder())
		for path in PATHS:
			command = [sys.executable, str(SCRIPT), "--hostile-child", path, str(message_file)]
			result = subprocess.run(command, capture_output=True, text=True, check=False)
			if result.returncode != 0:
				print(f"{path:8} failed: {result.stderr.strip().splitlines()[-1:]}")
				continue
			row = json.loads(result.stdout)
			print(
				f"{path:8} {row['input_mb']:9.1f} {row['seconds']:8.2f} {row['peak_mb']:9.1f}"
				f" {row['rss_before_mb']:14.1f} {row['max_rss_mb']:11.1f}",
				flush=True,
			)


def main() -> int:
	parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
	parser.add_argument("--rounds", type=int, default=5, help="rounds over the corpus (default 5)")
	parser.add_argument("--no-memory", action="store_true", help="skip the hostile memory case")
	parser.add_argument("--site", default=os.environ.get("MH_SITE", "test_site"), help="site for core")
	parser.add_argument(
		"--bench", default=os.environ.get("FRAPPE_BENCH", os.path.expanduser("~/frappe-bench"))
	)
	parser.add_argument("--hostile-child", nargs=2, metavar=("PATH", "FILE"), help=argparse.SUPPRESS)
	args = parser.parse_args()
	if args.hostile_child:
		print(json.dumps(hostile_child(*args.hostile_child)))
		return 0
	corpus_rates(args.rounds, args.site, args.bench)
	if not args.no_memory:
		hostile_memory()
	return 0


if __name__ == "__main__":
	sys.exit(main())
