"""Measure the ladder (issue 11 section 4, DESIGN.md "The ladder") by reading the tree with `ast`.

Reads every ``.py`` file of the product and the simulator (not tests/, bench/, migrations/, .venv),
with module-level and function-level imports, and reports: imports that climb the ladder, imports
of another domain's models, loops between files of different packages, function-level imports of
project modules, the longest functions and ``commit()`` calls outside the boundary modules.

``scripts/ladder [--json] [--root PATH]`` prints it; tests/wechat_service/test_ladder.py ratchets the counts.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Lowest first; packages on one rung (the future capabilities) may not import each other either.
LADDER: list[tuple[str, ...]] = [
    ("wechat_service",),
    ("accounts",),
    ("payments",),
    ("store",),
    ("templates_msg",),
    ("marketing", "assistant"),
    ("metrics",),
]
BASE = "wechat_service"
TENANT_ROOT = "accounts"
TENANT_ROOT_MODELS = frozenset(
    {"Account", "OrgUnit", "Subscriber", "Person", "AccountKind", "AccountStatus"}  # and their columns' enums
)
# The composition stands on top and may import anything (files relative to the root).
COMPOSITION_FILES = frozenset(
    {
        "wechat_service/app.py",
        "wechat_service/cli.py",
        "wechat_service/worker.py",
        "wechat_service/supervisor.py",
        "wechat_service/demo.py",
        "wsgi.py",
    }
)
COMPOSITION_DIRS = ("demo/", "wechat_service/demo/")
SIMULATOR = "simulator"
# The only product module the simulator may use (it speaks WeChat's crypto).
SIMULATOR_MAY_IMPORT = frozenset({"wechat_service.wxcrypto"})
EXCLUDED_DIRS = frozenset(
    {"tests", "bench", "migrations", ".venv", "build", "dist", "instance", "node_modules"}
)
# Modules that are a request, job or command boundary and so may commit.
BOUNDARY_NAMES = frozenset({"views", "api", "console", "jobs", "cli", "endpoints", "h5", "mp"})
LONG_FUNCTION = 60
LONGEST_SHOWN = 15

LEVELS: dict[str, int] = {pkg: rung for rung, pkgs in enumerate(LADDER) for pkg in pkgs}


@dataclass(frozen=True)
class Import:
    """One import statement's reach into one project module."""

    file: str  # relative path of the importing file
    line: int
    source: str  # importing module, dotted
    target: str  # imported module, dotted (the longest prefix that is a file of the tree)
    names: tuple[str, ...]  # names taken by ``from target import …`` (empty for ``import x``)
    function_level: bool
    commented: bool  # a comment on the statement's lines or the line above

    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Report:
    root: str
    files: int
    project_imports: int
    climbing: list[dict[str, Any]] = field(default_factory=list)
    other_domain_models: list[dict[str, Any]] = field(default_factory=list)
    loops: list[dict[str, Any]] = field(default_factory=list)
    module_level_loops: int = 0
    function_imports: list[dict[str, Any]] = field(default_factory=list)
    function_imports_per_package: dict[str, int] = field(default_factory=dict)
    function_imports_commented: int = 0
    long_functions: list[dict[str, Any]] = field(default_factory=list)
    functions_over_limit: int = 0
    commits_outside_boundaries: list[dict[str, Any]] = field(default_factory=list)
    simulator_product_imports: list[dict[str, Any]] = field(default_factory=list)
    # Product modules the simulator loads, directly or not (a parent package's __init__ runs too).
    simulator_reaches: list[str] = field(default_factory=list)
    unplaced_packages: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "climbing_imports": len(self.climbing),
            "other_domain_model_imports": sum(item["count"] for item in self.other_domain_models),
            "cross_package_loops": len(self.loops),
            "cross_package_loops_module_level_only": self.module_level_loops,
            "function_level_project_imports": len(self.function_imports),
            "function_level_project_imports_uncommented": len(self.function_imports)
            - self.function_imports_commented,
            "functions_over_60_lines": self.functions_over_limit,
            "commits_outside_boundaries": len(self.commits_outside_boundaries),
            "simulator_product_imports": len(self.simulator_product_imports),
        }


# ---------------------------------------------------------------------------------------- reading


def _source_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        yield path


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _comment_lines(text: str) -> set[int]:
    lines: set[int] = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                lines.add(token.start[0])
    except (tokenize.TokenError, SyntaxError):
        pass
    return lines


def top_package(module: str) -> str:
    return module.split(".", 1)[0]


def is_composition(rel_file: str) -> bool:
    return rel_file in COMPOSITION_FILES or rel_file.startswith(COMPOSITION_DIRS)


def _is_step_boundary(decorator: ast.expr) -> bool:
    """``@step_boundary("why")`` (wechat_service.dbutil): a named step that commits its own work.
    Only with a reason given as a non-empty string."""
    return (
        isinstance(decorator, ast.Call)
        and getattr(decorator.func, "id", getattr(decorator.func, "attr", None)) == "step_boundary"
        and len(decorator.args) == 1
        and isinstance(decorator.args[0], ast.Constant)
        and bool(str(decorator.args[0].value).strip())
    )


class _Walker(ast.NodeVisitor):
    """Collects imports (with their depth), function lengths and ``.commit()`` calls of one file."""

    def __init__(self) -> None:
        self.imports: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
        self.functions: list[tuple[str, int, int]] = []  # (qualified name, line, length)
        self.commits: list[tuple[int, str]] = []  # (line, enclosing function)
        self.step_commits: list[tuple[int, str]] = []  # inside a @step_boundary("why") function
        self._stack: list[str] = []
        self._steps = 0  # @step_boundary functions entered
        self._depth = 0  # functions entered

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._stack.append(node.name)
        qualname = ".".join(self._stack)
        self.functions.append((qualname, node.lineno, (node.end_lineno or node.lineno) - node.lineno + 1))
        step = any(_is_step_boundary(d) for d in node.decorator_list)
        self._depth += 1
        self._steps += step
        self.generic_visit(node)
        self._steps -= step
        self._depth -= 1
        self._stack.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._stack.append(node.name)
        self.generic_visit(node)
        self._stack.pop()

    def visit_Import(self, node: ast.Import) -> None:
        self.imports.append((node, self._depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.imports.append((node, self._depth > 0))

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr == "commit":
            where = (node.lineno, ".".join(self._stack) or "<module>")
            (self.step_commits if self._steps else self.commits).append(where)
        self.generic_visit(node)


@dataclass
class _File:
    rel: str
    module: str
    is_package: bool
    walker: _Walker
    comments: set[int]


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of ``name`` that is a module of the tree."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imports_of(f: _File, modules: set[str], project: set[str]) -> Iterator[Import]:
    for node, function_level in f.walker.imports:
        end = node.end_lineno or node.lineno
        commented = any(line in f.comments for line in range(node.lineno - 1, end + 1))

        def make(
            target: str,
            names: tuple[str, ...],
            line: int = node.lineno,
            function_level: bool = function_level,
            commented: bool = commented,
        ) -> Import:
            return Import(f.rel, line, f.module, target, names, function_level, commented)

        if isinstance(node, ast.Import):
            for alias in node.names:
                if top_package(alias.name) in project and (target := _resolve(alias.name, modules)):
                    yield make(target, ())
            continue
        if node.level:
            package = f.module if f.is_package else f.module.rpartition(".")[0]
            base_parts = package.split(".")
            if node.level > 1:
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if top_package(base) not in project:
            continue
        # ``from pkg import mod`` reaches the module pkg.mod; ``from mod import name`` reaches mod.
        names: list[str] = []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in modules:
                yield make(submodule, ())
            else:
                names.append(alias.name)
        if names and (target := _resolve(base, modules)):
            yield make(target, tuple(names))


# ---------------------------------------------------------------------------------------- graph


def _strongly_connected(nodes: Iterable[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the tree has a few hundred files)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(sorted(component))
    return result


def _cross_package_loops(imports: list[Import], files: dict[str, _File]) -> list[dict[str, Any]]:
    file_of = {f.module: f.rel for f in files.values()}
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target != imp.source:
            edges.setdefault(imp.file, set()).add(file_of[imp.target])
    loops = []
    for component in _strongly_connected(files, edges):
        packages = sorted({top_package(files[rel].module) for rel in component})
        if len(component) < 2 or len(packages) < 2:
            continue
        members = set(component)
        crossing = sorted(
            {
                (imp.file, imp.line, imp.target, imp.function_level)
                for imp in imports
                if file_of[imp.target] in members
                and imp.file in members
                and top_package(imp.source) != top_package(imp.target)
            }
        )
        loops.append(
            {
                "packages": packages,
                "files": component,
                "crossing_imports": [
                    {"where": f"{file}:{line}", "target": target, "function_level": fl}
                    for file, line, target, fl in crossing
                ],
            }
        )
    loops.sort(key=lambda loop: (-len(loop["files"]), loop["files"]))
    return loops


def _simulator_reaches(imports: list[Import], modules: set[str]) -> list[str]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        edges.setdefault(imp.source, set()).add(imp.target)
    seen: set[str] = set()
    todo = [m for m in modules if top_package(m) == SIMULATOR]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        parents = {".".join(parts[:end]) for end in range(1, len(parts))} & modules
        todo.extend(edges.get(module, set()) | parents)
    return sorted(m for m in seen if top_package(m) != SIMULATOR)


# ---------------------------------------------------------------------------------------- rules


def _level(module: str, rel_file: str | None) -> float:
    """A module's rung; the composition is above every rung, the simulator above that."""
    if rel_file is not None and is_composition(rel_file):
        return float("inf")
    return LEVELS.get(top_package(module), -1)


def _climbs(imp: Import, files_by_module: dict[str, _File]) -> str | None:
    """Why ``imp`` climbs the ladder, or None."""
    source_pkg, target_pkg = top_package(imp.source), top_package(imp.target)
    if is_composition(imp.file) or source_pkg == SIMULATOR:
        return None
    if target_pkg == SIMULATOR:
        return "the product imports the simulator"
    if is_composition(files_by_module[imp.target].rel):
        return "imports the composition"
    source_level, target_level = LEVELS.get(source_pkg), LEVELS.get(target_pkg)
    if source_level is None or target_level is None or source_pkg == target_pkg:
        return None
    if target_level > source_level:
        return f"{source_pkg} (rung {source_level}) imports {target_pkg} (rung {target_level})"
    if target_level == source_level:
        return f"{source_pkg} imports {target_pkg} on its own rung"
    return None


def _models_taken(imp: Import, files_by_module: dict[str, _File]) -> list[str]:
    """Names of another domain's models this import takes (the tenant root's four are allowed)."""
    source_pkg, target_pkg = top_package(imp.source), top_package(imp.target)
    if is_composition(imp.file) or source_pkg == SIMULATOR or target_pkg in (source_pkg, BASE, SIMULATOR):
        return []
    if "models" not in imp.target.split(".")[1:]:
        return []
    if not imp.names:
        return [f"<module {imp.target}>"]
    allowed = TENANT_ROOT_MODELS if target_pkg == TENANT_ROOT else frozenset()
    return [name for name in imp.names if name not in allowed]


def _is_boundary(rel_file: str) -> bool:
    """Views, API handlers, endpoints, jobs and commands commit; so does the composition (the demo)."""
    if is_composition(rel_file):
        return True
    parts = Path(rel_file).with_suffix("").parts
    return any(part in BOUNDARY_NAMES for part in parts[1:])


# ---------------------------------------------------------------------------------------- measure


def measure(root: Path) -> Report:
    root = root.resolve()
    files: dict[str, _File] = {}
    for path in _source_files(root):
        rel = path.relative_to(root)
        text = path.read_text(encoding="utf-8")
        walker = _Walker()
        walker.visit(ast.parse(text, filename=str(rel)))
        files[rel.as_posix()] = _File(
            rel.as_posix(), _module_name(rel), rel.name == "__init__.py", walker, _comment_lines(text)
        )
    modules = {f.module for f in files.values()}
    project = {top_package(m) for m in modules}
    files_by_module = {f.module: f for f in files.values()}

    imports = [imp for f in files.values() for imp in _imports_of(f, modules, project)]
    report = Report(root=str(root), files=len(files), project_imports=len(imports))

    function_imports: dict[str, dict[str, Any]] = {}
    for imp in imports:
        if reason := _climbs(imp, files_by_module):
            report.climbing.append({"where": imp.where(), "target": imp.target, "why": reason})
        if taken := _models_taken(imp, files_by_module):
            report.other_domain_models.append(
                {"where": imp.where(), "target": imp.target, "names": taken, "count": len(taken)}
            )
        if (
            top_package(imp.source) == SIMULATOR
            and top_package(imp.target) != SIMULATOR
            and imp.target not in SIMULATOR_MAY_IMPORT
        ):
            report.simulator_product_imports.append({"where": imp.where(), "target": imp.target})
        if imp.function_level and imp.target != imp.source:
            # One entry per statement (``from accounts import services, staff`` is one import).
            if function_imports.get(imp.where()):
                function_imports[imp.where()]["targets"].append(imp.target)
            else:
                function_imports[imp.where()] = {
                    "where": imp.where(),
                    "source": imp.source,
                    "targets": [imp.target],
                    "commented": imp.commented,
                }
    report.function_imports = list(function_imports.values())
    per_package = Counter(top_package(item["source"]) for item in report.function_imports)
    report.function_imports_per_package = dict(sorted(per_package.items(), key=lambda kv: (-kv[1], kv[0])))
    report.function_imports_commented = sum(1 for item in report.function_imports if item["commented"])

    report.loops = _cross_package_loops(imports, files)
    report.simulator_reaches = _simulator_reaches(imports, modules)
    report.module_level_loops = len(_cross_package_loops([i for i in imports if not i.function_level], files))

    long_functions = sorted(
        (
            {"where": f"{f.rel}:{line}", "function": name, "lines": length}
            for f in files.values()
            if top_package(f.module) != SIMULATOR
            for name, line, length in f.walker.functions
            if length > LONG_FUNCTION
        ),
        key=lambda item: (-item["lines"], item["where"]),
    )
    report.functions_over_limit = len(long_functions)
    report.long_functions = long_functions[:LONGEST_SHOWN]

    report.commits_outside_boundaries = [
        {"where": f"{f.rel}:{line}", "function": function}
        for f in files.values()
        if top_package(f.module) != SIMULATOR and not _is_boundary(f.rel)
        for line, function in f.walker.commits
    ]

    # A top-level package must be on a rung, be the simulator or be wholly composition (wsgi, demo/).
    placed = set(LEVELS) | {SIMULATOR}
    report.unplaced_packages = sorted(
        {top_package(f.module) for f in files.values() if not is_composition(f.rel)} - placed
    )
    return report


# ---------------------------------------------------------------------------------------- output


def format_text(report: Report) -> str:
    out: list[str] = []
    add = out.append
    rungs = " < ".join("/".join(pkgs) for pkgs in LADDER)
    composition = ", ".join([*sorted(COMPOSITION_FILES), *COMPOSITION_DIRS])
    add(f"ladder: {rungs} < composition ({composition})")
    add(f"simulator may import only: {', '.join(sorted(SIMULATOR_MAY_IMPORT))}")
    add(f"{report.files} files, {report.project_imports} project imports read under {report.root}")
    if report.unplaced_packages:
        add(f"NOT ON THE LADDER: {', '.join(report.unplaced_packages)}")
    add("")
    for key, value in report.counts().items():
        add(f"  {key:<48} {value}")

    add(f"\nimports that climb: {len(report.climbing)}")
    for item in report.climbing:
        add(f"  {item['where']} -> {item['target']}  ({item['why']})")

    add(f"\nimports of another domain's models: {report.counts()['other_domain_model_imports']}")
    for item in report.other_domain_models:
        add(f"  {item['where']} -> {item['target']}: {', '.join(item['names'])}")

    add(
        f"\nloops between packages: {len(report.loops)} "
        f"({report.module_level_loops} counting module-level imports only)"
    )
    for number, loop in enumerate(report.loops, 1):
        add(f"  loop {number}: {len(loop['files'])} files over {', '.join(loop['packages'])}")
        for rel in loop["files"]:
            add(f"      {rel}")
        add("    imports crossing packages inside it:")
        for item in loop["crossing_imports"]:
            note = "  (in a function)" if item["function_level"] else ""
            add(f"      {item['where']} -> {item['target']}{note}")

    add(
        f"\nfunction-level imports of project modules: {len(report.function_imports)}, "
        f"{report.function_imports_commented} with a comment"
    )
    for pkg, count in report.function_imports_per_package.items():
        add(f"  {pkg:<20} {count}")

    add(
        f"\nfunctions over {LONG_FUNCTION} lines outside the simulator: {report.functions_over_limit}"
        f" (longest {len(report.long_functions)})"
    )
    for item in report.long_functions:
        add(f"  {item['lines']:>4}  {item['where']}  {item['function']}")

    add(
        f"\ncommit() outside {'/'.join(sorted(BOUNDARY_NAMES))} modules and the composition: "
        f"{len(report.commits_outside_boundaries)}"
    )
    for item in report.commits_outside_boundaries:
        add(f"  {item['where']}  in {item['function']}")

    add(
        f"\nsimulator imports of product code other than {', '.join(sorted(SIMULATOR_MAY_IMPORT))}: "
        f"{len(report.simulator_product_imports)}"
    )
    for item in report.simulator_product_imports:
        add(f"  {item['where']} -> {item['target']}")
    add(f"product modules the simulator loads: {', '.join(report.simulator_reaches) or 'none'}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/ladder", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    report = measure(args.root)
    if args.json:
        json.dump({"counts": report.counts(), **asdict(report)}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_text(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
