"""A lock shared by the processes that prepare the same data at once."""

from __future__ import annotations

import contextlib
import fcntl
import os


@contextlib.contextmanager
def exclusive(path: str):
  """Holds an exclusive lock on file `path` (created if absent) for the
  `with` block; another process asking for it waits until then."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
