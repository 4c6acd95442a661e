"""engine/'s rooms stand on each other in one order, and on the floors below the engine, never above.

    config → runtime → setup → rollout → forward → algo → report → (engine/trainer.py and run_checkpoints.py,
    engine/infer.py)

A module may import its own room and the rooms before it (every import statement counts, those inside functions
too); the two top files may import anything. Below the engine, data/, models/, tools/ and rewards/ never import it
(the floors of docs/DESIGN.md). A new module lands in a room by its folder; a new room must be added to ROOMS here.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ["config", "runtime", "setup", "rollout", "forward", "algo", "report"]
TOP = {"trainer", "run_checkpoints", "infer", "__init__"}


def engine_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every import of engine.* in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "engine":  # from engine import room
                out += [(node.lineno, f"engine.{a.name}") for a in node.names]
            elif node.module.startswith("engine."):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("engine.")]
    return out


def test_every_engine_module_lives_in_a_known_room():
    for path in (ROOT / "engine").rglob("*.py"):
        rel = path.relative_to(ROOT / "engine")
        if len(rel.parts) == 1:
            assert rel.stem in TOP, f"engine/{rel}: modules live in a room ({', '.join(ROOMS)}), not at the top"
        else:
            assert rel.parts[0] in ROOMS and len(rel.parts) == 2, f"engine/{rel}: unknown room or nested too deep"


def test_rooms_import_only_their_own_and_earlier_rooms():
    bad = []
    for room in ROOMS:
        for path in sorted((ROOT / "engine" / room).glob("*.py")):
            for line, module in engine_imports(path):
                target = module.split(".")[1]
                if target in TOP or target not in ROOMS or ROOMS.index(target) > ROOMS.index(room):
                    bad.append(f"engine/{room}/{path.name}:{line} imports {module}")
    assert not bad, "imports against the layering (config → runtime → setup → rollout → forward → algo → " \
                    "report):\n" + "\n".join(bad)


def test_floors_below_the_engine_never_import_it():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}" for floor in ("data", "models", "tools", "rewards")
           for p in sorted((ROOT / floor).glob("*.py")) for line, m in engine_imports(p)]
    assert not bad, "\n".join(bad)


def test_the_registry_module_stands_on_nothing_of_ours():
    """registry.py (the Registry every floor uses) is below them all."""
    ours = {"data", "models", "tools", "rewards", "engine", "train", "eval", "infer"}
    tree = ast.parse((ROOT / "registry.py").read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & ours


def test_the_check_sees_a_violation(tmp_path):
    """The parser finds imports inside functions too (a lazy upward import is still an upward import)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from engine.algo.losses import LOSSES\n    import engine.report.evaluate\n")
    assert engine_imports(f) == [(2, "engine.algo.losses"), (3, "engine.report.evaluate")]
