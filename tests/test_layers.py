"""The layers depend one way: pages -> busi, and inside busi the trainer is a consumer."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "busi").glob("*.py"))
PAGES = sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", LIBRARY, ids=lambda path: path.name)
def test_the_library_has_no_ui_and_only_its_consumers_import_the_trainer(path):
    imported = _imports(path)
    assert not any(name.split(".")[0] == "streamlit" for name in imported)
    if path.stem not in ("cli", "train"):
        assert "busi.train" not in imported, f"{path.name} imports the trainer: move what it needs to its own module"


@pytest.mark.parametrize("path", PAGES, ids=lambda path: path.name)
def test_pages_hold_no_image_or_model_code_of_their_own(path):
    top_level = {name.split(".")[0] for name in _imports(path)}
    assert not top_level & {"cv2", "torch", "torchvision", "PIL", "sklearn"}
    assert "busi.train" not in _imports(path)
