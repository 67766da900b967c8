"""The code's own design (docs/architecture.md), checked: imports flow one way between the
layers, only the storage layer touches files in a database directory, the query and report layers
write only through the derived-table API, no function takes more than 12 parameters (more: a settings
dataclass), and no package's modules import each other in a circle."""

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


# A function that takes more settings than this takes a frozen settings dataclass instead (as indexer.plan's
# JobSettings, interventions.sweep's ValidationSettings, seeds' SweepSettings do). A command's callback is left out:
# click passes it one parameter per option of the command, and it builds the library's settings from them.
MAX_PARAMETERS = 12
# "path:qualified name" -> why it still takes more; remove its line once it is converted
MANY_PARAMETERS = {
}


def _functions(tree: ast.AST, prefix: str = "", in_class: bool = False):
    """(qualified name, node, whether it is a method) of every function, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node, in_class
            yield from _functions(node, f"{prefix}{node.name}.<locals>.", False)
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.", True)
        else:
            yield from _functions(node, prefix, in_class)


def _parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> int:
    """Its parameters: self or cls not counted (a method's first, unless a staticmethod); *args and **kwargs
    one each."""
    a = node.args
    count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    return count - (1 if method and not static and (a.posonlyargs or a.args) else 0)


def _is_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether click makes it a command or group (``@click.command()``, ``@export.command("fiftyone")``, ...)."""
    for d in node.decorator_list:
        f = d.func if isinstance(d, ast.Call) else d
        if isinstance(f, ast.Attribute) and f.attr in ("command", "group"):
            return True
    return False


def test_no_function_takes_too_many_parameters():
    many, listed = [], set()
    for rel, tree in _modules():
        for name, node, method in _functions(tree):
            n = _parameter_count(node, method)
            where = f"{rel.as_posix()}:{name}"
            if n <= MAX_PARAMETERS or _is_command(node):
                continue
            if where in MANY_PARAMETERS:
                listed.add(where)
                continue
            many.append(f"{where} (line {node.lineno}) takes {n} parameters")
    assert not many, f"more than {MAX_PARAMETERS} parameters: take a frozen settings dataclass instead\n" + "\n".join(many)
    converted = sorted(set(MANY_PARAMETERS) - listed)
    assert not converted, f"converted, drop them from MANY_PARAMETERS: {converted}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node that can run: the body of ``if TYPE_CHECKING:`` (imports for annotations only) left out."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _module_of(parts: list[str]) -> tuple[str, ...] | None:
    """The module ``saliencydb.<parts>`` names, as its path's parts (a package: its ``__init__``); None: none."""
    if parts and PACKAGE.joinpath(*parts).with_suffix(".py").is_file():
        return tuple(parts)
    if PACKAGE.joinpath(*parts, "__init__.py").is_file():
        return (*parts, "__init__")
    return None


def _imported_modules(rel: Path, tree: ast.Module):
    """(line, module) of every saliencydb module it imports, at module level or inside a function."""
    package = list(rel.parts[:-1])
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module.split(".") if node.module else []
            if node.level:
                target = package[: len(package) - (node.level - 1)] + module
            elif module[:1] == ["saliencydb"]:
                target = module[1:]
            else:
                continue
            for alias in node.names:  # `from . import x`: the module x, else a name of the package
                found = _module_of(target + [alias.name]) or _module_of(target)
                if found:
                    yield node.lineno, found
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found = _module_of(alias.name.split(".")[1:]) if alias.name.startswith("saliencydb.") else None
                if found:
                    yield node.lineno, found


def _package_graphs() -> dict[tuple[str, ...], dict[tuple[str, ...], dict[tuple[str, ...], int]]]:
    """Per package (saliencydb itself: ()), its modules' imports of modules of the same package:
    module -> {module imported: line}. Importing a package's module runs the package's ``__init__`` first; that is
    no edge, an import of the package is."""
    graphs: dict = {}
    for rel, tree in _modules():
        me = tuple(rel.with_suffix("").parts)
        edges = graphs.setdefault(me[:-1], {}).setdefault(me, {})
        for line, other in _imported_modules(rel, tree):
            if other[:-1] == me[:-1] and other != me:
                edges.setdefault(other, line)
    return graphs


def _cycles(edges: dict) -> list[set]:
    """The groups of modules that import each other, directly or through others (strongly connected, 2 or more)."""
    reach = {}
    for start in edges:
        seen, stack = set(), [start]
        while stack:
            for nxt in edges.get(stack.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        reach[start] = seen
    groups = {frozenset({a} | {b for b in reach[a] if a in reach.get(b, ())}) for a in edges if a in reach[a]}
    return sorted((set(g) for g in groups), key=sorted)


# "package: module, module, ..." -> why its modules still import each other in a circle (none today)
KNOWN_CYCLES: dict[str, str] = {}


def test_no_import_cycles_within_a_package():
    """No module of a package imports, directly or through siblings, a module that imports it back: at module level
    or inside a function (an import deferred to a call is still a circle); ``if TYPE_CHECKING:`` imports are left out.
    A source kind is a module of data/ of its own, over data.base, for this reason."""
    found, wrong = set(), []
    for package, edges in _package_graphs().items():
        for group in _cycles(edges):
            modules = sorted(".".join(m[len(package):]) for m in group)
            name = f"{'.'.join(package) or 'saliencydb'}: {', '.join(modules)}"
            found.add(name)
            if name not in KNOWN_CYCLES:
                links = [f"{'/'.join(a)}.py:{line} imports {'.'.join(b)}" for a in sorted(group)
                         for b, line in sorted(edges[a].items()) if b in group]
                wrong.append(f"{name}\n  " + "\n  ".join(links))
    assert not wrong, "import circles:\n" + "\n".join(wrong)
    assert set(KNOWN_CYCLES) <= found, f"broken, drop them from KNOWN_CYCLES: {sorted(set(KNOWN_CYCLES) - found)}"
