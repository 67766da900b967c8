"""The code's own design (docs/architecture.md), checked: imports flow one way between the
layers, only the storage layer touches files in a database directory, and the query and report
layers write only through the derived-table API."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "saliencydb"

# bottom to top; a module imports only from its own package and the layers below it
LAYERS = [
    {"errors", "lazy", "faults", "progress", "memory", "results"},
    {"schemas"},
    {"storage"},
    {"data"},
    {"models"},
    {"saliency"},
    {"indexer"},
    {"query"},
    {"explain"},
    {"interventions", "report", "export"},
    {"serve"},  # the web app, over the query and explain layers
    {"demo"},
    {"seeds"},  # orchestration too, over the demo: it trains the demo model with other seeds
    {"cli"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        yield rel, ast.parse(path.read_text(encoding="utf-8"))


def _imports(rel: Path, tree: ast.Module):
    """(line, top-level saliencydb package imported) for every import, at any depth."""
    package = rel.parts[:-1] if rel.name != "__init__.py" else rel.parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package)[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # `from .. import x` at the top: x is a package
                    target = [a.name for a in node.names][:1]
            elif node.module and node.module.startswith("saliencydb"):
                target = node.module.split(".")[1:] or [a.name for a in node.names][:1]
            else:
                continue
            yield node.lineno, ".".join(target), target[0]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("saliencydb."):
                    parts = a.name.split(".")[1:]
                    yield node.lineno, ".".join(parts), parts[0]


def _owner(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_module_has_a_layer():
    owners = {_owner(rel) for rel, _ in _modules()} - {"__init__"}
    assert owners <= set(LEVEL), f"add {sorted(owners - set(LEVEL))} to LAYERS and docs/architecture.md"


def test_imports_flow_one_way():
    wrong = []
    for rel, tree in _modules():
        owner = _owner(rel)
        if owner == "__init__":
            continue
        for line, full, top in _imports(rel, tree):
            if top != owner and LEVEL.get(top, -1) >= LEVEL[owner]:
                wrong.append(f"{rel}:{line} imports {full} ({owner} sits below {top})")
    assert not wrong, "\n".join(wrong)


def test_readers_import_no_writer():
    """The query, explain and report layers reach the writer lock only through storage.derived."""
    wrong = []
    for rel, tree in _modules():
        if _owner(rel) not in {"query", "explain", "report"}:
            continue
        for line, full, top in _imports(rel, tree):
            if full.startswith(("storage.writer", "indexer")):
                wrong.append(f"{rel}:{line} imports {full}")
        text = (PACKAGE / rel).read_text(encoding="utf-8")
        if "DatabaseWriter" in text:
            wrong.append(f"{rel} names DatabaseWriter")
    assert not wrong, "\n".join(wrong)


# file operations that create, replace or delete files, or read the database's formats
FILE_OPS = re.compile(r"\bos\.(replace|rename|remove|unlink)\(|\.unlink\(|rmtree\(|\.write_(bytes|text)\(|"
                      r"\bpq\.(write_table|read_table|ParquetFile|ParquetWriter)\b|faiss\.(write_index|read_index)\(|"
                      r"\bMANIFEST\b(?! =)|manifest\.json|\bopen\([^)]*['\"][wax]b?['\"]")
# files outside any database directory, each for a stated reason
OUTSIDE_DATABASES = {
    "demo.py": "the trained demo model in the user's cache directory",
    "explain/gallery.py": "the gallery's index.html in its --out directory",
    "saliency/reference_stats.py": "reads the reference statistics shipped inside the package",
    "schemas/__init__.py": "exports the manifest's file name",
    "serve/api.py": "an uploaded image in a temporary file for the one request that profiles it",
    "schemas/manifest.py": "defines the manifest's file name (no file I/O)",
    "serve/sqlproc.py": "reads /proc/self/status, the kernel's account of the SQL child's memory",
}


def test_only_storage_touches_database_files():
    wrong = []
    for rel, _ in _modules():
        if _owner(rel) == "storage" or str(rel) in OUTSIDE_DATABASES:
            continue
        for n, line in enumerate((PACKAGE / rel).read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if FILE_OPS.search(code):
                wrong.append(f"{rel}:{n}: {line.strip()}")
    assert not wrong, "file operations outside saliencydb/storage (move them there, or say why in OUTSIDE_DATABASES):\n" + "\n".join(wrong)


@pytest.mark.parametrize("limit", [60])
def test_no_long_functions(limit):
    """Small named steps: no function in the library is longer than ``limit`` lines."""
    long = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)


def test_no_issue_numbers_or_outside_documents_in_code():
    wrong = []
    for rel, _ in _modules():
        for n, line in enumerate((PACKAGE / rel).read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bissue \d+\b|\bDESIGN\b|DESIGN\.md|§", line, re.I):
                wrong.append(f"{rel}:{n}: {line.strip()}")
    assert not wrong, "\n".join(wrong)


def test_cli_modules_stay_small():
    """The CLI is a thin layer: each of its modules stays under 300 lines."""
    big = [f"{p.name} ({n} lines)" for p in sorted((PACKAGE / "cli").glob("*.py"))
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300]
    assert not big, ", ".join(big)
