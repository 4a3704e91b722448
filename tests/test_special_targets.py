"""Writes never replace what the output path names by a regular file: a symbolic link is
followed (the file it points to is replaced, the link stays), a FIFO or a device is written
straight into, a replaced file keeps its mode (issue 12, "nothing lost")."""

import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

import gradfit as gf
from gradfit._files import atomic_write_bytes, atomic_write_text
from gradfit.errors import PersistError

posix_only = pytest.mark.skipif(os.name != "posix", reason="symbolic links, FIFOs and modes are POSIX")
X = np.linspace(0.0, 1.0, 12)


@posix_only
def test_symlink_to_a_file_keeps_the_link_and_replaces_the_file_it_points_to(tmp_path):
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "out.csv"
    real.write_text("old\n")
    link = tmp_path / "out.csv"
    link.symlink_to(os.path.relpath(real, tmp_path))
    atomic_write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "out.csv")
    assert real.read_text() == "new\n"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["out.csv"]  # no temporary left


@posix_only
def test_dangling_symlink_gets_the_file_it_names_created(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "made" / "target.json")
    atomic_write_text(link, "{}\n")
    assert link.is_symlink() and (tmp_path / "made" / "target.json").read_text() == "{}\n"


@posix_only
def test_a_chain_of_links_and_a_linked_folder_resolve_to_the_one_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.txt").write_text("old")
    (tmp_path / "folder").symlink_to(tmp_path / "data")
    (tmp_path / "a").symlink_to(tmp_path / "folder" / "f.txt")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    atomic_write_text(tmp_path / "b", "new")
    assert (tmp_path / "data" / "f.txt").read_text() == "new"
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink() and (tmp_path / "folder").is_symlink()


@posix_only
def test_a_loop_of_links_is_an_oserror_and_touches_nothing(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "a", "x")
    assert (tmp_path / "a").is_symlink() and (tmp_path / "b").is_symlink()


@posix_only
def test_fifo_is_written_into_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    payload = b"x,y\n" + b"1,2\n" * 50_000  # larger than a pipe's buffer: written in pieces
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write_bytes(fifo, payload)
    reader.join(timeout=30)
    assert got == [payload]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


@posix_only
@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_dev_null_stays_a_character_device():
    atomic_write_text("/dev/null", "discarded\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)  # not a link left in its place


@posix_only
def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "secret.json"
    for mode in (0o600, 0o640, 0o444):
        path.write_text("old")
        path.chmod(mode)
        atomic_write_text(path, "new")
        assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == mode


@posix_only
def test_a_new_file_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640


@posix_only
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give a file away")
def test_root_replacing_a_file_keeps_its_owner(tmp_path):
    path = tmp_path / "theirs.csv"
    path.write_text("old")
    os.chown(path, 4321, 4322)
    atomic_write_text(path, "new")
    info = path.stat()
    assert (info.st_uid, info.st_gid) == (4321, 4322) and path.read_text() == "new"


@posix_only
def test_a_hard_link_keeps_the_old_content(tmp_path):
    """Documented: replacing is a rename, so another name of the old file is not updated."""
    path = tmp_path / "a.txt"
    path.write_text("old")
    os.link(path, tmp_path / "b.txt")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and (tmp_path / "b.txt").read_text() == "old"


# -- the CLI and saved models ---------------------------------------------------------------
@pytest.fixture(scope="module")
def line_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("line")
    gf.fit("a*x + b", x=X, y=2.0 * X + 1.0, optimizer="linear").save(folder / "model.json")
    (folder / "in.csv").write_text("x\n0\n0.5\n1\n")
    return folder


def _predict(folder, out, **kwargs):
    return subprocess.run([sys.executable, "-m", "gradfit", "predict", str(folder / "model.json"),
                           str(folder / "in.csv"), "-o", out], stderr=subprocess.PIPE, text=True, **kwargs)


@posix_only
@pytest.mark.skipif(not os.path.exists("/dev/stdout"), reason="no /dev/stdout")
def test_cli_predict_to_dev_stdout_prints_the_csv_alone(line_model):
    run = _predict(line_model, "/dev/stdout", stdout=subprocess.PIPE)
    assert run.returncode == 0, run.stderr
    rows = run.stdout.splitlines()
    assert rows[0] == "x,prediction" and len(rows) == 4  # no "wrote ..." line inside the CSV
    assert [float(r.split(",")[1]) for r in rows[1:]] == pytest.approx([1.0, 2.0, 3.0])
    assert os.path.islink("/dev/stdout")


@posix_only
@pytest.mark.skipif(not os.path.exists("/dev/stdout"), reason="no /dev/stdout")
def test_cli_predict_to_dev_stdout_appended_to_a_file_keeps_what_was_there(line_model, tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("earlier line\n")
    with open(log, "ab") as fh:  # the shell's ">>"
        run = _predict(line_model, "/dev/stdout", stdout=fh)
    assert run.returncode == 0, run.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier line" and lines[1] == "x,prediction" and len(lines) == 5


@posix_only
def test_cli_predict_through_a_symlink_keeps_the_link(line_model, tmp_path):
    real = tmp_path / "real.csv"
    (tmp_path / "out.csv").symlink_to(real)
    run = _predict(line_model, str(tmp_path / "out.csv"), stdout=subprocess.PIPE)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out.csv").is_symlink() and real.read_text().splitlines()[0] == "x,prediction"


@posix_only
def test_a_formula_model_can_be_saved_into_a_fifo(tmp_path):
    fifo = tmp_path / "model.pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    gf.fit("a*x + b", x=X, y=2.0 * X + 1.0, optimizer="linear").save(fifo)
    reader.join(timeout=30)
    assert '"format": "gradfit.model"' in got[0] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.fixture(scope="module")
def mlp_fit():
    return gf.fit("mlp", x=X, y=X**2, hidden=(3,), epochs=2, progress=False)


@posix_only
@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_a_network_model_into_a_device_is_refused(mlp_fit):
    with pytest.raises(PersistError, match="two files"):
        mlp_fit.save("/dev/null")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


@posix_only
def test_a_network_model_through_linked_folders_and_a_linked_document(mlp_fit, tmp_path):
    """commit_pair: a linked out folder holds the pair; a linked document gets its weights beside
    the file it points to, and loads through the link and through the real path alike."""
    (tmp_path / "store").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "store")
    mlp_fit.save(tmp_path / "out" / "model.json")
    mlp_fit.save(tmp_path / "out" / "model.json")  # again: the staged names are tidied
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["model.json", "model.safetensors"]
    (tmp_path / "current.json").symlink_to(tmp_path / "store" / "model.json")
    mlp_fit.save(tmp_path / "current.json")
    assert (tmp_path / "current.json").is_symlink()
    assert not (tmp_path / "current.safetensors").exists()
    expected = mlp_fit.predict(X)
    for path in (tmp_path / "current.json", tmp_path / "store" / "model.json", tmp_path / "out" / "model.json"):
        assert np.array_equal(gf.load(path).predict(X), expected)
