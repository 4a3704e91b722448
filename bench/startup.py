"""Start-up time of the command line: `gradfit --help` (target < 0.3 s), against the bare
Python interpreter start in the same run.

    python bench/startup.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from _common import median_of, table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    exe = shutil.which("gradfit") or sys.executable
    cmd = [exe, "--help"] if exe != sys.executable else [sys.executable, "-m", "gradfit", "--help"]
    bare = median_of(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.repeats)
    help_t = median_of(lambda: subprocess.run(cmd, check=True, capture_output=True), args.repeats)
    torch_t = median_of(lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True), 3)
    rows = [["python -c pass (anchor)", f"{bare:.3f}"], [" ".join(["gradfit", "--help"]), f"{help_t:.3f}"],
            ["python -c 'import torch' (what lazy imports avoid)", f"{torch_t:.3f}"]]
    print(table(f"start-up, median of {args.repeats}", ["command", "seconds"], rows))
    print(f"gradfit --help: {help_t:.3f} s ({'under' if help_t < 0.3 else 'OVER'} the 0.3 s target)")


if __name__ == "__main__":
    main()
