"""Policy code, the driver loop, its fake executor and the simulator never
import jax (the simulator drives the policies without devices)."""

import subprocess
import sys


def test_policy_modules_do_not_import_jax():
  code = ("import sys\n"
          "import splitjax.scheduling.coordinator, splitjax.scheduling.steps\n"
          "import splitjax.scheduling.mixed_pool, splitjax.serve_config\n"
          "import splitjax.runtime.loop, splitjax.runtime.fake_executor, splitjax.runtime.clock\n"
          "import splitjax.workload, splitjax.metrics, splitjax.report\n"
          "import splitjax.sim.driver, splitjax.sim.build, splitjax.sim.sim_config\n"
          "bad = [m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'jaxlib', 'flax'))]\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
