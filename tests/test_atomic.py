"""Atomic writes: kill the writer with SIGKILL at random moments; the file left behind is
always one complete version, never a mix or a truncation."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

WRITER = Path(__file__).with_name("_atomic_writer.py")


def test_sigkill_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("A" * 2_000_000 + "\n")
    rng = random.Random(0)
    valid = {"A" * 2_000_000 + "\n", "B" * 3_000_000 + "\n"}
    for _ in range(50):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert target.read_text() in valid
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.json"]
    # temporary files of killed writers may remain, but never under the real name
    assert all(name.startswith(".model.json.") for name in leftovers)
