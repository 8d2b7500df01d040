"""What the wheel is built from: package data for the files the code reads, one version, the licence.

The wheel itself is built, installed outside the repository and run by `.ci/run`.
"""

from fnmatch import fnmatch
from pathlib import Path

import pytest

import modeling_memcomp

ROOT = Path(__file__).parent.parent
NOT_SHIPPED = {"benchmarks/results"}  # measured reports, read by people, never by the code


@pytest.fixture(scope="module")
def pyproject():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_non_python_file_in_the_packages_is_package_data(pyproject):
    setuptools = pyproject["tool"]["setuptools"]
    package_data = setuptools["package-data"]
    checked = 0
    for top in (pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]):
        for path in (ROOT / top).rglob("*"):
            relative = path.relative_to(ROOT).as_posix()
            if not path.is_file() or path.suffix in (".py", ".pyc") or any(relative.startswith(d) for d in NOT_SHIPPED):
                continue
            package = path.parent
            while not (package / "__init__.py").is_file():
                package = package.parent
            name = package.relative_to(ROOT).as_posix().replace("/", ".")
            inside = path.relative_to(package).as_posix()
            assert any(fnmatch(inside, p) for p in package_data.get(name, [])), f"{relative} is not in package-data"
            checked += 1
    assert checked >= 2  # the model and dataset card templates


def test_version_is_written_once(pyproject):
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "modeling_memcomp.__version__"}
    assert modeling_memcomp.__version__.count(".") == 2


def test_licence_file_is_the_apache_2_text(pyproject):
    assert pyproject["project"]["license"] == "Apache-2.0" and pyproject["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in text
    assert len(text) == 11358  # the unmodified text from apache.org


def test_constraints_pin_every_dependency_inside_its_range(pyproject):
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    project = pyproject["project"]
    requirements = list(project["dependencies"])
    for extra, items in project["optional-dependencies"].items():
        if extra != "vllm":  # its own environment (scripts/make_vllm_env.sh)
            requirements += items
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == "memcomp":
            continue
        assert name in pins, f"{name} is not pinned in constraints.txt: run `make constraints`"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {requirement}"
    assert pins["torch"] == "2.13.0"  # the local CPU wheel
