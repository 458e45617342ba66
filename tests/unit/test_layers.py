"""The house rules as a test: three floors (app -> flows -> components), imports only
downward, and no import circle anywhere (lazy imports inside functions included: a circle
broken only by import order is still a circle)."""
from __future__ import annotations

from pathlib import Path

from import_graph import FLOORS, circles, graph, imports_of


def floor(module: str) -> int:
    return FLOORS.index(module.split(".")[0])


def test_imports_only_go_down():
    upward = sorted(f"{src} imports {dst}" for src, dsts in graph().items() for dst in dsts if floor(dst) < floor(src))
    assert not upward, "imports that go up a floor:\n" + "\n".join(upward)


def test_no_import_circles():
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_walker_sees_what_it_must(tmp_path):
    # The checks above are only as good as the walker: it must find lazy imports and
    # `from package import module` forms.
    known = {"components.a": Path("a"), "components.b": Path("b"), "flows.x": Path("x"), "components": Path("i")}
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from flows import x\n    import components.a\nfrom components import b\n")
    assert imports_of(src, known) == {"flows.x", "components.a", "components.b", "components"}
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
