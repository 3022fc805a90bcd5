"""A real Dovecot IMAP server on 127.0.0.1 for tests, as a context manager.

Everything lives in one temporary directory: the config file (passed with ``-c``), base_dir, state dir, log,
a self-signed certificate, one passwd-file per user and their Maildirs. Nothing under /etc/dovecot is read or
changed, and several instances can run side by side.

	with Dovecot(users={"alice": "secret"}) as server:
		server.append("alice", raw_bytes)
		settings = IMAPSettings(server.host, server.ssl_port, "alice", "secret", ca_file=server.cert_path)

Notes on Dovecot 2.3 that shaped this helper:

- Failed logins are delayed (``auth_failure_delay``, plus the anvil auth penalty, which grows per failure).
  Both are off, so tests of wrong passwords stay fast; a failed login still takes about half a second,
  since Dovecot answers failures on a 500 ms timer.
- Dovecot refuses to access mail as uid 0. Run as root, the mail belongs to the unprivileged ``nobody`` user
  (userdb ``static`` with its uid and gid); run as anyone else, every process runs as that user, unchrooted.
- ``FETCH RFC822`` sets ``\\Seen``: the helpers here read with ``BODY.PEEK[]``.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from imapclient import IMAPClient

from machhelpdesk.testing.lifecycle import StartStop
from machhelpdesk.testing.ports import LOOPBACK, free_ports, wait_for_ports

DOVECOT_BINARY = "/usr/sbin/dovecot"
DOVEADM_BINARY = "/usr/bin/doveadm"
OPENSSL_BINARY = "openssl"

# Users tried, in order, to own the mail when the server runs as root.
ROOT_MAIL_OWNERS = ("nobody", "dovecot")

_APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]", re.IGNORECASE)
_FORBIDDEN_IN_PASSWD = re.compile(r"[:\n\r\x00]")
_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+@-]*")


class DovecotError(RuntimeError):
	"""Dovecot could not be set up, started or driven; the message carries the tail of its log."""


class Dovecot(StartStop):
	"""A throwaway Dovecot with one plain/STARTTLS listener (`port`) and one implicit-TLS listener (`ssl_port`)."""

	def __init__(
		self,
		users: dict[str, str] | None = None,
		*,
		host: str = LOOPBACK,
		cert_names: Iterable[str] = ("localhost", "127.0.0.1"),
		binary: str = DOVECOT_BINARY,
		doveadm: str = DOVEADM_BINARY,
		startup_timeout: float = 15.0,
		tls: bool = True,
		extra_config: str = "",
	) -> None:
		"""Prepare a server; nothing runs until `start()` (or `with`).

		`users` maps user names to passwords. `cert_names` are the DNS names and IP addresses written into the
		certificate's subjectAltName, so a test can make a certificate that does not match the host it dials.
		`tls=False` runs without TLS at all: no STARTTLS, no implicit-TLS listener (`ssl_port` stays 0).
		`extra_config` is appended to the generated dovecot.conf (later settings win).
		"""
		self.host = host
		self.port = 0
		self.ssl_port = 0
		self._users: dict[str, str] = {}
		for name, password in (users or {}).items():
			self._check_credentials(name, password)
			self._users[name] = password
		self._cert_names = tuple(cert_names)
		self._binary = binary
		self._doveadm = doveadm
		self._startup_timeout = startup_timeout
		self._tls = tls
		self._extra_config = extra_config
		self._serial = 0
		self._root: Path | None = None
		self._process: subprocess.Popen[bytes] | None = None
		self._mail_uid = os.getuid()
		self._mail_gid = os.getgid()

	# -- paths ---------------------------------------------------------------------------------

	@property
	def root(self) -> Path:
		"""The temporary directory holding everything of this instance."""
		if self._root is None:
			raise DovecotError("Dovecot has not been started")
		return self._root

	@property
	def config_path(self) -> str:
		"""The dovecot.conf passed with ``-c`` (also to doveadm)."""
		return str(self.root / "dovecot.conf")

	@property
	def cert_path(self) -> str:
		"""PEM file of the self-signed server certificate; load it as a trust anchor to verify the server."""
		return str(self.root / "tls" / "cert.pem")

	@property
	def key_path(self) -> str:
		"""PEM file of the certificate's private key."""
		return str(self.root / "tls" / "key.pem")

	@property
	def log_path(self) -> str:
		"""Dovecot's log file (errors, info and debug lines)."""
		return str(self.root / "dovecot.log")

	@property
	def passwd_dir(self) -> Path:
		"""The directory of passwd-files Dovecot authenticates against, one file per user."""
		return self.root / "passwd.d"

	def maildir(self, user: str) -> Path:
		"""The Maildir of `user` on disk."""
		return self.root / "home" / user / "Maildir"

	@property
	def users(self) -> dict[str, str]:
		"""A copy of the user -> password map."""
		return dict(self._users)

	@property
	def running(self) -> bool:
		"""True while the Dovecot master process is alive."""
		return self._process is not None and self._process.poll() is None

	# -- lifecycle -----------------------------------------------------------------------------

	def start(self) -> None:
		"""Write the config, make the certificate, start Dovecot and wait until both ports accept connections."""
		if self.running:
			return
		if not os.path.exists(self._binary):
			raise DovecotError(
				f"{self._binary} not found: install the Debian packages dovecot-core and dovecot-imapd"
			)
		self._root = Path(tempfile.mkdtemp(prefix="mh-dovecot-"))
		try:
			self._prepare()
			self._launch()
		except BaseException:
			self.stop()
			raise

	def stop(self) -> None:
		"""Stop Dovecot (its whole process group) and remove the temporary directory. Safe to call twice."""
		process, self._process = self._process, None
		if process is not None:
			self._kill_group(process)
		root, self._root = self._root, None
		if root is not None:
			shutil.rmtree(root, ignore_errors=True)

	def halt(self) -> None:
		"""Stop the server process but keep its mail, config and ports, so that `resume()` brings it back."""
		process, self._process = self._process, None
		if process is not None:
			self._kill_group(process)

	def resume(self) -> None:
		"""Start the server again after `halt()`, on the same ports and with the same mail."""
		if self.running:
			return
		if self._root is None:
			raise DovecotError("resume() needs a server that was started and halted, not stopped")
		self._launch()

	def _prepare(self) -> None:
		root = self.root
		# Mail processes run as an unprivileged user and must reach their home below this directory.
		os.chmod(root, 0o755)  # noqa: S103 - test data only
		for sub in ("run", "state", "tls", "home", "passwd.d"):
			(root / sub).mkdir()
		os.chmod(root / "tls", 0o700)
		self._choose_mail_owner()
		os.chown(root / "home", self._mail_uid, self._mail_gid)
		self._make_certificate()
		for name in self._users:
			self._write_passwd(name)
		if self._tls:
			self.port, self.ssl_port = free_ports(2, self.host)
		else:
			self.port, self.ssl_port = free_ports(1, self.host)[0], 0
		Path(self.config_path).write_text(self._config_text())

	def _choose_mail_owner(self) -> None:
		"""As root, pick an unprivileged user to own the mail; otherwise keep the current user."""
		if os.getuid() != 0:
			self._mail_uid, self._mail_gid = os.getuid(), os.getgid()
			return
		for name in ROOT_MAIL_OWNERS:
			try:
				entry = pwd.getpwnam(name)
			except KeyError:
				continue
			if entry.pw_uid != 0:
				self._mail_uid, self._mail_gid = entry.pw_uid, entry.pw_gid
				return
		raise DovecotError(f"none of the users {', '.join(ROOT_MAIL_OWNERS)} exists to own the test mail")

	def _make_certificate(self) -> None:
		"""Generate a self-signed certificate (and key) whose subjectAltName lists `cert_names`."""
		names = []
		for name in self._cert_names:
			kind = "IP" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*", name) else "DNS"
			names.append(f"{kind}:{name}")
		common_name = self._cert_names[0] if self._cert_names else "localhost"
		command = [
			OPENSSL_BINARY,
			"req",
			"-x509",
			"-newkey",
			"rsa:2048",
			"-nodes",
			"-sha256",
			"-days",
			"7",
			"-subj",
			f"/CN={common_name}",
			"-keyout",
			self.key_path,
			"-out",
			self.cert_path,
		]
		if names:
			command += ["-addext", "subjectAltName=" + ",".join(names)]
		# Key usages keep strict verifiers (Python 3.13's VERIFY_X509_STRICT) happy with a self-signed leaf.
		command += [
			"-addext",
			"keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
			"-addext",
			"extendedKeyUsage=serverAuth",
		]
		try:
			subprocess.run(command, check=True, capture_output=True, timeout=60)
		except FileNotFoundError as exc:
			raise DovecotError("the openssl command is missing: install the Debian package openssl") from exc
		except subprocess.CalledProcessError as exc:
			raise DovecotError(
				f"openssl could not make a certificate: {exc.stderr.decode(errors='replace')}"
			) from exc
		os.chmod(self.key_path, 0o600)
		os.chmod(self.cert_path, 0o644)

	def _config_text(self) -> str:
		root = self.root
		as_root = os.getuid() == 0
		if as_root:
			identity = ""
			chroots = ""
		else:
			# Unprivileged: every service runs as the current user, and nothing can chroot.
			user = pwd.getpwuid(os.getuid()).pw_name
			group = grp.getgrgid(os.getgid()).gr_name
			identity = (
				f"default_internal_user = {user}\n"
				f"default_internal_group = {group}\n"
				f"default_login_user = {user}\n"
			)
			chroots = "".join(
				f"service {name} {{\n  chroot =\n}}\n"
				for name in ("ipc", "old-stats", "aggregator", "director")
			)
		if self._tls:
			tls_settings = f"ssl = yes\nssl_cert = <{self.cert_path}\nssl_key = <{self.key_path}"
			imaps_listener = (
				f"  inet_listener imaps {{\n    address = {self.host}\n    port = {self.ssl_port}\n"
				f"    ssl = yes\n  }}\n"
			)
		else:
			tls_settings = "ssl = no"
			imaps_listener = ""
		return f"""# Written by machhelpdesk.testing.dovecot for one test run.
instance_name = mh-dovecot-{self.port}
protocols = imap
listen = {self.host}
base_dir = {root}/run
state_dir = {root}/state
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
auth_verbose = yes
{identity}
first_valid_uid = 1
first_valid_gid = 1

{tls_settings}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0

mail_location = maildir:~/Maildir

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u
}}
userdb {{
  driver = static
  args = uid={self._mail_uid} gid={self._mail_gid} home={root}/home/%u
}}

namespace inbox {{
  inbox = yes
  separator = /
}}

service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
{imaps_listener}{"  chroot =" if not as_root else ""}
}}

# Without this, every failed login delays the next one from the same IP (up to 15 s).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
{"  chroot =" if not as_root else ""}
}}
{chroots}
protocol imap {{
  mail_max_userip_connections = 100
}}
{self._extra_config}
"""

	def _launch(self) -> None:
		output = open(self.root / "dovecot.out", "wb")  # the child process keeps its own copy
		try:
			self._process = subprocess.Popen(
				[self._binary, "-F", "-c", self.config_path],
				stdin=subprocess.DEVNULL,
				stdout=output,
				stderr=subprocess.STDOUT,
				start_new_session=True,
			)
		finally:
			output.close()
		ready = wait_for_ports(
			self.host,
			[port for port in (self.port, self.ssl_port) if port],
			timeout=self._startup_timeout,
			still_alive=lambda: self.running,
		)
		if not ready:
			raise DovecotError(
				f"Dovecot did not start listening on {self.host}:{self.port}/{self.ssl_port}.\n{self.log_tail()}"
			)

	@staticmethod
	def _kill_group(process: subprocess.Popen[bytes]) -> None:
		try:
			pgid = os.getpgid(process.pid)
		except ProcessLookupError:
			process.wait()
			return
		for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
			with contextlib.suppress(ProcessLookupError):
				os.killpg(pgid, sig)
			try:
				process.wait(timeout=grace)
				break
			except subprocess.TimeoutExpired:
				continue
		# Children may outlive the master for a moment; make sure none is left behind.
		with contextlib.suppress(ProcessLookupError):
			os.killpg(pgid, signal.SIGKILL)

	def log_tail(self, lines: int = 40) -> str:
		"""The last `lines` lines of Dovecot's log and of its own output, for error messages."""
		chunks = []
		if self._root is None:
			return ""
		for path in (self.root / "dovecot.out", Path(self.log_path)):
			with contextlib.suppress(OSError):
				text = path.read_text(errors="replace").splitlines()[-lines:]
				if text:
					chunks.append(f"--- {path.name} ---\n" + "\n".join(text))
		return "\n".join(chunks) or "(Dovecot wrote no log)"

	# -- users ---------------------------------------------------------------------------------

	@staticmethod
	def _check_credentials(name: str, password: str) -> None:
		if not _USER_NAME.fullmatch(name):
			raise ValueError(f"unusable test user name {name!r}")
		if _FORBIDDEN_IN_PASSWD.search(password):
			raise ValueError("a test password may not contain ':' or line breaks")

	def new_user(self, hint: str = "user", password: str | None = None) -> tuple[str, str]:
		"""Create a user no other test uses, with `password` or a random one; return ``(name, password)``.

		`hint` (e.g. the test's name) is folded into the name so the Dovecot log is easy to read.
		"""
		self._serial += 1
		# Lower case: Dovecot's default auth_username_format (%Lu) lowercases the name at login.
		stem = re.sub(r"[^a-z0-9_.-]+", "-", hint.lower()).strip("-.")[:40] or "user"
		name = f"{stem}-{self._serial}-{secrets.token_hex(3)}"
		password = secrets.token_urlsafe(12) if password is None else password
		self.add_user(name, password)
		return name, password

	def add_user(self, name: str, password: str) -> None:
		"""Add a user, or change a user's password; the next login sees it.

		Each user has a passwd-file of their own (the passdb path contains ``%u``), so a new user is a new file
		that Dovecot opens on first use. Dovecot checks a file it has open for changes at most once a second,
		so changing an existing password waits for the next second.
		"""
		self._check_credentials(name, password)
		changed = name in self._users and self._users[name] != password
		self._users[name] = password
		if self._root is not None:
			if changed:
				time.sleep(1.1)
			self._write_passwd(name)

	def _write_passwd(self, name: str) -> None:
		"""Write the passwd-file of one user atomically (a new inode, mtime and size)."""
		target = self.passwd_dir / name
		scratch = self.passwd_dir / f".{name}.new"
		scratch.write_text(f"{name}:{{PLAIN}}{self._users[name]}::::::\n", encoding="utf-8")
		os.chmod(scratch, 0o600)
		owner = self._auth_uid()
		if owner is None:
			os.chmod(scratch, 0o644)
		elif owner != os.getuid():
			os.chown(scratch, owner, -1)
		os.replace(scratch, target)

	@staticmethod
	def _auth_uid() -> int | None:
		"""The uid Dovecot's auth process reads passwd-files as (None: unknown, so make them world-readable)."""
		if os.getuid() != 0:
			return os.getuid()
		try:
			return pwd.getpwnam("dovecot").pw_uid
		except KeyError:
			return None

	# -- IMAP helpers for tests -----------------------------------------------------------------

	@contextlib.contextmanager
	def client(self, user: str, *, tls: bool = False, timeout: float = 10.0) -> Iterator[IMAPClient]:
		"""A logged-in imapclient connection as `user` (plain by default, implicit TLS with `tls=True`)."""
		if user not in self._users:
			raise KeyError(f"unknown test user {user!r}; call add_user first")
		if tls:
			import ssl

			context = ssl.create_default_context(cafile=self.cert_path)
			connection = IMAPClient(self.host, self.ssl_port, ssl=True, ssl_context=context, timeout=timeout)
		else:
			connection = IMAPClient(self.host, self.port, ssl=False, timeout=timeout)
		connection.normalise_times = False
		try:
			connection.login(user, self._users[user])
			yield connection
		finally:
			try:
				connection.logout()
			except Exception:
				with contextlib.suppress(Exception):
					connection.shutdown()

	def append(
		self,
		user: str,
		raw: bytes,
		folder: str = "INBOX",
		flags: Iterable[str | bytes] = (),
		internal_date: datetime | None = None,
	) -> int | None:
		"""Append one message to `folder` (created if missing) and return its UID (from APPENDUID)."""
		with self.client(user) as imap:
			if not imap.folder_exists(folder):
				imap.create_folder(folder)
			answer = imap.append(folder, raw, flags=tuple(flags), msg_time=internal_date)
		found = _APPENDUID.search(answer if isinstance(answer, bytes) else str(answer).encode())
		return int(found.group(1)) if found else None

	def folder_uids(self, user: str, folder: str = "INBOX") -> list[int]:
		"""Every UID in `folder`, ascending."""
		with self.client(user) as imap:
			imap.select_folder(folder, readonly=True)
			return sorted(imap.search("ALL"))

	def fetch_all(self, user: str, folder: str = "INBOX") -> dict[int, bytes]:
		"""UID -> raw message for every message in `folder`, read with BODY.PEEK[] (flags stay untouched)."""
		with self.client(user) as imap:
			imap.select_folder(folder, readonly=True)
			uids = imap.search("ALL")
			if not uids:
				return {}
			data = imap.fetch(uids, ["BODY.PEEK[]"])
			return {uid: item[b"BODY[]"] for uid, item in sorted(data.items()) if b"BODY[]" in item}

	def flags(self, user: str, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
		"""UID -> flags for every message in `folder`."""
		with self.client(user) as imap:
			imap.select_folder(folder, readonly=True)
			uids = imap.search("ALL")
			if not uids:
				return {}
			return {uid: tuple(flags) for uid, flags in sorted(imap.get_flags(uids).items())}

	def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
		"""The current UIDVALIDITY of `folder`."""
		with self.client(user) as imap:
			return int(imap.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])

	def list_folders(self, user: str) -> list[str]:
		"""Names of every folder of `user`."""
		with self.client(user) as imap:
			return sorted(name for _flags, _sep, name in imap.list_folders())

	def create_folder(self, user: str, folder: str) -> None:
		"""Create `folder` (no error if it exists)."""
		with self.client(user) as imap:
			if not imap.folder_exists(folder):
				imap.create_folder(folder)

	def delete_folder(self, user: str, folder: str) -> None:
		"""Delete `folder` and its messages (no error if it is missing)."""
		with self.client(user) as imap:
			if imap.folder_exists(folder):
				imap.delete_folder(folder)

	def recreate_folder(self, user: str, folder: str = "INBOX", keep_messages: bool = True) -> int:
		"""Force a new UIDVALIDITY on `folder` and return it.

		With `keep_messages` the same messages (bytes, flags, internal dates) come back under new UIDs, as after
		a server-side index rebuild; otherwise the folder ends up empty. INBOX cannot be deleted over IMAP, so it
		is reset on disk instead: its connections are dropped and its UID list and indexes removed.
		"""
		if folder.upper() == "INBOX":
			return self._reset_inbox_uids(user, keep_messages)
		with self.client(user) as imap:
			saved: list[tuple[bytes, tuple[bytes, ...], datetime | None]] = []
			if imap.folder_exists(folder):
				old = int(imap.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])
				if keep_messages:
					imap.select_folder(folder, readonly=True)
					uids = sorted(imap.search("ALL"))
					if uids:
						data = imap.fetch(uids, ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
						saved = [
							(data[uid][b"BODY[]"], tuple(data[uid][b"FLAGS"]), data[uid][b"INTERNALDATE"])
							for uid in uids
							if uid in data
						]
					imap.unselect_folder()
				imap.delete_folder(folder)
			else:
				old = 0
			imap.create_folder(folder)
			for raw, flags, when in saved:
				keep = tuple(flag for flag in flags if flag != b"\\Recent")
				imap.append(folder, raw, flags=keep, msg_time=when)
			new = int(imap.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])
		if new == old:
			raise DovecotError(f"UIDVALIDITY of {folder!r} did not change ({new})")
		return new

	def _reset_inbox_uids(self, user: str, keep_messages: bool) -> int:
		old = self.uidvalidity(user, "INBOX")
		maildir = self.maildir(user)
		if not keep_messages:
			for sub in ("cur", "new", "tmp"):
				for path in (maildir / sub).iterdir():
					path.unlink()
		# Dovecot usually hands out a fresh UIDVALIDITY at once; retry for a moment in case it repeats one.
		deadline = time.monotonic() + 5
		while True:
			self.kill_connections(user)
			for path in maildir.iterdir():
				if path.is_file() and (
					path.name == "dovecot-uidlist" or path.name.startswith("dovecot.index")
				):
					path.unlink()
			new = self.uidvalidity(user, "INBOX")
			if new != old:
				return new
			if time.monotonic() > deadline:
				raise DovecotError(f"UIDVALIDITY of INBOX did not change ({new})")
			time.sleep(0.5)

	def kill_connections(self, user: str | None = None) -> None:
		"""Drop open IMAP connections of `user` (of every user when None), as a server restart would."""
		masks = [user] if user is not None else list(self._users) or ["*"]
		result = subprocess.run(
			[self._doveadm, "-c", self.config_path, "kick", *masks],
			capture_output=True,
			timeout=30,
			check=False,
		)
		# Exit code 68 (EX_NOUSER) means nobody was connected: nothing to do.
		if result.returncode not in (0, 68):
			raise DovecotError(
				f"doveadm kick failed ({result.returncode}): {result.stderr.decode(errors='replace')}\n{self.log_tail()}"
			)
		# The kicked processes exit asynchronously; wait until anvil no longer lists them.
		deadline = time.monotonic() + 5
		while time.monotonic() < deadline and self._connected(masks):
			time.sleep(0.05)

	def sessions(self, user: str) -> list[int]:
		"""Process ids of the IMAP sessions `user` has open now (empty when nobody is logged in as them)."""
		result = subprocess.run(
			[self._doveadm, "-c", self.config_path, "who", "-1", user],
			capture_output=True,
			timeout=30,
			check=False,
		)
		pids = []
		for line in result.stdout.decode(errors="replace").splitlines()[1:]:
			fields = line.split()
			if len(fields) >= 3 and fields[0] == user and fields[2].isdigit():
				pids.append(int(fields[2]))
		return pids

	def _connected(self, masks: list[str]) -> bool:
		result = subprocess.run(
			[self._doveadm, "-c", self.config_path, "who", "-1", *masks],
			capture_output=True,
			timeout=30,
			check=False,
		)
		lines = [line for line in result.stdout.decode(errors="replace").splitlines()[1:] if line.strip()]
		return result.returncode == 0 and bool(lines)
