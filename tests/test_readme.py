"""The README's Python examples run as written, on every backend.

A block preceded by an HTML comment starting with `<!-- not run` is skipped
(the comment says which test runs it instead).
"""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"(<!-- not run[^>]*-->\s*)?```python\n(.*?)```", re.S)


def _blocks():
    text = README.read_text()
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start(2))
        yield pytest.param(match.group(2), id=f"line{line}",
                           marks=[pytest.mark.skip(reason=match.group(1).strip())]
                           if match.group(1) else [])


@pytest.mark.parametrize("code", list(_blocks()))
def test_readme_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
