"""Packaging: every third-party import is declared (the daemons' in `dependencies`, the lab's in
the `lab` extra, the tests' in `test`), constraints.txt pins all of it within pyproject's ranges,
the image leaves the lab and the benchmarks out, and the LICENSE is the license pyproject names."""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import os
import re
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with open(os.path.join(REPO, "pyproject.toml"), "rb") as _f:
    PROJECT = tomllib.load(_f)["project"]
# Imported, but not from PyPI: Debian's python3-bpfcc (kproxy ebpf mode; the image and
# scripts/install-deps link it into the venv).
DEBIAN = {"bcc"}
# Import names whose distribution is not installed in the test venv.
NOT_INSTALLED = {"matplotlib": "matplotlib"}
# Which requirement lists code under each top-level directory may use; any other first-party
# package is product code (what the image ships) and gets `dependencies` only.
ALLOWED = {"lab": ("lab",), "bench": ("lab", "bench"), "tests": ("lab", "test", "bench"),
           "knet_testing": ("lab", "test")}


def _requirements(*extras: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return [r for r in reqs if canonicalize_name(r.name) != "knet"]  # `knet[lab]` in test: the lab's own


def _first_party() -> set[str]:
    return {d for d in os.listdir(REPO) if os.path.isfile(os.path.join(REPO, d, "__init__.py"))}


def _imports(top: str) -> dict[str, str]:
    """Third-party top-level module -> first file importing it, for everything under `top`."""
    first_party, out = _first_party(), {}
    for dirpath, dirnames, files in os.walk(os.path.join(REPO, top)):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for mod in mods:
                    root = mod.split(".")[0]
                    if root not in sys.stdlib_module_names and root not in first_party and root != "__future__":
                        out.setdefault(root, os.path.relpath(path, REPO))
    return out


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


def _distribution(module: str) -> str | None:
    if module in NOT_INSTALLED:
        return NOT_INSTALLED[module]
    dists = _packages_distributions().get(module)
    return canonicalize_name(dists[0]) if dists else None


@pytest.mark.parametrize("top", sorted(_first_party() | {"deploy"}))
def test_every_import_is_declared(top):
    declared = {canonicalize_name(r.name) for r in _requirements(*ALLOWED.get(top, ()))}
    missing = {}
    for module, where in _imports(top).items():
        if module in DEBIAN:
            continue
        dist = _distribution(module)
        if dist is None or dist not in declared:
            missing[module] = (dist, where)
    allowed = "dependencies" + "".join(f" + [{e}]" for e in ALLOWED.get(top, ()))
    assert not missing, f"{top}/ imports what {allowed} does not declare: {missing}"


def test_lab_servers_are_not_product_dependencies():
    runtime = {canonicalize_name(r.name) for r in _requirements()}
    assert {"aiohttp", "dnslib"} <= {canonicalize_name(r.name) for r in _requirements("lab")} - runtime


def _pins() -> dict[str, Version]:
    pins = {}
    with open(os.path.join(REPO, "constraints.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                name, _, version = line.partition("==")
                assert version, f"constraints.txt: {line!r} is not an exact pin"
                pins[canonicalize_name(name)] = Version(version)
    return pins


def test_constraints_pin_every_requirement_within_its_range():
    pins = _pins()
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        build = [Requirement(r) for r in tomllib.load(f)["build-system"]["requires"]]
    for req in [*_requirements("lab", "test"), *build]:
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"


def test_constraints_match_what_the_tests_run_with():
    """The venv under test was installed from constraints.txt (scripts/install-deps)."""
    drift = {}
    for name, version in _pins().items():
        if name in ("setuptools", "wheel"):
            continue  # the build backend: pinned in pip's build environment, not the venv's
        try:
            installed = Version(md.version(name))
        except md.PackageNotFoundError:
            continue
        if installed != version:
            drift[name] = (str(version), str(installed))
    assert not drift, f"constraints.txt vs installed: {drift} (run scripts/install-deps)"


def test_image_ships_the_product_only():
    with open(os.path.join(REPO, "Containerfile")) as f:
        text = f.read()
    copied = set(re.findall(r"^COPY (\w+) \1$", text, re.M))
    assert copied and not copied & {"lab", "bench", "tests"}
    assert copied == _first_party() - set(ALLOWED), "a product package is missing from the image"
    assert "PIP_CONSTRAINT=/src/constraints.txt" in text and "LICENSE" in text


def test_license_file_is_the_declared_license():
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    with open(os.path.join(REPO, "LICENSE")) as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the whole text, not a stub
