"""The key-value part of JAX's DistributedRuntimeClient, in memory, for tests."""

import threading


class FakeClient:
  """The key-value part of DistributedRuntimeClient, in memory (thread-safe)."""

  def __init__(self):
    self.kv, self.cv = {}, threading.Condition()

  def key_value_set(self, key, value, allow_overwrite=False):
    with self.cv:
      if key in self.kv and not allow_overwrite:
        raise RuntimeError(f"ALREADY_EXISTS: {key}")
      self.kv[key] = value
      self.cv.notify_all()

  def key_value_try_get(self, key):
    with self.cv:
      if key not in self.kv:
        raise RuntimeError(f"NOT_FOUND: {key}")
      return self.kv[key]

  def blocking_key_value_get(self, key, timeout_in_ms):
    with self.cv:
      if not self.cv.wait_for(lambda: key in self.kv, timeout_in_ms / 1000):
        raise RuntimeError(f"DEADLINE_EXCEEDED: {key}")
      return self.kv[key]

  def key_value_dir_get(self, prefix):
    with self.cv:
      return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]

  def key_value_delete(self, key):
    with self.cv:
      self.kv.pop(key, None)
