"""Run by tests/test_atomic.py: rewrite one file forever, alternating two large versions."""

import sys

from gradfit._files import atomic_write_text

path = sys.argv[1]
versions = ["A" * 2_000_000 + "\n", "B" * 3_000_000 + "\n"]
print("ready", flush=True)
i = 0
while True:
    atomic_write_text(path, versions[i % 2])
    i += 1
