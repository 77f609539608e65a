"""The documentation runs: every ```python block of README.md and docs/**/*.md is executed.

One test per page. A page's blocks run in order in one namespace (a later block uses the names an
earlier one defined), in a temporary working directory (files a page writes -- checkpoints, plots
-- land there). A failure names the page, the block number and the block's first line; the
traceback points at the Markdown file's own line numbers.

Conventions, visible in the Markdown source:

* ``<!-- docs-test: skip -->`` on the line right before a fence: that block is not run (use
  sparingly; say in the prose why).
* ``<!-- docs-test: allow-key-reuse -->`` anywhere in a page: the page runs without
  ``jax_debug_key_reuse`` (pages that reproduce other libraries' key-reuse bugs on purpose).
  Every other page runs with key-reuse checking on, like the rest of the suite.
* ``<!-- docs-test: own-process NAME="value" ... -->`` anywhere in a page: the page runs in a
  fresh Python process with those environment variables (a page that needs JAX configured
  before it starts, e.g. ``XLA_FLAGS="--xla_force_host_platform_device_count=8"``). Without
  pytest-xdist, such pages start in the background at the first page test, on the other core.

Only ```python fences are run; ```bash, ```text, ```console and others are not. The examples
are compiled with ``jax_disable_most_optimizations`` (compiling dominates their run time; the
results are the same computations).

Other tests: every public name is in the API reference, every page is in the nav, and the site
builds with ``mkdocs build --strict`` into a temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARK = "<!-- docs-test: skip -->"
KEY_REUSE_MARK = "<!-- docs-test: allow-key-reuse -->"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")


@dataclass
class Block:
    number: int  # 1-based, counting the page's python blocks (skipped ones included)
    line: int  # 1-based line of the first code line in the Markdown file
    code: str
    skip: bool


def pages() -> list[Path]:
    """README.md and the docs pages that hold python blocks."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in found if p.is_file() and python_blocks(p.read_text(encoding="utf-8"))]


def _is_python(info: str) -> bool:
    words = info.replace("{", " ").replace("}", " ").replace(".", " ").split()
    return bool(words) and words[0] in ("python", "py", "python3")


def python_blocks(text: str) -> list[Block]:
    """The fenced python blocks of a Markdown text, dedented to their fence's indentation."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        end = i + 1
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if _is_python(info):
            body = [
                ln[len(indent) :] if ln.startswith(indent) else ln.lstrip()
                for ln in lines[i + 1 : end]
            ]
            previous = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            blocks.append(
                Block(
                    number=len(blocks) + 1,
                    line=i + 2,
                    code="\n".join(body) + "\n",
                    skip=previous == SKIP_MARK,
                )
            )
        i = end + 1
    return blocks


def _page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def run_page(path: Path) -> int:
    """Run the page's blocks in one namespace; returns how many ran. Raises on the first failure."""
    text = path.read_text(encoding="utf-8")
    # The page runs as a script does: in a module registered in sys.modules (dataclasses looks
    # a class's module up there to read annotations such as ``rate: float | jax.Array``).
    page_module = types.ModuleType(f"docs_{path.stem.replace('-', '_')}")
    namespace: dict = page_module.__dict__
    sys.modules[page_module.__name__] = page_module
    ran = 0
    try:
        for block in python_blocks(text):
            if block.skip:
                continue
            # Pad with newlines so that tracebacks show the Markdown file's own line numbers.
            source = "\n" * (block.line - 1) + block.code
            try:
                exec(compile(source, str(path), "exec"), namespace)
            except Exception as error:
                first = next((ln for ln in block.code.splitlines() if ln.strip()), "")
                raise AssertionError(
                    f"{_page_id(path)}: python block {block.number} (line {block.line}, "
                    f"starting {first!r}) failed with {type(error).__name__}: {error}\n\n"
                    + "".join(traceback.format_exception(error))
                ) from None
            ran += 1
    finally:
        sys.modules.pop(page_module.__name__, None)
    return ran


def own_process_env(text: str) -> dict[str, str] | None:
    """The environment of a page marked ``<!-- docs-test: own-process NAME="value" ... -->``."""
    m = re.search(r"<!-- docs-test: own-process(?P<env>[^>]*?)-->", text)
    if m is None:
        return None
    return dict(re.findall(r'(\w+)="([^"]*)"', m["env"]))


def _run_here(page: Path) -> None:
    allow_reuse = KEY_REUSE_MARK in page.read_text(encoding="utf-8")
    with jax.debug_key_reuse(not allow_reuse):
        run_page(page)


_BACKGROUND: dict[Path, tuple[subprocess.Popen, Path]] = {}


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)


def _start_own_process(page: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """Run ``page`` in a fresh process (``python tests/test_docs.py PAGE``) in its own directory;
    its output goes to a file there (no pipe to fill up)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"docs-{page.stem}-"))
    log = workdir / "output.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, str(page)],
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": _pythonpath(), "MPLBACKEND": "Agg", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


_STARTED = False


def _start_background_pages(session: pytest.Session) -> None:
    """Start the selected own-process pages once, at the first page test, so that they run on
    another core while this process runs the other pages (not under pytest-xdist, which already
    spreads the pages over workers)."""
    global _STARTED
    if _STARTED or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    _STARTED = True
    selected = {
        item.callspec.params["page"]
        for item in session.items
        if getattr(item, "originalname", None) == "test_page_code_runs"
    }
    for page in sorted(selected):
        env = own_process_env(page.read_text(encoding="utf-8"))
        if env is not None:
            _BACKGROUND[page] = _start_own_process(page, env)


@pytest.mark.parametrize("page", pages(), ids=_page_id)
def test_page_code_runs(page: Path, tmp_path, monkeypatch, request):
    _start_background_pages(request.session)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    env = own_process_env(page.read_text(encoding="utf-8"))
    if env is None:
        _run_here(page)
        return
    # A page that needs JAX configured before it starts (e.g. 8 host devices): a fresh process.
    proc, log = _BACKGROUND.pop(page, None) or _start_own_process(page, env)
    try:
        returncode = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if returncode != 0:
        raise AssertionError(log.read_text()[-12000:])
    shutil.rmtree(log.parent, ignore_errors=True)


def test_every_page_is_in_the_nav():
    """A docs page missing from mkdocs.yml's nav is only reported by mkdocs as INFO, not failed."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in (ROOT / "docs").rglob("*.md"):
        rel = page.relative_to(ROOT / "docs").as_posix()
        assert rel in config, f"docs/{rel} is not listed in mkdocs.yml's nav"


# Public modules whose ``__all__`` the API reference (docs/api/*.md) must cover.
API_MODULES = (
    "stoax",
    "stoax.keys",
    "stoax.nn",
    "stoax.random",
    "stoax.transforms",
    "stoax.audit",
    "stoax.sharding",
    "stoax.distributed",
    "stoax.train",
    "stoax.inference",
    "stoax.examples.digits",
    "stoax.interop.linen",
    "stoax.interop.nnx",
    "stoax.interop.equinox",
    "stoax.interop.porting",
)


def test_api_reference_lists_every_public_name():
    """Every name in a public module's ``__all__`` has a ``::: module.name`` entry (a submodule
    counts when it has a page of its own; a re-export counts when documented under either path)."""
    import importlib

    text = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "api").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)", text, flags=re.MULTILINE))
    missing = []
    for module_name in API_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in getattr(module, "__all__", []):
            value = getattr(module, name)
            paths = {f"{module_name}.{name}"}
            home = getattr(value, "__module__", None)
            if isinstance(value, type(sys)):
                paths.add(value.__name__)
            elif home:
                public = ".".join(p for p in home.split(".") if not p.startswith("_"))
                paths.update({f"{public}.{name}", f"stoax.{name}"})
            for other in API_MODULES:  # documented under another public module that exports it
                if getattr(importlib.import_module(other), name, None) is value:
                    paths.add(f"{other}.{name}")
            if not paths & documented:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"not in the API reference (docs/api/*.md): {missing}"


def test_block_parser():
    text = (
        "intro\n```python\na = 1\n```\n\n```bash\nexit 1\n```\n"
        f"{SKIP_MARK}\n```python\nraise SystemExit\n```\n"
        '=== "Tab"\n\n    ```python\n    b = a + 1\n    ```\n'
    )
    blocks = python_blocks(text)
    assert [(b.code, b.skip) for b in blocks] == [
        ("a = 1\n", False),
        ("raise SystemExit\n", True),
        ("b = a + 1\n", False),
    ]
    assert blocks[0].line == 3


def unclosed_fence(text: str) -> int | None:
    """The 1-based line of a code fence that is never closed, or None.

    CommonMark: a fence closes at a line of the same character, at least as long, with nothing
    after it; a line like "``` text" inside a block is content, not a close -- so everything
    after it renders as code."""
    opened: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        m = _FENCE.match(line)
        if opened is None:
            if m:
                opened = (number, m["fence"])
        elif (
            m
            and m["fence"][0] == opened[1][0]
            and len(m["fence"]) >= len(opened[1])
            and not m["info"].strip()
        ):
            opened = None
    return None if opened is None else opened[0]


@pytest.mark.parametrize(
    "page",
    [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))],
    ids=_page_id,
)
def test_code_fences_are_closed(page: Path):
    """An unclosed fence turns the rest of the page into one code block (docs/training.md had
    one: a closing fence with text after it)."""
    line = unclosed_fence(page.read_text(encoding="utf-8"))
    assert line is None, f"{_page_id(page)}: the code fence opened at line {line} is never closed"


def test_unclosed_fence_is_found():
    assert unclosed_fence("a\n```python\nx = 1\n```\n\n~~~~\n```\n~~~~\n") is None
    assert unclosed_fence("```text\nrow\n``` Because the seed...\n\nmore\n") == 1
    assert unclosed_fence("ok\n\n````md\n```\n```\n") == 3  # a shorter fence is content
    assert unclosed_fence('=== "Tab"\n\n    ```python\n    b = 1\n    ```\n') is None


def test_failure_names_page_and_block(tmp_path):
    page = tmp_path / "bad.md"
    page.write_text("```python\nx = 1\n```\n\n```python\n\ny = x + undefined_name\n```\n")
    with pytest.raises(AssertionError, match=r"python block 2 \(line 6.*NameError") as info:
        run_page(page)
    assert "line 7" in str(info.value)  # the traceback uses the Markdown file's line numbers


def test_site_builds_strict(tmp_path):
    for module, package in (
        ("mkdocs", "mkdocs"),
        ("material", "mkdocs-material"),
        ("mkdocstrings", "mkdocstrings[python]"),
    ):
        pytest.importorskip(module, reason=f"{package} is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, (
        f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    )
    assert (tmp_path / "site" / "index.html").exists()
    # Read as a reader would, without a browser: no Sphinx role (":func:`x`") shows literally.
    literal = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):(?:`|<code>)")
    shown = [
        f"{page.relative_to(tmp_path / 'site')}: {m.group(0)}"
        for page in (tmp_path / "site").rglob("*.html")
        for m in literal.finditer(page.read_text(encoding="utf-8"))
    ]
    assert not shown, f"literal Sphinx roles in the built HTML: {shown[:10]}"
    # Layers' call arguments are in the reference, not only their constructors'.
    nn_page = (tmp_path / "site" / "api" / "nn" / "index.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", nn_page)
    assert "Called as Linear(...)(x, *, key=None)" in text
    assert "Called as MultiHeadAttention(...)(query, context=None, *, mask=None, key=None)" in text
    # ... with each call argument explained (__call__'s "Args:"), inherited calls included.
    assert "Called as LSTMCell(...)(carry, x, *, key=None)" in text
    assert "seq_lengths: (*batch,) ints, the real length of each sequence" in text
    assert text.count("Call arguments") >= 30


if __name__ == "__main__":  # run one page here: python tests/test_docs.py PAGE
    jax.config.update(
        "jax_default_prng_impl", os.environ.get("STOAX_TEST_PRNG_IMPL", "threefry2x32")
    )
    _run_here(Path(sys.argv[1]).resolve())
