"""Every module logs under its own name: logging.getLogger(__name__)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "kvcluster"


def logger_names(path: Path) -> list[ast.expr]:
    """The argument of every ``logging.getLogger(...)`` call in one module."""
    return [
        node.args[0]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "getLogger"
        and node.args
    ]


def test_every_module_logs_under_its_own_name() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    named = 0
    for path in modules:
        for arg in logger_names(path):
            if isinstance(arg, ast.Constant) and arg.value == "kvcluster":
                continue  # the package's own logger, which the simulation points at its trace
            assert isinstance(arg, ast.Name), f"{path}: getLogger({ast.unparse(arg)}), not getLogger(__name__)"
            assert arg.id == "__name__", f"{path}: getLogger({arg.id}), not getLogger(__name__)"
            named += 1
    assert named >= 4  # the drivers and cores of the master and the node


def test_loggers_of_running_modules_are_their_module_names() -> None:
    from kvcluster.core import master as core_master  # noqa: PLC0415
    from kvcluster.core import node as core_node  # noqa: PLC0415
    from kvcluster.runtime import master, node  # noqa: PLC0415

    for module in (master, node, core_master, core_node):
        assert module.log.name == module.__name__
