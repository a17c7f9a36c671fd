"""The layers check of `make lint` on the real tree, and on doctored copies that must fail."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_layers.py"


@pytest.fixture(scope="module")
def layers():
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layers"] = module  # dataclass-free, but keep importlib's contract
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of src/ to doctor."""
    shutil.copytree(ROOT / "src" / "paperops", tmp_path / "paperops", dirs_exist_ok=True)
    return tmp_path


def test_the_package_has_no_upward_import_and_no_circle(layers) -> None:
    assert layers.violations(ROOT / "src") == []
    edges = layers.graph(ROOT / "src")
    assert len(edges) > 90  # every module was read, subpackages included
    assert "paperops.serve.routes.classify" in edges
    assert "paperops.inference.predictor" in edges["paperops.serve.state"]


def test_every_room_is_in_a_layer(layers) -> None:
    rooms = {p.name for p in (ROOT / "src" / "paperops").iterdir() if p.is_dir()}
    rooms |= {p.stem for p in (ROOT / "src" / "paperops").glob("*.py") if p.stem != "__init__"}
    rooms.discard("__pycache__")
    assert rooms <= set(layers.LAYER_OF)


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + "\n" + line + "\n")


def test_a_doctored_upward_import_fails(layers, tree: Path) -> None:
    # models sits below train: even an import deferred into a function counts
    append(tree / "paperops/models/base.py", "def _sneak():\n    from paperops.train import train")
    found = layers.violations(tree)
    assert found[0] == (
        "paperops.models.base imports paperops.train: up the layers (models may not import train)"
    )
    assert found[1].startswith("import circle among")  # train reaches models.base: a circle too
    assert len(found) == 2


def test_an_import_across_peers_fails(layers, tree: Path) -> None:
    append(tree / "paperops/monitor/stats.py", "from paperops.serve import metrics  # noqa")
    assert any(
        "across the layers (monitor may not import serve)" in v for v in layers.violations(tree)
    )


def test_a_circle_inside_one_room_fails(layers, tree: Path) -> None:
    append(tree / "paperops/evaluate/metrics.py", "from paperops.evaluate import report  # noqa")
    found = layers.violations(tree)
    assert any(
        v.startswith("import circle among") and "paperops.evaluate.metrics" in v for v in found
    )


def test_a_new_room_must_be_placed(layers, tree: Path) -> None:
    (tree / "paperops/newroom").mkdir()
    (tree / "paperops/newroom/__init__.py").write_text('"""x"""\n')
    assert layers.violations(tree) == [
        "paperops.newroom: room 'newroom' is in no layer (add it to LAYERS in check_layers.py)"
    ]


def test_the_script_exits_1_on_a_violation(tree: Path) -> None:
    ok = subprocess.run([sys.executable, str(SCRIPT), str(ROOT / "src")], capture_output=True)
    assert ok.returncode == 0, ok.stdout
    append(tree / "paperops/io.py", "def _x():\n    import paperops.cli")
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tree)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "paperops.io imports paperops.cli: up the layers" in bad.stdout
