"""The wheel ships every file pgtide reads at run time, not only its Python modules."""

from __future__ import annotations

import zipfile
from pathlib import Path

from hatchling.builders.wheel import WheelBuilder

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "pgtide"


def _data_files() -> set[str]:
    """Every file of the package that is not Python source: migrations, templates, assets."""
    return {
        "pgtide/" + path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts
    }


def test_the_wheel_ships_migrations_templates_assets_and_py_typed(tmp_path: Path) -> None:
    builder = WheelBuilder(str(ROOT))
    (wheel,) = builder.build(directory=str(tmp_path), versions=["standard"])
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = _data_files()
    assert {"pgtide/py.typed", "pgtide/sql/001_base.sql"} <= wanted
    assert any(name.startswith("pgtide/web/templates/") for name in wanted)
    assert any(name.startswith("pgtide/web/static/") for name in wanted)
    assert wanted <= names, f"missing from the wheel: {sorted(wanted - names)}"
    assert not [name for name in names if name.startswith(("tests/", "bench/"))]
