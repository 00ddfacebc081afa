"""Every fenced code block in README.md and docs/*.md runs here, or says why it cannot.

The scheme, for whoever writes the docs: an HTML comment on the line right before a fence marks a block.

    <!-- not run: REASON -->                 shown, never run; REASON names the data, hardware or time it needs
    <!-- run with "NEW" for "OLD", ... -->   runs with each OLD text replaced by NEW: a cheaper variant (fewer
                                             epochs), stated in the marker; every OLD must occur in the block

Unmarked ```bash blocks run in bash (-e: every command must succeed), unmarked ```python blocks in the venv's
python; ```text blocks are output and never run. Any other language, or a fence with none, fails the check.
The blocks of one file run in order in one temporary directory, so a later block may use what an earlier one
wrote (train, then export the run), with the venv's bin/ first on PATH: `rubik` and `python` are the venv's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"bash": ["bash", "-euo", "pipefail", "-c"], "python": [sys.executable, "-c"]}
OUTPUT = {"text"}
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.*?)\s*-->")
RUN_WITH = re.compile(r"<!--\s*run with\s+(?P<pairs>.*?)\s*-->")
PAIR = re.compile(r'"(?P<new>[^"]*)" for "(?P<old>[^"]*)"')
BLOCK_TIMEOUT = 600  # s; a block that hangs fails instead of stalling the suite


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    marker: str  # the comment line before the fence, or ""

    @property
    def where(self) -> str:
        name = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path.name
        return f"{name}:{self.line}"

    def variant(self) -> str:
        """The source to run: the block itself, or its marked cheaper variant."""
        source, m = self.source, RUN_WITH.fullmatch(self.marker)
        for pair in PAIR.finditer(m["pairs"]) if m else ():
            source = source.replace(pair["old"], pair["new"])
        return source


def read_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
        assert end is not None, f"{path.name}:{i + 1}: a fence that is never closed"
        prev = lines[i - 1].strip() if i else ""
        marker = prev if prev.startswith("<!--") else ""
        blocks.append(Block(path, i + 1, m[1], "\n".join(lines[i + 1:end]) + "\n", marker))
        i = end + 1
    return blocks


def problems(block: Block) -> list[str]:
    """What makes a block neither runnable nor properly marked (empty: fine)."""
    if block.lang not in RUNNABLE and block.lang not in OUTPUT:
        return [f"{block.where}: fence language {block.lang!r}: use bash, python (run) or text (output)"]
    if not block.marker:
        return []
    if block.lang in OUTPUT:
        return [f"{block.where}: a ```text block is never run: drop the marker {block.marker}"]
    if m := NOT_RUN.fullmatch(block.marker):
        return [] if m["reason"] else [f"{block.where}: 'not run' needs a reason"]
    if m := RUN_WITH.fullmatch(block.marker):
        pairs = list(PAIR.finditer(m["pairs"]))
        if not pairs:
            return [f'{block.where}: write the variant as run with "NEW" for "OLD"']
        return [f"{block.where}: the variant replaces {p['old']!r}, which is not in the block"
                for p in pairs if p["old"] not in block.source]
    return [f"{block.where}: unknown marker {block.marker} (not run: REASON, or run with \"NEW\" for \"OLD\")"]


def to_run(block: Block) -> bool:
    return block.lang in RUNNABLE and not NOT_RUN.fullmatch(block.marker)


def test_every_block_runs_or_says_why_not():
    found = [p for path in DOCS for b in read_blocks(path) for p in problems(b)]
    assert not found, "\n".join(found)
    assert (ROOT / "docs").is_dir() and len(DOCS) > 5, "README.md and docs/*.md"


def test_dangling_markers_fail_the_check():
    """A marker away from its fence would silently stop marking it: every marker sits right before one."""
    for path in DOCS:
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines):
            if NOT_RUN.search(line) or RUN_WITH.search(line):
                assert n + 1 < len(lines) and lines[n + 1].startswith("```"), \
                    f"{path.relative_to(ROOT)}:{n + 1}: a marker must be the line right before a fence"


def test_the_scheme_catches_an_unmarked_or_wrong_block(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text('```\nls\n```\n\n<!-- run with "--epochs 1" for "--epochs 9" -->\n```bash\nrubik train\n```\n'
                   "\n<!-- not run: -->\n```bash\nrubik demo\n```\n")
    found = [p for b in read_blocks(doc) for p in problems(b)]
    assert len(found) == 3 and "language ''" in found[0] and "'--epochs 9'" in found[1] and "reason" in found[2]


def rubik_commands(source: str) -> list[str]:
    """The argument strings of each `rubik`, `./rubik.sh` or `-m rubik.cli` command in a shell block."""
    out = []
    for line in source.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        m = re.match(r"(?:rubik|\./rubik\.sh|.*-m rubik\.cli)\s+(.*)$", line)
        if m and m[1].split()[0] != "test":  # ./rubik.sh test is pytest, not a rubik command
            out.append(m[1])
    return out


def test_commands_that_are_not_run_still_parse():
    """A block the tests cannot run still uses only commands and flags that exist (argparse of `rubik`)."""
    from rubik.cli import build_parser

    bad = []
    for path in DOCS:
        for block in read_blocks(path):
            for args in rubik_commands(block.source) if block.lang == "bash" and not to_run(block) else ():
                try:
                    build_parser().parse_args(shlex.split(args))
                except SystemExit:
                    bad.append(f"{block.where}: rubik {args}")
    assert not bad, "these do not parse (see stderr):\n" + "\n".join(bad)
    found = rubik_commands("./rubik.sh demo  # x\n./rubik.sh test\ntorchrun -m rubik.cli train \\\n  --qat\n")
    assert [shlex.split(a) for a in found] == [["demo"], ["train", "--qat"]]
    with pytest.raises(SystemExit):  # what a flag that does not exist does
        build_parser().parse_args(["train", "--no-such-flag"])


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_docs_resolve():
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                heads = {slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
                if anchor not in heads:
                    broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_ci_runs_the_readme_test_command():
    """The README's first block is the two commands, and .ci/run runs the test one."""
    first = read_blocks(ROOT / "README.md")[0]
    commands = [line.split("#")[0].strip() for line in first.source.splitlines()]
    assert commands == ["./rubik.sh demo", "./rubik.sh test"]
    assert re.search(r"^\./rubik\.sh test$", (ROOT / ".ci" / "run").read_text(), re.M)


def run_doc(path: Path, workdir: Path) -> list[tuple[Block, subprocess.CompletedProcess, float]]:
    """Run a file's runnable blocks in order in `workdir`; stop at the first failure."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    done = []
    for block in filter(to_run, read_blocks(path)):
        start = time.perf_counter()
        proc = subprocess.run([*RUNNABLE[block.lang], block.variant()], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=BLOCK_TIMEOUT)
        done.append((block, proc, time.perf_counter() - start))
        if proc.returncode:
            break
    return done


# Longest first (by lines run), so the two workers finish close together.
RUN_DOCS = sorted((p for p in DOCS if any(map(to_run, read_blocks(p)))),
                  key=lambda p: -sum(b.source.count("\n") for b in read_blocks(p) if to_run(b)))


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory) -> dict[Path, Future]:
    """Every file's blocks, started at once on two workers (one thread each): the files are independent."""
    assert (Path(sys.executable).parent / "rubik").exists(), "run the tests with the venv's python (./rubik.sh test)"
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {p: pool.submit(run_doc, p, tmp_path_factory.mktemp(p.stem)) for p in RUN_DOCS}
    yield runs
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("path", RUN_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_blocks_run(path, doc_runs):
    done = doc_runs[path].result()
    for block, proc, seconds in done:
        print(f"{block.where}: {seconds:.1f} s")
        assert proc.returncode == 0, (f"{block.where} failed (exit {proc.returncode}):\n{block.variant()}\n"
                                      f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
    assert len(done) == sum(map(to_run, read_blocks(path)))
