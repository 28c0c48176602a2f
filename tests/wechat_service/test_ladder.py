"""The ladder ratchet (issue 11 section 4; DESIGN.md "The ladder").

tests/ladder.py reads the tree's import graph with `ast` (module- and function-level imports);
these tests fail when a count rises above its ceiling, or when the simulator reaches product code
other than WeChat's crypto. `scripts/ladder` prints the same measurements in full.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.ladder import Report, format_text, main, measure

# Ceilings, measured on main at 2eef15e. They must only go DOWN: lower each one to the new count
# as the restructuring lands, never raise one to let an import in.
# Targets (issue 11 section 4): climbing imports 0, other domains' models 0, loops between packages
# 0, function-level project imports < 30, each of them with a comment saying why.
MAX_CLIMBING_IMPORTS = 0
MAX_OTHER_DOMAIN_MODEL_IMPORTS = 0  # counted per name: `from store.models import A, B` is 2
MAX_CROSS_PACKAGE_LOOPS = 0
MAX_FUNCTION_LEVEL_PROJECT_IMPORTS = 12  # import statements inside functions
MAX_UNCOMMENTED_FUNCTION_LEVEL_PROJECT_IMPORTS = 0
MAX_COMMITS_OUTSIDE_BOUNDARIES = 0  # views, API, jobs, commands and @step_boundary("why") steps commit
MAX_FUNCTIONS_OVER_60_LINES = 0  # outside the simulator

ROOT = Path(__file__).resolve().parents[2]  # tests/wechat_service/ → the repository


@pytest.fixture(scope="module")
def report() -> Report:
    return measure(ROOT)


def _listing(items: list[dict[str, Any]], *keys: str) -> str:
    return "\n".join("  " + "  ".join(str(item[key]) for key in keys) for item in items)


def test_no_more_climbing_imports(report: Report) -> None:
    assert len(report.climbing) <= MAX_CLIMBING_IMPORTS, (
        f"{len(report.climbing)} imports climb the ladder (ceiling {MAX_CLIMBING_IMPORTS}); "
        f"reach an upper package through a hook the lower one owns:\n"
        + _listing(report.climbing, "where", "target", "why")
    )


def test_no_more_imports_of_other_domains_models(report: Report) -> None:
    count = report.counts()["other_domain_model_imports"]
    assert count <= MAX_OTHER_DOMAIN_MODEL_IMPORTS, (
        f"{count} names imported from another domain's models (ceiling {MAX_OTHER_DOMAIN_MODEL_IMPORTS}); "
        f"use its services, query functions or facts:\n"
        + _listing(report.other_domain_models, "where", "target", "names")
    )


def test_commits_only_at_boundaries(report: Report) -> None:
    count = len(report.commits_outside_boundaries)
    assert count <= MAX_COMMITS_OUTSIDE_BOUNDARIES, (
        f"{count} commits outside request/job/command modules and named steps; let the caller commit, "
        f"or mark the function @step_boundary(why):\n"
        + _listing(report.commits_outside_boundaries, "where", "function")
    )


def test_no_more_long_functions(report: Report) -> None:
    count = report.counts()["functions_over_60_lines"]
    assert count <= MAX_FUNCTIONS_OVER_60_LINES, (
        f"{count} functions over 60 lines outside the simulator (ceiling {MAX_FUNCTIONS_OVER_60_LINES}); "
        f"extract helpers that each do one thing (the longest shown):\n"
        + _listing(report.long_functions, "lines", "where", "function")
    )


def test_no_more_loops_between_packages(report: Report) -> None:
    assert len(report.loops) <= MAX_CROSS_PACKAGE_LOOPS, (
        f"{len(report.loops)} import loops span packages (ceiling {MAX_CROSS_PACKAGE_LOOPS}):\n"
        + "\n".join(
            f"  {', '.join(loop['files'])}\n    crossing: "
            + "; ".join(f"{i['where']} -> {i['target']}" for i in loop["crossing_imports"])
            for loop in report.loops
        )
    )


def test_no_more_function_level_project_imports(report: Report) -> None:
    # Uncommented ones first: a new one is most likely among them.
    ordered = sorted(report.function_imports, key=lambda item: (item["commented"], item["where"]))
    listing = _listing(ordered, "where", "targets", "commented")
    total = len(report.function_imports)
    uncommented = total - report.function_imports_commented
    assert total <= MAX_FUNCTION_LEVEL_PROJECT_IMPORTS, (
        f"{total} project imports inside functions (ceiling {MAX_FUNCTION_LEVEL_PROJECT_IMPORTS}):\n{listing}"
    )
    assert uncommented <= MAX_UNCOMMENTED_FUNCTION_LEVEL_PROJECT_IMPORTS, (
        f"{uncommented} project imports inside functions carry no comment saying why "
        f"(ceiling {MAX_UNCOMMENTED_FUNCTION_LEVEL_PROJECT_IMPORTS}):\n{listing}"
    )


def test_simulator_uses_only_wechat_crypto(report: Report) -> None:
    """The simulator stands apart from the product: it may load wechat_service.wxcrypto (and so
    the base package's __init__), nothing else, directly or through what those import."""
    assert report.simulator_product_imports == [], _listing(
        report.simulator_product_imports, "where", "target"
    )
    assert set(report.simulator_reaches) <= {"wechat_service", "wechat_service.wxcrypto"}, (
        report.simulator_reaches
    )


def test_every_package_is_on_the_ladder(report: Report) -> None:
    """A new top-level package gets its rung in tests/ladder.py LADDER (or is composition)."""
    assert report.unplaced_packages == []


# ------------------------------------------------------------------ the measurement on a small tree


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


def _long_function(name: str, lines: int) -> str:
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 2))
    return f"def {name}():\n{body}    return 0\n"


SYNTHETIC = {
    "wechat_service/__init__.py": "",
    "wechat_service/wxcrypto.py": "KEY = 1\n",
    "wechat_service/models.py": "class Base: ...\n",
    # The composition may import anything.
    "wechat_service/app.py": """
        from metrics import services
        from store import services as shop
        from store.models import Order
    """,
    "accounts/__init__.py": "",
    "accounts/models.py": "class Account: ...\nclass Ledger: ...\n",
    # Climbs to payments at module level: with payments/services.py a loop between two packages.
    "accounts/services.py": """
        from payments import services as pay
        from wechat_service.models import Base


        def sync(db):
            db.session.commit()


        @step_boundary("each page is durable before the next")
        def page(db):
            db.session.commit()


        @step_boundary("")
        def unexplained(db):
            db.session.commit()
    """,
    "accounts/views.py": "def save(db):\n    db.session.commit()\n",
    "payments/__init__.py": "",
    "payments/models.py": "class Charge: ...\n",
    "payments/services.py": """
        from accounts.services import sync
        from accounts.models import Account, Ledger
        from . import models


        def pay():
            # store imports payments, so this one waits until called
            from store import services
            from .models import Charge
            return services, Charge


        def refund():
            from accounts import models as am, services as acc  # two modules, one statement
            return am, acc
    """,
    "store/__init__.py": "",
    "store/models.py": "from payments.models import Charge\n",
    # Reaches up into the composition, inside a function: a loop only a call can close.
    "store/services.py": """
        def boot():
            from wechat_service.app import services
            return services
    """,
    "metrics/__init__.py": "",
    "metrics/services.py": "from store import models\n",
    "simulator/__init__.py": "",
    "simulator/app.py": "from wechat_service import wxcrypto\n\n" + _long_function("serve", 80),
    "simulator/bad.py": "def cheat():\n    from accounts.services import sync\n    return sync\n",
    "templates_msg/__init__.py": "",
    "templates_msg/services.py": _long_function("plan", 70) + "\n\n" + _long_function("short", 60),
    # Not read: tests, bench, migrations.
    "tests/test_x.py": "from metrics import services\n",
    "migrations/env.py": "from metrics import services\n",
}


@pytest.fixture()
def synthetic(tmp_path: Path) -> Report:
    _write(tmp_path, SYNTHETIC)
    return measure(tmp_path)


def test_measure_finds_climbing_imports(synthetic: Report) -> None:
    assert {(item["where"], item["target"]) for item in synthetic.climbing} == {
        ("accounts/services.py:1", "payments.services"),
        ("payments/services.py:8", "store.services"),
        ("store/services.py:2", "wechat_service.app"),  # the composition
    }


def test_measure_finds_other_domains_models(synthetic: Report) -> None:
    found = {(item["where"], item["target"], tuple(item["names"])) for item in synthetic.other_domain_models}
    assert found == {
        ("payments/services.py:2", "accounts.models", ("Ledger",)),  # Account is the tenant root's
        ("payments/services.py:14", "accounts.models", ("<module accounts.models>",)),
        ("store/models.py:1", "payments.models", ("Charge",)),
        ("metrics/services.py:1", "store.models", ("<module store.models>",)),
    }
    assert synthetic.counts()["other_domain_model_imports"] == 4


def test_measure_finds_loops_between_packages(synthetic: Report) -> None:
    assert [(loop["packages"], loop["files"]) for loop in synthetic.loops] == [
        (["accounts", "payments"], ["accounts/services.py", "payments/services.py"]),
        (["store", "wechat_service"], ["store/services.py", "wechat_service/app.py"]),
    ]
    assert [
        (i["where"], i["target"], i["function_level"]) for i in synthetic.loops[0]["crossing_imports"]
    ] == [
        ("accounts/services.py:1", "payments.services", False),
        ("payments/services.py:1", "accounts.services", False),
        ("payments/services.py:14", "accounts.services", True),
    ]
    # The second loop is closed only by an import inside a function: it still counts.
    assert synthetic.module_level_loops == 1


def test_measure_finds_function_level_imports(synthetic: Report) -> None:
    found = {
        (item["where"], tuple(item["targets"]), item["commented"]) for item in synthetic.function_imports
    }
    assert found == {
        ("payments/services.py:8", ("store.services",), True),  # comment on the line above
        ("payments/services.py:9", ("payments.models",), False),  # relative import resolved
        ("payments/services.py:14", ("accounts.models", "accounts.services"), True),  # same line
        ("store/services.py:2", ("wechat_service.app",), False),
        ("simulator/bad.py:2", ("accounts.services",), False),
    }
    assert synthetic.function_imports_per_package == {"payments": 3, "simulator": 1, "store": 1}


def test_measure_finds_long_functions_and_commits(synthetic: Report) -> None:
    # 70 lines counts, 60 does not, and the simulator's 80 is left out.
    assert [(f["where"], f["function"], f["lines"]) for f in synthetic.long_functions] == [
        ("templates_msg/services.py:1", "plan", 70)
    ]
    # A @step_boundary("why") step may commit; one without a reason counts like any other.
    assert synthetic.commits_outside_boundaries == [
        {"where": "accounts/services.py:6", "function": "sync"},
        {"where": "accounts/services.py:16", "function": "unexplained"},
    ]


def test_measure_guards_the_simulator(synthetic: Report) -> None:
    assert synthetic.simulator_product_imports == [
        {"where": "simulator/bad.py:2", "target": "accounts.services"}
    ]
    assert "accounts.services" in synthetic.simulator_reaches
    assert "payments.services" in synthetic.simulator_reaches  # through accounts.services


def test_measure_flags_an_unplaced_package(tmp_path: Path) -> None:
    _write(tmp_path, {"wechat_service/__init__.py": "", "loyalty/__init__.py": "", "demo/__init__.py": ""})
    assert measure(tmp_path).unplaced_packages == ["loyalty"]


def test_script_prints_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, SYNTHETIC)
    assert main(["--json", "--root", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["climbing_imports"] == 3 and data["counts"]["cross_package_loops"] == 2
    text = format_text(measure(tmp_path))
    assert "accounts/services.py:1 -> payments.services" in text
