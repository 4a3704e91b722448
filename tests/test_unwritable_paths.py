"""Every writer fails the same way on a path it cannot write: a PersistError (an OSError too)
with one line naming the path, the reason and what to do, never a raw OSError naming a
temporary file."""

import os

import numpy as np
import pytest

import gradfit as gf
from gradfit.errors import GradfitError, PersistError


@pytest.fixture(scope="module")
def result():
    x = np.linspace(0.0, 1.0, 11)
    return gf.fit("w*x + b", x=x, y=2 * x + 1)


def _blocked_paths(tmp_path):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    folder = tmp_path / "existing"
    folder.mkdir()
    return {
        "a file on the way": (a_file / "out.json", "is a file, not a folder"),
        "a folder": (folder, "it is a folder"),
    }


WRITERS = {
    "save": lambda r, p: r.save(p),
    "to_html": lambda r, p: r.to_html(p),
    "atomic_write_text": lambda r, p: __import__("gradfit._files", fromlist=["x"]).atomic_write_text(p, "x"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_writer_names_the_path_and_the_fix(result, tmp_path, writer):
    for path, hint in _blocked_paths(tmp_path).values():
        with pytest.raises(PersistError) as info:
            WRITERS[writer](result, path)
        message = str(info.value)
        assert message.startswith(f"cannot write {path}"), message
        assert hint in message and "\n" not in message
        assert ".tmp" not in message  # never the name of a temporary file
        assert isinstance(info.value, OSError) and isinstance(info.value, GradfitError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_folder_says_choose_another(result, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PersistError, match="choose a folder you may write to"):
            result.to_html(ro / "r.html")
    finally:
        ro.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_a_folder_that_takes_no_new_files(result):
    with pytest.raises(PersistError, match=r"new files cannot be created in /proc; choose another folder"):
        result.to_html("/proc/r.html")


def test_loggers_fail_the_same_way(tmp_path):
    from gradfit.train.loggers import CSVLogger

    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    x = np.linspace(0.0, 1.0, 11)
    with pytest.raises(PersistError, match=r"cannot write .*plain.txt/log.csv: .*plain.txt is a file, not a folder"):
        gf.fit("w*x + b", x=x, y=2 * x + 1, optimizer="adam", epochs=2, callbacks=[CSVLogger(blocker / "log.csv")])


def test_the_cli_maps_it_to_exit_2_with_one_line(tmp_path):
    from _cli import cli

    data = tmp_path / "d.csv"
    data.write_text("x,y\n" + "\n".join(f"{i},{2 * i + 1}" for i in range(8)) + "\n")
    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    code, out, err = cli(["fit", str(data), "y ~ w*x + b", "--report", str(blocker / "r.html")])
    assert code == 2
    assert err.strip().count("\n") == 0 and "plain.txt" in err and "Traceback" not in err
