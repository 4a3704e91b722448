"""fit_many under torchrun: 2 CPU processes (gloo) give the same result as one process."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).with_name("_torchrun_fit_many.py")


def _run(args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(env_extra or {})
    env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)


def test_two_processes_match_one(tmp_path):
    one = tmp_path / "one.npz"
    two = tmp_path / "two.npz"
    p1 = _run([sys.executable, str(SCRIPT), str(one)])
    assert p1.returncode == 0, p1.stderr
    p2 = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(SCRIPT), str(two)], {"OMP_NUM_THREADS": "1"})
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert "world=2 fits=101" in p2.stdout
    with np.load(one, allow_pickle=False) as a, np.load(two, allow_pickle=False) as b:
        assert set(a.files) == set(b.files)
        for key in set(a.files) - {"timings"}:  # seconds and world size differ by design
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
