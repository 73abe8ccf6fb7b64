"""The bundle's BentoML services, read from service.py without importing it (that would load
every runner): the entry service `Gateway` and the services it depends on. Every deployment
target (Kubernetes, BentoCloud) must run exactly these, one scaling unit each."""

from __future__ import annotations

import ast
from pathlib import Path

from contract.names import BUNDLED

SERVICE_PY = Path(__file__).resolve().parents[2] / "service.py"
ENTRY_CLASS = "Gateway"


def _entry() -> ast.ClassDef:
    tree = ast.parse(SERVICE_PY.read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == ENTRY_CLASS)


def entry_service() -> str:
    """The name in `@bentoml.service(name=...)` of the entry class."""
    (name,) = [
        kw.value.value
        for deco in _entry().decorator_list
        if isinstance(deco, ast.Call)
        for kw in deco.keywords
        if kw.arg == "name" and isinstance(kw.value, ast.Constant)
    ]
    return str(name)


def dependencies() -> tuple[str, ...]:
    """The BentoML service names of what the entry class depends on (`bentoml.depends(...)`):
    the bundled runners (contract/names.py)."""
    import service

    entry = getattr(service, ENTRY_CLASS)
    names = tuple(sorted(dep.on.name for dep in entry.dependencies.values()))
    unknown = set(names) - set(BUNDLED)
    assert not unknown, f"service.py depends on {unknown}, not bundled runners {BUNDLED}"
    return names


def bundle_services() -> tuple[str, ...]:
    return (entry_service(), *dependencies())
