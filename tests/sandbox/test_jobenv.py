"""The job venv's stamp: what decides whether the cached venv is reused (no root needed)."""

from __future__ import annotations

from hpcgate.sandbox import jobenv


def test_stamp_is_stable_and_names_the_checkout():
    root = jobenv.project_root()
    assert (root / "pyproject.toml").is_file()
    first, second = jobenv.wanted_stamp(root), jobenv.wanted_stamp(root)
    assert first == second
    assert first["root"] == str(root) and first["mode"] in ("editable", "copy")


def test_copy_mode_hashes_the_sources(monkeypatch, tmp_path):
    root = tmp_path / "checkout"
    package = root / "src" / "hpcgate"
    package.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (package / "__init__.py").write_text("A = 1\n")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.pyc").write_bytes(b"1")
    monkeypatch.setattr(jobenv, "world_readable", lambda r: False)
    before = jobenv.wanted_stamp(root)
    (package / "__pycache__" / "x.pyc").write_bytes(b"2")  # caches do not count
    assert jobenv.wanted_stamp(root) == before
    (package / "__init__.py").write_text("A = 2\n")
    assert jobenv.wanted_stamp(root)["source"] != before["source"]
