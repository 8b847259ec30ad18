"""The documentation's Python examples run as written, on every backend.

Every ```python block in README.md and docs/*.md runs, in a fresh namespace,
from a temporary directory (examples may write files). A block preceded by an
HTML comment starting with `<!-- not run` is skipped; the comment says why,
and which test runs it instead.
"""

import ast
import pathlib
import re

import pytest

import difflr
from conftest import keras_hub_or_skip

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(<!-- not run[^>]*-->\s*)?```python\n(.*?)```", re.S)


def _blocks():
    for page in PAGES:
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start(2))
            yield pytest.param(
                page, match.group(2), id=f"{page.name}:{line}",
                marks=[pytest.mark.skip(reason=match.group(1).strip())]
                if match.group(1) else [])


@pytest.mark.parametrize("page,code", list(_blocks()))
def test_example_runs(page, code, tmp_path, monkeypatch):
    if "import keras, keras_hub" in code or "import keras_hub" in code:
        keras_hub_or_skip()
    monkeypatch.chdir(tmp_path)  # examples may write files
    exec(compile(code, str(page), "exec"), {"__name__": "__docs__"})


def _all(package_dir):
    tree = ast.parse((package_dir / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"no __all__ in {package_dir}")


def test_api_reference_lists_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = dict(re.findall(r"^::: (\S+)\n((?:    .*\n)*)", text, re.M))
    documented = {}
    for module, options in blocks.items():
        documented[module] = set(re.findall(r"^        - (\S+)$", options, re.M))
    package = pathlib.Path(difflr.__file__).parent
    subpackages = {name for name in _all(package)
                   if (package / name / "__init__.py").exists()}
    assert documented["difflr"] | subpackages == _all(package)
    for name in subpackages:
        assert documented[f"difflr.{name}"] == _all(package / name), name


def test_relative_links_in_the_readme_and_changelog_exist():
    for page in (ROOT / "README.md", ROOT / "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (ROOT / target).exists(), f"{page.name} links to missing {target}"
