"""Every Python and shell example in README.md runs, and the numbers it shows are what it prints.

The code blocks are read from README.md itself, so a new example is tested as soon as it is
written. Conventions the README follows (and this file enforces):

* ```` ```python ```` blocks are self-contained: each runs on its own, in a fresh namespace, in a
  fresh temporary folder (so files it writes do not litter the repository). Top-level
  statements run one at a time.
* ``EXPR  # -> VALUE [text]``: an expression statement whose comment starts with ``->`` shows
  its value. VALUE is a Python literal (numbers, strings, tuples, lists, dicts, True/False/None);
  the value the expression evaluates to must equal it, numbers *to the digits shown*
  (``0.53677`` means the value rounds to 0.53677: it lies within half a unit of the last digit
  shown). Arrays compare as lists, str enums as strings; anything after the literal is prose.
* ``# SomeWarning: message`` comment lines right after a statement (continued on the following
  comment lines) show a warning that statement emits; ``...`` stands for any text and the
  numbers match to the digits shown.
* ```` ```bash ```` blocks: each command (backslash continuations joined, ``#`` comments removed,
  ``&&`` chains split) runs in order in one fresh temporary folder holding the data files the
  examples name (written by ``tests/readme/make_fixtures.py``). ``gradfit ARGS`` runs
  in-process through ``gradfit.cli.main.main`` -- the function behind the ``gradfit``
  console script -- so one torch import serves every command; it must exit 0. ``pip install``
  and ``python -m pytest`` are not run (reasons in ``NOT_RUN``); any other program fails the
  test, so a new kind of command must be given a runner here. Commands in ``SLOW`` (the
  guided demo, ~8 s) run in their own test marked ``slow`` (``pytest -m slow``).
* A plain ```` ``` ```` block right after a shell block is the output of that block's last
  command; it must match line by line (numbers to the digits shown, ``...`` any text).
* The numbers shown are CPU numbers: the test hides CUDA (``device="auto"`` would pick a GPU,
  whose float32 kernels give other last digits) and runs torch single-threaded (on a busy
  machine two intra-op threads made the small examples ~20x slower in CPU time; these sizes
  give the same numbers either way).
* ``<!-- readme-test: skip REASON -->`` right before a block skips it; the reason is required.
  No block is skipped today.
"""

from __future__ import annotations

import ast
import contextlib
import io
import itertools
import math
import re
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
sys.path.insert(0, str(Path(__file__).resolve().parent / "readme"))
from make_fixtures import write_fixtures

#: commands the shell examples contain that the test does not run, with the reason
NOT_RUN = {
    "pip": "installs packages: the test runs against the gradfit already installed",
    "python -m pytest": "runs the test suite, which contains this test",
}
#: commands too slow for the default run: run by test_slow_shell_command (pytest -m slow)
SLOW = {
    "gradfit demo": "the guided walk-through trains 5000-epoch fits and draws plots (~8 s)",
}
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\b\s*(.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)\s*$")


@dataclass
class Block:
    index: int
    lang: str  # "python", "bash" or "" (output)
    line: int  # 1-based line of the opening fence in README.md
    code: str
    skip: str | None = None  # the reason, when marked skip
    output: Block | None = field(default=None, repr=False)  # a plain block right after

    @property
    def id(self) -> str:
        lines = [ln.strip() for ln in self.code.splitlines()]
        first = next((ln for ln in lines if ln and not ln.startswith("import")), "")
        return f"{self.index:02d}-L{self.line}-{self.lang}-{first[:40]}"


def parse_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, in order (indented fences included)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group("indent"), m.group("lang"), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            ln = lines[i]
            body.append(ln[len(indent):] if ln.startswith(indent) else ln.lstrip())
            i += 1
        if i >= len(lines):
            raise AssertionError(f"README.md line {start + 1}: unclosed code fence")
        i += 1
        # a skip marker: the nearest non-blank line above the fence
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        mark = SKIP_MARK.search(lines[j]) if j >= 0 else None
        skip = None
        if mark:
            skip = mark.group(1)
            if not skip:
                raise AssertionError(f"README.md line {j + 1}: a readme-test skip needs a reason")
        blocks.append(Block(len(blocks), lang, start + 1, "\n".join(body) + "\n", skip))
    # a plain block directly after a shell block (blank lines between allowed) is its output
    for prev, blk in itertools.pairwise(blocks):
        if blk.lang == "" and prev.lang == "bash":
            between = lines[prev.line:blk.line - 1]
            closing = next(k for k in range(len(between)) if between[k].strip() == "```")
            if not any(ln.strip() for ln in between[closing + 1:]):
                prev.output = blk
    return blocks


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))
PY = [b for b in BLOCKS if b.lang == "python"]
SH = [b for b in BLOCKS if b.lang == "bash"]


@pytest.fixture(autouse=True, scope="module")
def _cpu_one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: False)
        yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- matching


def _tolerance(text: str) -> float:
    """Half a unit in the last digit of a number as written ('0.53677' -> 5e-6)."""
    mant, _, exp = text.lower().lstrip("+-").partition("e")
    decimals = len(mant.partition(".")[2])
    return 0.5 * 10.0 ** (int(exp or 0) - decimals)


def _number_close(actual: float, shown: str) -> bool:
    value = float(shown)
    if math.isnan(value):
        return math.isnan(actual)
    return abs(float(actual) - value) <= _tolerance(shown) * (1 + 1e-9) + 1e-12 * abs(value)


def _plain(value):
    """numpy/torch values as Python scalars and lists; str enums as str."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        return str(value)
    return value


def compare(actual, node: ast.AST, source: str, where: str = "value") -> list[str]:
    """Differences between ``actual`` and the literal ``node`` (parsed from ``source``)."""
    actual = _plain(actual)
    if isinstance(node, ast.Dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected a dict, got {actual!r}"]
        keys = [ast.literal_eval(k) for k in node.keys]
        if set(keys) != set(actual):
            return [f"{where}: keys {sorted(map(str, actual))} != shown {sorted(map(str, keys))}"]
        out = []
        for k, v in zip(keys, node.values):
            out += compare(actual[k], v, source, f"{where}[{k!r}]")
        return out
    if isinstance(node, (ast.Tuple, ast.List)):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(node.elts):
            return [f"{where}: expected {len(node.elts)} items, got {actual!r}"]
        out = []
        for i, (a, v) in enumerate(zip(actual, node.elts)):
            out += compare(a, v, source, f"{where}[{i}]")
        return out
    shown = ast.get_source_segment(source, node)
    expected = ast.literal_eval(node)
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        ok = actual == expected or (isinstance(expected, str) and str(actual) == expected)
        return [] if ok else [f"{where}: {actual!r} != shown {shown}"]
    if isinstance(expected, (int, float)):
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return [f"{where}: expected a number {shown}, got {actual!r}"]
        return [] if _number_close(actual, shown) else [f"{where}: {actual!r} does not round to shown {shown}"]
    return [f"{where}: cannot compare with {shown}"]


def parse_shown(text: str) -> tuple[ast.AST, str]:
    """The longest prefix of ``text`` that is a Python literal (the rest is prose)."""
    text = text.strip()
    for end in range(len(text), 0, -1):
        chunk = text[:end]
        try:
            tree = ast.parse(chunk.strip(), mode="eval")
            ast.literal_eval(tree.body)
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            continue
        return tree.body, chunk.strip()
    raise AssertionError(f"no Python literal after '# ->': {text!r}")


NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def text_matches(expected: str, actual: str) -> str | None:
    """None if ``actual`` matches ``expected`` (whitespace-insensitive, numbers to the digits
    shown, ``...`` any text); else a description of the first difference."""
    pattern, shown = [], []
    pos = 0
    spec = " ".join(expected.split())
    for m in re.finditer(r"\.\.\.|" + NUMBER.pattern, spec):
        pattern.append(re.escape(spec[pos:m.start()]))
        if m.group() == "...":
            pattern.append(r".*?")
        else:
            pattern.append(r"(" + NUMBER.pattern + r")")
            shown.append(m.group())
        pos = m.end()
    pattern.append(re.escape(spec[pos:]))
    regex = "".join(pattern).replace(r"\ ", r"\s+")
    got = " ".join(actual.split())
    m = re.fullmatch(regex, got, flags=re.DOTALL)
    if not m:
        return f"text differs:\n  shown:   {spec}\n  printed: {got}"
    for s, a in zip(shown, m.groups()):
        if not _number_close(float(a), s):
            return f"number {a} does not round to shown {s}:\n  shown:   {spec}\n  printed: {got}"
    return None


# ----------------------------------------------------------------------------- python blocks


def _claims(code: str, stmt: ast.stmt) -> tuple[str | None, list[tuple[str, str]]]:
    """The '# -> VALUE' text on a statement's last line and the '# XWarning: ...' comments after it."""
    lines = code.splitlines()
    value = None
    last = lines[stmt.end_lineno - 1]
    m = re.search(r"#\s*->\s*(.*)$", last)
    if m:
        value = m.group(1)
    shown_warnings: list[tuple[str, str]] = []
    k = stmt.end_lineno
    while k < len(lines) and lines[k].lstrip().startswith("#"):
        w = re.match(r"\s*#\s*(\w*Warning):\s*(.*)$", lines[k])
        if w:
            shown_warnings.append((w.group(1), w.group(2)))
        elif shown_warnings:
            name, msg = shown_warnings[-1]
            shown_warnings[-1] = (name, msg + " " + lines[k].lstrip()[1:].strip())
        k += 1
    return value, shown_warnings


def run_python(code: str, filename: str) -> None:
    tree = ast.parse(code, filename)
    namespace: dict = {"__name__": "__readme__"}
    failures = []
    for stmt in tree.body:
        value_text, shown_warnings = _claims(code, stmt)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if value_text is not None:
                assert isinstance(stmt, ast.Expr), f"{filename}:{stmt.lineno}: '# ->' needs an expression"
                value = eval(compile(ast.Expression(stmt.value), filename, "eval"), namespace)
            else:
                exec(compile(ast.Module([stmt], []), filename, "exec"), namespace)  # noqa: S102 (README's own code)
        if value_text is not None:
            node, src = parse_shown(value_text)
            failures += [f"line {stmt.lineno}: {d}" for d in compare(value, node, src)]
        for name, msg in shown_warnings:
            texts = [str(w.message) for w in caught if w.category.__name__ == name]
            if not texts:
                failures.append(f"line {stmt.lineno}: no {name} (got {[str(w.message) for w in caught]})")
            elif all(text_matches(msg, t) for t in texts):
                failures.append(f"line {stmt.lineno}: {name} " + text_matches(msg, texts[0]))
    assert not failures, "README example shows other values than it gives:\n" + "\n".join(failures)


@pytest.mark.parametrize("block", PY, ids=[b.id for b in PY])
def test_python_example(block: Block, tmp_path, monkeypatch):
    if block.skip:
        pytest.skip(block.skip)
    write_fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    run_python(block.code, f"README.md:{block.line}")


# ----------------------------------------------------------------------------- shell blocks


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell block as argv lists (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", code)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1:]
    return commands


def _reason(argv: list[str], table: dict) -> str | None:
    text = " ".join(argv)
    for prefix, reason in table.items():
        if text == prefix or text.startswith(prefix + " "):
            return reason
    return None


def run_gradfit(argv: list[str]) -> tuple[int, str, str]:
    from gradfit.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv[1:], stdout=out, stderr=err)
    return int(code), out.getvalue(), err.getvalue()


@pytest.mark.parametrize("block", SH, ids=[b.id for b in SH])
def test_shell_example(block: Block, tmp_path, monkeypatch):
    if block.skip:
        pytest.skip(block.skip)
    write_fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran, not_run, stdout = 0, [], ""
    for argv in shell_commands(block.code):
        reason = _reason(argv, NOT_RUN) or _reason(argv, SLOW)
        if reason:
            not_run.append(f"{' '.join(argv)}: {reason}")
            continue
        assert argv[0] == "gradfit", f"README.md:{block.line}: no runner for {argv[0]!r}; add one to this test"
        code, stdout, stderr = run_gradfit(argv)
        assert code == 0, f"`{shlex.join(argv)}` exited {code}:\n{stderr}"
        assert "Traceback" not in stderr, stderr
        ran += 1
    if block.output is not None:
        assert ran, "an output block follows a shell block that ran nothing"
        diff = text_matches(block.output.code, stdout)
        assert diff is None, f"README.md:{block.output.line}: output of the last command {diff}"
    if not ran:
        pytest.skip("; ".join(not_run))


SLOW_RUNS = [(b, argv) for b in SH for argv in shell_commands(b.code) if _reason(argv, SLOW) and not b.skip]


@pytest.mark.slow
@pytest.mark.parametrize("block,argv", SLOW_RUNS, ids=[f"{b.index:02d}-L{b.line}-{' '.join(a)}" for b, a in SLOW_RUNS])
def test_slow_shell_command(block: Block, argv, tmp_path, monkeypatch):
    write_fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_gradfit(argv)
    assert code == 0 and "Traceback" not in stderr, f"`{shlex.join(argv)}` exited {code}:\n{stderr}"


# ----------------------------------------------------------------------------- the harness


def test_every_block_is_tested():
    """Every fenced block is Python, shell, or the output of a shell block; skips are rare."""
    outputs = {id(b.output) for b in SH if b.output is not None}
    for b in BLOCKS:
        assert b.lang in ("python", "bash") or id(b) in outputs, (
            f"README.md line {b.line}: a ```{b.lang} block the test cannot run; use python or "
            "bash, or put a plain output block right after the shell block it belongs to")
    assert len(PY) >= 6 and len(SH) >= 4
    assert sum(b.skip is not None for b in BLOCKS) <= 1, "README examples should run, not be skipped"


def test_harness_matches_digits_shown():
    node, src = parse_shown("{'w': 0.53677, 'b': -17.3048}  in units")
    assert compare({"w": 0.536773, "b": -17.30475}, node, src) == []
    assert compare({"w": 0.53679, "b": -17.30475}, node, src)
    node, src = parse_shown("('stopped_early', 11, 6e-09): text")
    assert compare(("stopped_early", 11, 6.4e-9), node, src) == []
    assert compare(("stopped_early", 12, 6.4e-9), node, src)
    assert text_matches("best value 10.09 with lr=0.00506, ...", "best value 10.0899 with lr=0.005061, x") is None
    assert text_matches("best value 10.09 with", "best value 10.1 with") is not None
    assert shell_commands("pip install . && gradfit demo\ngradfit fit a.csv \\\n  'y ~ a*x' # c\n") == [
        ["pip", "install", "."], ["gradfit", "demo"], ["gradfit", "fit", "a.csv", "y ~ a*x"]]
