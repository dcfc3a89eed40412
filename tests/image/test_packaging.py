"""The wheel (and so the image) holds every package of the tree.

pyproject.toml lists its packages by hand; a package missing there is missing from the wheel that
scripts/image.sh and the Containerfile install, while an editable install (.venv) still finds it
on disk, so only the image would fail (as `multiplex install` did in the image when the install
package was split out of cli/). Fast and without root, unlike tests/image/test_image.py.
"""
from __future__ import annotations

import os
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def packages_on_disk() -> set[str]:
    found = set()
    for top in ("multiplex", "delegates"):
        for path, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            if "__init__.py" in files:
                found.add(os.path.relpath(path, REPO).replace(os.sep, "."))
    return found


def test_every_package_of_the_tree_is_in_the_wheel():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    missing = packages_on_disk() - listed
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}: the wheel would too"
