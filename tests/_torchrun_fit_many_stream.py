"""Run by tests/test_fit_many_stream.py, alone or under torchrun: fit_many_files on a .npy
batch, appending one line per chunk written to LOG (which chunk, which process), waiting
PAUSE seconds after each (so that a test can kill the run between chunks).

    python _torchrun_fit_many_stream.py DATA OUT LOG [PAUSE]
"""

import os
import sys
import time

import gradfit as gf

MODEL = "a*exp(-k*x) + c"
OPTIONS = dict(x=[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0], chunk_fits=40,
               init={"a": 1.0, "k": 1.0, "c": 0.0}, dtype="float64", tol=1e-10, threads=1,
               compile=False)  # one kernel throughout: "auto" may switch to C midway, and C sums in another order


def main(data: str, out: str, log: str, pause: str = "0") -> None:
    def written(record):
        with open(log, "a") as fh:
            fh.write(f"chunk {record['chunk']} pid {os.getpid()}\n")
        time.sleep(float(pause))

    s = gf.fit_many_files(MODEL, data, out, on_chunk=written, **OPTIONS)
    print(f"rank={os.environ.get('RANK', '0')} fitted={list(s.fitted)} complete={s.complete}")


if __name__ == "__main__":
    main(*sys.argv[1:])
