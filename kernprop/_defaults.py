"""A process-wide default that a ``with`` block can override for its own thread: the
shape of ``set_backend`` / ``use_backend`` and ``set_matmul_precision`` /
``matmul_precision``."""

from __future__ import annotations

import contextlib
import threading


class ThreadDefault:
    """``get()`` is the innermost ``override(value)`` of this thread, else the global
    value that ``set(value)`` last gave.  ``check(value)`` validates (raising) and returns
    the value to keep."""

    def __init__(self, value, check):
        self._check = check
        self._global = value
        self._local = threading.local()

    def set(self, value):
        self._global = self._check(value)

    def get(self):
        stack = getattr(self._local, "stack", None)
        return stack[-1] if stack else self._global

    def overridden(self):
        """Whether this thread is inside an ``override`` block."""
        return bool(getattr(self._local, "stack", None))

    @contextlib.contextmanager
    def override(self, value):
        value = self._check(value)
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        stack.append(value)
        try:
            yield value
        finally:
            stack.pop()
