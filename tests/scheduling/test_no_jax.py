"""Policy code (and the workload / metrics it uses) never imports jax."""

import subprocess
import sys


def test_policy_modules_do_not_import_jax():
  code = ("import sys\n"
          "import splitjax.scheduling.policies, splitjax.scheduling.records\n"
          "import splitjax.workload, splitjax.metrics\n"
          "bad = [m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'jaxlib', 'flax'))]\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
