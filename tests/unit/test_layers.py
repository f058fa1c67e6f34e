"""The shape of the house: imports go one way, nothing imports in a circle, and one function signs.

Layers, top to bottom (a layer may import any layer below it, never one above, nor a sibling):
    cli → client → serving → api → acme → ra → provisioners → status → ca → {store, audit} → shared modules
and `policy/`, `kms/` and `ceremony/` import nothing from `appliance/`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPLIANCE = ROOT / "appliance"

LAYERS: dict[str, int] = {
    "cli": 0, "client": 1, "serving": 2, "api": 3, "acme": 4, "ra": 5, "provisioners": 6, "status": 7, "ca": 8,
    "store": 9, "audit": 9,
}
SHARED = {"config", "errors", "names", "metrics", "certutil", "atomic_file"}  # appliance/<name>.py
SHARED_RANK = 10


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in APPLIANCE.rglob("*.py") if "migrations" not in p.parts}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines of `if TYPE_CHECKING:` blocks: imports for annotations only, never executed."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path, known: set[str], *, runtime_only: bool) -> set[str]:
    """Every appliance module `path` imports (at module level or inside functions)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree) if runtime_only else set()
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x`, `from .y import x`
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m.split(".")[0] == "appliance" and m != "appliance"}


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) < 2:
        return "appliance", SHARED_RANK
    if parts[1] in LAYERS:
        return parts[1], LAYERS[parts[1]]
    return "shared", SHARED_RANK


def test_appliance_top_level_holds_packages_and_a_handful_of_shared_modules():
    loose = {p.stem for p in APPLIANCE.glob("*.py")} - {"__init__"}
    assert loose <= SHARED, f"move these into the package of their role: {sorted(loose - SHARED)}"
    packages = {p.name for p in APPLIANCE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS), f"packages and layers differ: {sorted(packages ^ set(LAYERS))}"


def test_imports_only_go_down_the_layers():
    known = set(modules())
    wrong = []
    for name, path in modules().items():
        mine, rank = layer(name)
        for target in imports(path, known, runtime_only=False):
            theirs, their_rank = layer(target)
            if their_rank < rank or (their_rank == rank and theirs != mine):
                wrong.append(f"{name} ({mine}) imports {target} ({theirs})")
    assert not wrong, "imports that go up (or sideways):\n" + "\n".join(sorted(wrong))


def test_no_import_cycles_in_appliance():
    known = set(modules())
    graph = {name: imports(path, known, runtime_only=True) & known for name, path in modules().items()}
    # A package's __init__ re-exporting its own modules is not a cycle through them.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and t in graph)}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_policy_kms_and_ceremony_import_nothing_from_appliance():
    for package in ("policy", "kms", "ceremony"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                assert not any(n.split(".")[0] == "appliance" for n in names), f"{path} imports {names}"


def test_one_function_calls_the_issuers_signing_path():
    """`Issuer.record_and_sign` and `SSHCA.record_and_sign` (record, then sign through kms/) are called only by the
    pipeline's steps for X.509 and for SSH, which only `Pipeline._run` runs (for `issue` and `issue_ssh`)."""
    callers = []
    for name, path in modules().items():
        for func in ast.walk(ast.parse(path.read_text())):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                callers += [f"{name}.{func.name}" for node in ast.walk(func)
                            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                            and node.func.attr == "record_and_sign"]
    assert sorted(callers) == ["appliance.ra.pipeline._ssh", "appliance.ra.pipeline._x509"], callers
