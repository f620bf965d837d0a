"""Every fenced code block of the documentation runs, and every code link points at real code.

Documents: README.md, docs/*.md and experiments/README.md. Each fenced block has a language:

* ```python  runs in a fresh `python -` subprocess;
* ```bash / ```sh  run with `bash -e -o pipefail`;
* ```toml  is parsed (and may be written to a file for later blocks); ```text is output or a
  listing and is not run. A block without a language is an error.

The blocks of one document run in order in one scratch directory (the document's "workspace"),
so a later block can use what an earlier one wrote (a run directory, a config). The workspace
mirrors a checkout: `experiments/` is a copy, `scoresde/`, `tests/`, `docs/`, `pyproject.toml`
are links, `.venv` is the interpreter running the tests, and `.venv/bin` leads PATH, so
`.venv/bin/python`, `python` and relative paths behave as in the repository. Runs land in the
workspace's `runs/`, never the repository's. When a block is run on its own (`-k`, `-m slow`),
the earlier blocks it may depend on are replayed first (default-tier blocks replay only
default-tier ones, so a default block may never depend on a slow one).

Directives: HTML comments on the lines right above a fence, invisible when rendered:

    <!-- doc-test: skip REASON -->          not run; the reason is required and shown by pytest -ra
    <!-- doc-test: slow -->                 run only with `pytest -m slow`
    <!-- doc-test: env KEY=VALUE ... -->    extra environment variables
    <!-- doc-test: append WORD ARGS... -->  append ARGS to each command (logical line) in which
                                            WORD is a token, e.g. `append scoresde.train
                                            train.steps=20`; command-line options and overrides
                                            given later win, so this shrinks a run's size
    <!-- doc-test: sub "OLD" "NEW" -->      replace the text OLD (which must occur) by NEW
    <!-- doc-test: write PATH -->           save the block as PATH in the workspace (not run)
    <!-- doc-test: same-as PATH -->         the block must equal the repository file PATH
    <!-- doc-test: requires MODULE -->      skip (with that reason) where MODULE cannot be imported,
                                            e.g. setuptools for an offline `pip install`

In ARGS, NEW and env values, {site} is a per-document directory on PYTHONPATH (for `pip install
--target {site}`) and {repo} the repository root. Nothing is skipped silently: a skip needs a
reason, every block is its own test case (`README.md:42`), unknown directives fail, and
`test_block_inventory` prints how many blocks run, are slow, are skipped, and are text.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments" / "README.md"])
DOCS = [d for d in DOCS if d.is_file()]
# documents whose code links are checked against the source (the ones this test's authors keep)
LINK_CHECKED = ["README.md", "docs/theory.md", "docs/guide.md", "docs/plugins.md", "experiments/README.md"]
RUN_LANGS = {"python", "bash", "sh"}
TEXT_LANGS = {"text", "toml", "json", "console", "diff", "ini"}
BLOCK_TIMEOUT = 900

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)[^`]*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")


@dataclass
class Block:
    doc: str            # path relative to the repository
    line: int           # 1-based line of the opening fence
    lang: str
    text: str
    directives: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    def has(self, name: str) -> bool:
        return any(d == name for d, _ in self.directives)

    def args(self, name: str) -> list[list[str]]:
        return [a for d, a in self.directives if d == name]

    @property
    def skip_reason(self) -> str | None:
        reasons = self.args("skip")
        return " ".join(reasons[0]) if reasons else None

    @property
    def runnable(self) -> bool:
        return self.lang in RUN_LANGS and not self.has("write") and not self.has("same-as")

    @property
    def tier(self) -> str:
        if self.skip_reason is not None:
            return "skip"
        return "slow" if self.has("slow") else "default"


KNOWN_DIRECTIVES = {"skip", "slow", "env", "append", "sub", "write", "same-as", "requires"}


def parse(doc: Path) -> list[Block]:
    """The fenced blocks of a markdown file with the directives written above each."""
    rel = doc.relative_to(REPO).as_posix()
    lines = doc.read_text().splitlines()
    blocks: list[Block] = []
    pending: list[tuple[str, list[str]]] = []
    pending_line = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        d = DIRECTIVE.match(line)
        if d:
            words = shlex.split(d.group("body"))
            if not words or words[0] not in KNOWN_DIRECTIVES:
                raise ValueError(f"{rel}:{i + 1}: unknown doc-test directive {d.group('body')!r} "
                                 f"(known: {', '.join(sorted(KNOWN_DIRECTIVES))})")
            if words[0] == "skip" and len(words) < 2:
                raise ValueError(f"{rel}:{i + 1}: `doc-test: skip` needs a reason")
            pending.append((words[0], words[1:]))
            pending_line = pending_line or i + 1
            i += 1
            continue
        m = FENCE.match(line)
        if m:
            fence = m.group("fence")
            start = i
            body = []
            i += 1
            while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                          and set(lines[i].strip()) == {fence[0]}):
                if re.match(rf"^ {{0,3}}{fence[0]}{{3,}}\s*[A-Za-z]", lines[i]):
                    raise ValueError(f"{rel}:{i + 1}: a fence with a language inside the block opened at line "
                                     f"{start + 1}; is that block's closing fence missing?")
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"{rel}:{start + 1}: code fence is never closed")
            indent = len(m.group("indent"))
            text = "\n".join(b[indent:] if b[:indent].isspace() else b for b in body) + "\n"
            lang = m.group("lang").lower()
            blocks.append(Block(rel, start + 1, lang, text, pending))
            pending, pending_line = [], 0
            i += 1
            continue
        if pending and line.strip():
            raise ValueError(f"{rel}:{pending_line}: doc-test directive is not directly above a code fence")
        i += 1
    if pending:
        raise ValueError(f"{rel}:{pending_line}: doc-test directive at the end of the file, above no fence")
    return blocks


ALL_BLOCKS = [b for doc in DOCS for b in parse(doc)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b.runnable]


# -- turning a block into what actually runs ----------------------------------------------------
def _logical_lines(text: str) -> list[str]:
    out, cur = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
        else:
            out.append(cur + line)
            cur = ""
    if cur:
        out.append(cur)
    return out


def _append_args(text: str, word: str, args: list[str]) -> tuple[str, int]:
    """Append args to every logical line in which `word` is a shell token; (new text, count)."""
    out, count = [], 0
    for line in _logical_lines(text):
        command, comment = line, ""
        m = re.search(r"\s+#\s.*$", line)
        if m and not line.lstrip().startswith("#"):
            command, comment = line[:m.start()], line[m.start():]
        try:
            tokens = shlex.split(command, comments=True)
        except ValueError:
            tokens = command.split()
        if word in tokens:
            command = command.rstrip() + " " + " ".join(shlex.quote(a) for a in args)
            count += 1
        out.append(command + comment)
    return "\n".join(out) + "\n", count


def prepared(block: Block, ws: "Workspace") -> str:
    text = block.text
    for args in block.args("sub"):
        if len(args) != 2:
            raise ValueError(f"{block.id}: `doc-test: sub` takes two quoted strings, got {args}")
        old, new = args[0], ws.fill(args[1])
        if old not in text:
            raise AssertionError(f"{block.id}: `doc-test: sub` text {old!r} is not in the block")
        text = text.replace(old, new)
    for args in block.args("append"):
        if len(args) < 2:
            raise ValueError(f"{block.id}: `doc-test: append` needs a word and arguments")
        text, count = _append_args(text, args[0], [ws.fill(a) for a in args[1:]])
        if count == 0:
            raise AssertionError(f"{block.id}: `doc-test: append {args[0]}` matched no command in the block")
    return text


class Workspace:
    """A scratch copy of the checkout in which one document's blocks run, in order."""

    def __init__(self, root: Path):
        self.root = root
        self.site = root / ".doc-site"
        self.site.mkdir(parents=True)
        shutil.copytree(REPO / "experiments", root / "experiments",
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        for name in ("scoresde", "tests", "docs", "pyproject.toml", "README.md", ".ci"):
            if (REPO / name).exists():
                (root / name).symlink_to(REPO / name)
        venv = Path(sys.prefix)
        if sys.prefix != sys.base_prefix and (venv / "bin" / "python").exists():
            (root / ".venv").symlink_to(venv)
        else:  # not in a venv: a stand-in whose python is this interpreter
            (root / ".venv" / "bin").mkdir(parents=True)
            shim = root / ".venv" / "bin" / "python"
            shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            shim.chmod(0o755)
        self.done: set[str] = set()
        self.failed: dict[str, str] = {}

    def fill(self, s: str) -> str:
        return s.replace("{site}", str(self.site)).replace("{repo}", str(REPO))

    def env(self, block: Block) -> dict:
        env = dict(os.environ)
        env["PATH"] = f"{self.root / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(self.site), str(REPO), env.get("PYTHONPATH", "")] if p)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
        for args in block.args("env"):
            for item in args:
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"{block.id}: `doc-test: env` takes KEY=VALUE, got {item!r}")
                env[key] = self.fill(value)
        return env

    def run(self, block: Block) -> None:
        if block.id in self.failed:
            raise AssertionError(f"{block.id} already failed in this session:\n{self.failed[block.id]}")
        text = prepared(block, self)
        if block.lang == "python":
            cmd = [sys.executable, "-"]
        else:
            cmd = ["bash", "-e", "-o", "pipefail", "-s"]
        proc = subprocess.run(cmd, input=text, cwd=self.root, env=self.env(block), capture_output=True,
                              text=True, timeout=BLOCK_TIMEOUT)
        self.done.add(block.id)
        if proc.returncode != 0:
            msg = (f"{block.id} ({block.lang}) exited with {proc.returncode}\n--- ran:\n{text}"
                   f"--- stdout (tail):\n{proc.stdout[-4000:]}\n--- stderr (tail):\n{proc.stderr[-4000:]}")
            self.failed[block.id] = msg
            raise AssertionError(msg)

    def write(self, block: Block) -> None:
        for args in block.args("write"):
            path = self.root / args[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text)
        self.done.add(block.id)

    def run_through(self, target: Block, include_slow: bool) -> None:
        """Run (once) every earlier block of target's document that it may depend on, then target."""
        for b in ALL_BLOCKS:
            if b.doc != target.doc or b.id in self.done:
                continue
            if b.line > target.line:
                break
            if b.has("write"):
                self.write(b)
            elif b.runnable and b.tier != "skip" and (b is target or b.tier == "default" or include_slow):
                for args in b.args("requires"):
                    for module in args:
                        pytest.importorskip(module, reason=f"{target.id} depends on {b.id}, which needs {module}")
                try:
                    self.run(b)
                except AssertionError as e:
                    if b is target:
                        raise
                    raise AssertionError(f"an earlier block that {target.id} may depend on failed: {e}") from None


@pytest.fixture(scope="session")
def workspaces(tmp_path_factory):
    cache: dict[str, Workspace] = {}

    def get(doc: str) -> Workspace:
        if doc not in cache:
            cache[doc] = Workspace(tmp_path_factory.mktemp(re.sub(r"\W", "_", doc)))
        return cache[doc]

    return get


def _params(blocks):
    out = []
    for b in blocks:
        marks = [pytest.mark.slow] if b.tier == "slow" else []
        out.append(pytest.param(b, id=b.id, marks=marks))
    return out


@pytest.mark.parametrize("block", _params(RUN_BLOCKS))
def test_block_runs(block: Block, workspaces):
    if block.skip_reason is not None:
        pytest.skip(f"{block.id}: {block.skip_reason}")
    for args in block.args("requires"):
        for module in args:
            pytest.importorskip(module, reason=f"{block.id} needs {module}")
    workspaces(block.doc).run_through(block, include_slow=block.tier == "slow")


# -- blocks that are not run ---------------------------------------------------------------------
def test_every_block_is_labelled_and_known():
    problems = []
    for b in ALL_BLOCKS:
        if not b.lang:
            problems.append(f"{b.id}: fenced block without a language (use ```text for output)")
        elif b.lang not in RUN_LANGS | TEXT_LANGS:
            problems.append(f"{b.id}: unknown block language {b.lang!r} (known: "
                            f"{', '.join(sorted(RUN_LANGS | TEXT_LANGS))})")
        if b.lang not in RUN_LANGS and any(d in ("skip", "slow", "env", "append", "sub") for d, _ in b.directives):
            problems.append(f"{b.id}: a {b.lang or 'text'} block is never run; its run directives do nothing")
    assert not problems, "\n".join(problems)


def test_toml_and_json_blocks_parse():
    for b in ALL_BLOCKS:
        if b.lang == "toml":
            try:
                tomllib.loads(b.text)
            except tomllib.TOMLDecodeError as e:
                pytest.fail(f"{b.id}: invalid TOML: {e}")
        elif b.lang == "json":
            json.loads(b.text)


def test_blocks_shown_from_files_match_the_files():
    for b in ALL_BLOCKS:
        for args in b.args("same-as"):
            path = REPO / args[0]
            assert path.is_file(), f"{b.id}: `same-as {args[0]}`: no such file"
            want = path.read_text().rstrip() + "\n"
            assert b.text.rstrip() + "\n" == want, (f"{b.id} differs from {args[0]}; copy the file into the "
                                                     f"document again")


def test_block_inventory(capsys):
    """Counts by kind; every runnable block is run (default or slow) or skipped with a reason."""
    counts: dict[str, int] = {}
    for b in ALL_BLOCKS:
        if b.runnable:
            kind = b.tier
            assert kind != "skip" or b.skip_reason.strip(), b.id
        elif b.has("write") or b.has("same-as"):
            kind = "file"
        else:
            kind = "text"
        counts[kind] = counts.get(kind, 0) + 1
    with capsys.disabled():
        print("\ndoc blocks: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    assert counts.get("default", 0) > 0


# -- links from the docs into the code ------------------------------------------------------------
LINK = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")


def _defined(name: str, source: str) -> bool:
    return re.search(rf"^\s*(?:async\s+def|def|class)\s+{re.escape(name)}\b|^\s*{re.escape(name)}\s*[:=]",
                     source, re.M) is not None


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces to -."""
    out = set()
    for line in md.read_text().splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", LINK_CHECKED)
def test_code_links_point_at_existing_definitions(doc):
    """Relative links resolve; a link whose text names code (`Class.method`, `function`) points at
    a file that defines each named class and function."""
    path = REPO / doc
    if not path.is_file():
        pytest.skip(f"{doc} does not exist yet")
    problems = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        for m in LINK.finditer(line):
            target = m.group("target")
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            file = (path.parent / target.split("#")[0]).resolve()
            if not file.exists():
                problems.append(f"{doc}:{lineno}: link target {target} does not exist")
                continue
            if file.suffix == ".md" and "#" in target:
                anchor = target.split("#", 1)[1]
                if anchor not in _anchors(file):
                    problems.append(f"{doc}:{lineno}: {target}: no heading with anchor #{anchor}")
            if file.suffix != ".py":
                continue
            source = file.read_text()
            for name in re.findall(r"`([^`]+)`", m.group("text")):
                name = name.split("(")[0].strip()
                if not re.fullmatch(r"[A-Za-z_][\w.]*", name) or \
                        file.with_suffix("").as_posix().endswith(name.replace(".", "/")):
                    continue  # not a name, or the module's own dotted path
                for part in name.split("."):
                    if not _defined(part, source):
                        problems.append(f"{doc}:{lineno}: `{name}` links to {target}, which does not define {part!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", [d.relative_to(REPO).as_posix() for d in DOCS])
def test_docs_hold_no_control_characters(doc):
    """No control characters, tabs included (a Python string written without r"" turns \\frac into
    a form feed and "rac", \\theta into a tab and "heta")."""
    bad = [(lineno, repr(ch)) for lineno, line in enumerate((REPO / doc).read_text().split("\n"), 1)
           for ch in line if ord(ch) < 32]
    assert not bad, f"{doc}: control characters at (line, char) {bad[:10]}"


def test_directive_grammar_examples():
    """The parser itself: directives attach to the next fence, append respects comments."""
    doc = REPO / "README.md"
    assert parse(doc)  # the README parses
    text, n = _append_args("python -m scoresde.train --config a.toml   # a comment\necho hi\n",
                           "scoresde.train", ["train.steps=3"])
    assert n == 1 and text.splitlines()[0] == "python -m scoresde.train --config a.toml train.steps=3   # a comment"
    text, n = _append_args("python -m scoresde.sample --checkpoint r \\\n  --n 64\n", "scoresde.sample", ["--n", "8"])
    assert n == 1 and text.strip().endswith("--n 64 --n 8")
    assert textwrap.dedent(" x").strip() == "x"


def test_guide_lists_only_real_command_line_flags(capsys):
    """Every --flag that docs/guide.md lists for python -m scoresde.{train,sample,evaluate} exists."""
    import importlib

    rows = [line for line in (REPO / "docs" / "guide.md").read_text().splitlines()
            if re.match(r"^\| `python -m scoresde\.\w+`", line)]
    assert len(rows) == 3, rows
    for row in rows:
        module = re.match(r"^\| `python -m (scoresde\.\w+)`", row).group(1)
        with pytest.raises(SystemExit):
            importlib.import_module(module).parse_args(["--help"])
        help_text = capsys.readouterr().out
        for flag in re.findall(r"`(--[a-z][a-z-]*)", row):
            assert re.search(rf"{re.escape(flag)}\b", help_text), f"docs/guide.md lists {flag} for {module}"
