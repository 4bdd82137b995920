"""The shape of ``archive_tool`` (issue 27): every module imports on its own, the import graph
has no circle, no module reaches into another's private names, and no module or package
outgrows a room a newcomer can read. Read from the source with ``ast``, so a circle hidden
in a function-level import counts as much as one at the top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "archive_tool"
ROOT = PKG.parent
MAX_LINES = 400
MAX_MODULES = 12
# Compat aliases for old import paths (outside callers only; see its docstring).
COMPAT = "archive_tool.bulk"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_pkg = MODULES[mod].name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mod: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in *mod*, at any
    depth (top level, functions, conditionals)."""
    tree = ast.parse(MODULES[mod].read_text(), str(MODULES[mod]))
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, node)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES
                           else (base, a.name, node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the archive_tool modules (or packages, for a name imported from one) it
    imports. A package's own ``__init__`` importing its submodules is not a circle by
    itself: a submodule needs its parent package started, not finished."""
    return {mod: {t for t, _name, _line in _imports(mod) if t in MODULES} - {mod}
            for mod in MODULES}


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(g, WHITE)
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = GREY
        stack.append(n)
        for m in sorted(g[n]):
            if color[m] == GREY:
                return stack[stack.index(m):] + [m]
            if color[m] == WHITE and (found := visit(m)):
                return found
        stack.pop()
        color[n] = BLACK
        return None

    for n in sorted(g):
        if color[n] == WHITE and (found := visit(n)):
            return found
    return None


def test_the_graph_walk_sees_every_kind_of_import():
    """The walk itself: a module import, a name from a package and a function-level
    import are edges; a hand-made circle is found."""
    g = _graph()
    assert "archive_tool.sweep.step" in g["archive_tool.sweep.sessions"]
    assert "archive_tool" in g["archive_tool.cli.group"]  # __version__ from the package
    assert "archive_tool.catalog.report" in g["archive_tool.cli.ops"]  # inside a function
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_archive_tool_import_graph_has_no_circle():
    assert _cycle(_graph()) is None, "import circle: " + " -> ".join(_cycle(_graph()) or [])


def test_no_module_imports_another_modules_private_names():
    bad = []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        aliases = set()  # names bound to an archive_tool module in this file
        for target, name, line in _imports(mod):
            if target.split(".")[0] != "archive_tool":
                continue
            if name is not None and _is_private(name):
                bad.append(f"{mod}:{line} imports {target}.{name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _resolve(mod, node).startswith("archive_tool"):
                aliases |= {a.asname or a.name for a in node.names
                            if f"{_resolve(mod, node)}.{a.name}" in MODULES}
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names
                            if a.asname and a.name.startswith("archive_tool")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _is_private(node.attr)):
                bad.append(f"{mod}:{node.lineno} reaches into {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_only_outside_callers_use_the_compat_paths():
    bad = [f"{mod}:{line} imports {target}" for mod in MODULES if not mod.startswith(COMPAT)
           for target, _n, line in _imports(mod)
           if target == COMPAT or target.startswith(COMPAT + ".")]
    assert not bad, "\n".join(bad)


def test_function_level_imports_of_the_library_only_in_cli_commands():
    """Inside the library a function-level import of another module hid a circle (issue
    27); only the CLI's commands import the library late, so `--help` loads no engine."""
    bad = []
    for mod, path in MODULES.items():
        if mod.startswith("archive_tool.cli."):
            continue
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [_resolve(mod, node)])
                bad += [f"{mod}:{node.lineno} imports {n}" for n in names
                        if n.split(".")[0] == "archive_tool"]
    assert not bad, "\n".join(bad)


def test_the_command_line_loads_no_engine_until_a_command_runs():
    """Why the CLI's imports sit inside its commands: `--help` and every shell-completion
    TAB start this program; they load click and the option helpers, not the engine."""
    r = subprocess.run([sys.executable, "-c", (
        "import sys\n"
        "from archive_tool.cli.app import cli\n"
        "assert cli.commands\n"
        "late = [m for m in sys.modules if m.startswith(('archive_tool.engine',"
        " 'archive_tool.catalog', 'archive_tool.retention', 'archive_tool.restore'))"
        " or m in ('zstandard', 'yaml', 'sqlite3', 'tqdm')]\n"
        "assert not late, late\n")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_no_module_over_400_lines():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big


def test_no_package_over_12_modules():
    sizes = {str(d.relative_to(ROOT)): len(list(d.glob("*.py")))
             for d in [PKG, *PKG.rglob("*")] if (d / "__init__.py").is_file()}
    assert all(n >= 1 for n in sizes.values())
    big = {d: n for d, n in sizes.items() if n > MAX_MODULES}
    assert not big, big


@pytest.mark.parametrize("mod", [m for m in MODULES if m != "archive_tool.__main__"])
def test_each_module_imports_alone_in_a_fresh_interpreter(mod):
    """A module that only works after some other module was imported first hides a
    circle or an order dependency; __main__ runs the CLI (test_cli runs it)."""
    r = subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_old_bulk_paths_still_import_the_moved_modules():
    """0.1.x scripts' `archive_tool.bulk.<module>` imports keep working through 0.2, and
    name the very module objects (a monkeypatch through either path hits the same code)."""
    r = subprocess.run([sys.executable, "-c", (
        "import importlib, archive_tool.bulk as b\n"
        "from archive_tool.bulk.sweep import sweep\n"
        "from archive_tool.bulk import catalog, stale\n"
        "from archive_tool.sweep.sessions import sweep as new_sweep\n"
        "assert sweep is new_sweep and stale.finalize_stale and catalog.find\n"
        "for old, new in b.MOVED.items():\n"
        "    assert importlib.import_module('archive_tool.bulk.' + old)"
        " is importlib.import_module(new), old\n")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
