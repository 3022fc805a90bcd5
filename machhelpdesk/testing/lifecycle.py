"""The ``with`` protocol the test servers share (imports no frappe)."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

_Server = TypeVar("_Server", bound="StartStop")


class StartStop:
	"""``with server:`` calls `start()` on entry and `stop()` on exit, even after an error."""

	def start(self) -> None:
		raise NotImplementedError

	def stop(self) -> None:
		raise NotImplementedError

	def __enter__(self: _Server) -> _Server:
		self.start()
		return self

	def __exit__(
		self,
		exc_type: type[BaseException] | None,
		exc: BaseException | None,
		tb: TracebackType | None,
	) -> None:
		self.stop()
