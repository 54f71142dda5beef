"""splitjax.cli helpers that scripts share."""

import os

import pytest

from splitjax import cli

# The test process has JAX loaded (other tests), which warns at any fork; the
# children here only write a file.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")


def test_in_background_writes_the_file_before_wait_returns(tmp_path):
  path = tmp_path / "out.txt"
  wait = cli.in_background(lambda: path.write_text("written by the child"))
  wait()
  assert path.read_text() == "written by the child"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="writes inline where processes cannot fork")
def test_in_background_reports_a_failed_write():
  def fail():
    raise OSError("disk full")

  wait = cli.in_background(fail)
  with pytest.raises(RuntimeError, match="failed"):
    wait()


def test_usable_cpus_are_at_most_the_machine_s():
  assert 1 <= cli.usable_cpus() <= (os.cpu_count() or 1)
