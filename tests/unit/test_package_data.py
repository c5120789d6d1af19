"""Package data as the editable checkout (``make install``) reads it.

schemas/ and sql/ are top-level folders of the repository that ship as the
packages ``tracker.schemas`` and ``tracker.sql`` (pyproject.toml maps them);
tracker/codec.py and tracker/adapters/postgres.py read them through importlib.resources, so a
checkout and an installed wheel (tests/integration/test_wheel.py) run the same
code. Here: the editable install resolves them to this checkout's folders.
"""

from __future__ import annotations

import shutil
import tomllib
from importlib import resources
from pathlib import Path

import pytest

import tracker
from tracker.adapters.postgres import SQL_DIR, load_migrations
from tracker.cli import build_parser
from tracker.codec import SCHEMA_DIR, FrameEventCodec, load_schema_versions

ROOT = Path(__file__).resolve().parents[2]


def test_data_folders_resolve_through_importlib_resources_to_the_checkout() -> None:
    assert SCHEMA_DIR == resources.files("tracker.schemas")
    assert SQL_DIR == resources.files("tracker.sql")
    assert Path(str(SCHEMA_DIR)).resolve() == ROOT / "schemas"
    assert Path(str(SQL_DIR)).resolve() == ROOT / "sql"


def test_migrations_are_the_files_in_sql() -> None:
    files = sorted((ROOT / "sql").glob("*.sql"))
    migrations = load_migrations()
    assert [f"{m.version:03d}_{m.name}.sql" for m in migrations] == [f.name for f in files]
    assert [m.sql for m in migrations] == [f.read_text(encoding="utf-8") for f in files]


def test_schema_versions_are_the_files_in_schemas() -> None:
    files = sorted((ROOT / "schemas").glob("frame_event.v*.avsc"))
    assert files
    assert [v.path.name for v in load_schema_versions()] == [f.name for f in files]
    assert FrameEventCodec().current.path.name == files[-1].name


def test_an_explicit_directory_is_still_read(tmp_path: Path) -> None:
    first = sorted((ROOT / "sql").glob("*.sql"))[0]
    shutil.copy(first, tmp_path)
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "notes.txt").write_text("not a migration")
    assert [f"{m.version:03d}_{m.name}.sql" for m in load_migrations(tmp_path)] == [first.name]

    shutil.copy(ROOT / "schemas" / "frame_event.v1.avsc", tmp_path)
    assert [v.version for v in load_schema_versions(tmp_path)] == [1]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no frame_event"):
        load_schema_versions(empty)


def test_py_typed_is_package_data() -> None:
    assert resources.files("tracker").joinpath("py.typed").is_file()


def test_version_has_one_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tracker.__version__"}


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"tracker {tracker.__version__}\n"
