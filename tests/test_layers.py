"""Layers run one way: ops (staff surfaces) builds on orders (the domain, the saga and what
customers reach); nothing under orders/ imports ops, not even inside a function."""

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def _imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def test_nothing_under_orders_imports_ops():
    offenders = []
    for path in sorted((ROOT / "orders").rglob("*.py")):
        relative = path.relative_to(ROOT)
        module = ".".join(relative.with_suffix("").parts)
        for lineno, name in _imported_modules(ast.parse(path.read_text(), str(path)), module):
            if name == "ops" or name.startswith("ops."):
                offenders.append(f"{relative}:{lineno} imports {name}")
    assert not offenders, "orders must not import ops:\n" + "\n".join(offenders)


def test_the_check_sees_function_level_and_relative_imports():
    source = "def f():\n    from ops.services import x\n    import ops\nfrom ..ops import y\n"
    names = {name for _, name in _imported_modules(ast.parse(source), "orders.saga.activities")}
    assert names == {"ops.services", "ops", "orders.ops"}
