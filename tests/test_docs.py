"""The documentation's Python examples run as written, on every backend, and
print what the page shows beside them.

Every ```python block in README.md and docs/*.md runs, in a fresh namespace,
from a temporary directory (examples may write files), after
`keras.backend.clear_session()`, as in a fresh interpreter. A block preceded
by an HTML comment starting with `<!-- not run` is skipped; the comment says
why, and which test runs it instead.

What a block prints goes on the page right after it, as a fenced block opened
by ```` ```text title="Output" ```` (only blank lines between; the site shows
it under the caption "Output", GitHub as plain text). The test compares the
block's whole standard output (`print`, `difflr.summary`, progress bars,
verbose callbacks) with it: exactly, except for spaces at the end of a line
and blank lines at the start and the end. A block that prints with no Output
block fails, and so does an Output block after a block that prints nothing,
or a plain ```text block right after a ```python block (a missing
`title="Output"`).

So the page holds for every reader: the global random seed before each block
differs per backend, so a printed value that depends on an unseeded draw
fails on some backend; examples seed what they print from (NumPy's
`default_rng`, or weights set from NumPy, since Keras's initializers draw
differently per backend), and print floats rounded to digits that every
backend and CPU agree on (a float32 value shown as a float64 shows its
rounding: `0.0010000000474974513`). A value that differs between backends is
not printed; something that does not (a comparison, a count) is. A model
whose name is printed is given one (`name="toy"`): Keras's automatic names
depend on what was built before (a nested `Sequential` takes `functional`).

Docstring examples are doctests: `tests/test_docstrings.py` checks what they
print.
"""

import ast
import pathlib
import re

import keras
import pytest

import difflr
from conftest import backend, keras_hub_or_skip

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(<!-- not run[^>]*-->\s*)?```python\n(.*?)```[ \t]*(?:\n|\Z)"
                    r"(?:\s*```text title=\"Output\"\n(.*?)```)?", re.S)
_UNMARKED = re.compile(r"\s*```text[ \t]*\n")
_SEEDS = {"jax": 1, "tensorflow": 2, "torch": 3}


def _blocks():
    for page in PAGES:
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start(2))
            unmarked = match.group(3) is None and _UNMARKED.match(text, match.end())
            yield pytest.param(
                page, match.group(2), match.group(3), bool(unmarked),
                id=f"{page.name}:{line}",
                marks=[pytest.mark.skip(reason=match.group(1).strip())]
                if match.group(1) else [])


def _lines(text):
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


@pytest.mark.parametrize("page,code,output,unmarked", list(_blocks()))
def test_example_prints_what_the_page_shows(page, code, output, unmarked, tmp_path,
                                            monkeypatch, capsys):
    assert not unmarked, ("a ```text block follows this example: if it is what the "
                          'example prints, open it with ```text title="Output"')
    if "import keras, keras_hub" in code or "import keras_hub" in code:
        keras_hub_or_skip()
    monkeypatch.chdir(tmp_path)  # examples may write files
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(_SEEDS[backend()])
    capsys.readouterr()
    exec(compile(code, str(page), "exec"), {"__name__": "__docs__"})
    printed = _lines(capsys.readouterr().out)
    if output is None:
        assert not printed, (
            "this example prints, and the page does not show it: add its output "
            'after it, in a ```text title="Output" block:\n' + printed)
    else:
        assert printed, "the page shows an Output for an example that prints nothing"
        assert printed == _lines(output)


def _all(package_dir):
    tree = ast.parse((package_dir / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"no __all__ in {package_dir}")


@pytest.mark.backend_free
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


@pytest.mark.backend_free
def test_relative_links_in_the_readme_and_changelog_exist():
    for page in (ROOT / "README.md", ROOT / "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (ROOT / target).exists(), f"{page.name} links to missing {target}"
