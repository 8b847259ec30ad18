"""The API reference as built: what it says matches the code it documents.

The site is built once per backend pass (`mkdocs build --strict`, 5 to 20
seconds; the build imports difflr under the pass's backend) and its API page
read back. Each claim on the page is checked against an independent
reference: Python's signatures and class hierarchy, Keras's own layer
signatures, the docstrings and assignments in the source files.
"""

import ast
import dataclasses
import html.parser
import importlib
import inspect
import os
import pathlib
import re
import subprocess
import sys

import keras
import pytest

import difflr

ROOT = pathlib.Path(__file__).resolve().parent.parent
_MULTIPLIERS = ("kernel_lr_multiplier", "bias_lr_multiplier",
                "kernel_decay_multiplier", "bias_decay_multiplier")


class _ApiPage(html.parser.HTMLParser):
    """The documented objects of a mkdocstrings page, in order: each a dict
    with its `id` (dotted path), `kind`, `heading` text (the signature),
    `bases` (names, or None), `text` (all text up to the next heading) and
    `tables` (`title`, `head` and `rows` of cell texts)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.objects, self._kind, self._into, self._cell = [], None, None, None
        self._heading_tag = self._section = self._table = None

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "div" and "doc-object" in classes:
            self._kind = next(c[4:] for c in classes if c.startswith("doc-")
                              and c != "doc-object")
        elif re.fullmatch(r"h\d", tag) and "doc-heading" in classes:
            self.objects.append({"id": dict(attrs)["id"], "kind": self._kind,
                                 "heading": "", "bases": None, "text": "",
                                 "tables": []})
            self._heading_tag, self._into = tag, "heading"
        elif tag in ("small", "a") and self._into == "heading":
            self._into = None  # a label ("property") or the permalink
        elif tag == "p" and "doc-class-bases" in classes:
            self.objects[-1]["bases"], self._into = "", "bases"
        elif tag == "span" and "doc-section-title" in classes:
            self._section, self._into = "", "section"
        elif tag == "table" and self._section is not None:
            self._table = {"title": self._section.strip().rstrip(":"),
                           "head": [], "rows": []}
            self.objects[-1]["tables"].append(self._table)
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == self._heading_tag:
            self._heading_tag = self._into = None
        elif (tag, self._into) in (("p", "bases"), ("span", "section")):
            self._into = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join(self._cell.split()))
            self._cell = None
        elif tag == "tr" and self._table is not None:
            table = self._table
            (table["rows"] if table["head"] else table["head"]).extend(
                [self._row] if table["head"] else self._row)
        elif tag == "table" and self._table is not None:
            self._table = self._section = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._into == "section":
            self._section += data
        elif self._into in ("heading", "bases"):
            self.objects[-1][self._into] += data
        elif self.objects and self._heading_tag is None:
            self.objects[-1]["text"] += data


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert build.returncode == 0, build.stderr[-4000:]
    parser = _ApiPage()
    parser.feed((site / "api" / "index.html").read_text())
    objects = {o["id"]: o for o in parser.objects}
    assert len(objects) == len(parser.objects), "an object is documented twice"
    for o in objects.values():
        o["heading"] = " ".join(o["heading"].split())
        o["text"] = " ".join(o["text"].split())
        if o["bases"] is not None:
            o["bases"] = o["bases"].split(":", 1)[1].strip().split(", ")
    return objects


def _python_object(path):
    """The object at dotted `path`: a module, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise AssertionError(f"{path} does not import")


def _of_kind(page, *kinds):
    return [o for o in page.values() if o["kind"] in kinds]


def _tables(page, title):
    return [(o, t) for o in page.values() for t in o["tables"]
            if t["title"] == title]


def _parameters(obj):
    """The parameters of `obj` a call passes, `self` left out."""
    params = list(inspect.signature(obj).parameters.values())
    if not inspect.isclass(obj) and "." in obj.__qualname__:
        params = params[1:]  # a method, read off its class
    return params


def _reference_parameters(obj):
    """The parameters `obj` takes: its signature's, but for a layer of
    difflr.layers, Keras's layer's and the four multipliers (keyword-only,
    no declaration by default) before its `**kwargs`."""
    params = _parameters(obj)
    if inspect.isclass(obj) and obj.__module__ == "difflr.layers":
        params = _parameters(getattr(keras.layers, obj.__name__))
        assert params[-1].kind is params[-1].VAR_KEYWORD, params
        ours = [inspect.Parameter(m, inspect.Parameter.KEYWORD_ONLY, default=None)
                for m in _MULTIPLIERS]
        params = params[:-1] + ours + params[-1:]
    return params


def _literal(text):
    return ast.unparse(ast.parse(text, mode="eval").body)


def _heading_parameters(obj):
    """[(name, default or None)] of a heading `f(a, b=1, *, c=None, **kw)`."""
    if "(" not in obj["heading"]:
        return f"no signature in {obj['heading']!r}"
    call = ast.parse(f"def {obj['heading']}: pass").body[0].args
    positional = call.posonlyargs + call.args
    defaults = [None] * (len(positional) - len(call.defaults)) + call.defaults
    params = list(zip(positional, defaults))
    if call.vararg:
        params.append((call.vararg, None))
    params += list(zip(call.kwonlyargs, call.kw_defaults))
    if call.kwarg:
        params.append((call.kwarg, None))
    stars = {id(call.vararg): "*", id(call.kwarg): "**"}
    return [(stars.get(id(arg), "") + arg.arg,
             None if default is None else ast.unparse(default))
            for arg, default in params]


def _expected_parameters(obj, parameters=_parameters):
    """What the heading of `obj` must show: [(name, default or None)] of
    `parameters(obj)`."""
    stars = {inspect.Parameter.VAR_POSITIONAL: "*",
             inspect.Parameter.VAR_KEYWORD: "**"}
    return [(stars.get(p.kind, "") + p.name,
             None if p.default is p.empty else _literal(repr(p.default)))
            for p in parameters(obj)]


def test_bases_are_public_classes_the_class_derives_from(page):
    classes = _of_kind(page, "class")
    assert len(classes) >= 17  # LRMultiplier, 2 callbacks, 2 schedules, 12 layers
    problems = []
    for o in classes:
        cls = _python_object(o["id"])
        # The nearest Keras class in the MRO: the one difflr's class extends.
        keras_base = next((c for c in cls.__mro__[1:]
                           if c.__module__.split(".")[0] == "keras"), None)
        if keras_base is None:
            if cls.__bases__ != (object,) or o["bases"] is not None:
                problems.append(f"{o['id']}: bases {o['bases']}")
            continue
        private = [name for name in o["bases"] or [] if any(
            part.startswith("_") or part == "src" for part in name.split("."))]
        shown = [_python_object(name) for name in o["bases"] or []
                 if name not in private]
        if private or not all(issubclass(cls, base) for base in shown) \
                or keras_base not in shown:
            problems.append(f"{o['id']}: bases {o['bases']}, not the public "
                            f"name of {keras_base}")
    assert not problems, "\n".join(problems)


def test_layer_headings_are_the_keras_signature_plus_the_multipliers(page):
    problems = []
    for name in difflr.layers.__all__:
        o = page[f"difflr.layers.{name}"]
        expected = _expected_parameters(getattr(difflr.layers, name),
                                        _reference_parameters)
        if _heading_parameters(o) != expected:
            problems.append(f"{o['id']}: heading {o['heading']!r}")
    assert not problems, "\n".join(problems)


def test_every_heading_is_the_real_signature(page):
    callables = _of_kind(page, "class", "function")
    assert len(callables) >= 40
    problems = [f"{o['id']}: heading {o['heading']!r}" for o in callables
                if _heading_parameters(o) != _expected_parameters(
                    _python_object(o["id"]))]
    assert not problems, "\n".join(problems)


def _admits(type_text, default):
    """Whether the documented type admits the default value."""
    names = set(re.findall(r"[\w.]+", type_text))
    kind = type(default).__name__
    return ("Any" in names or kind in names
            or (kind == "NoneType" and "None" in names)
            or (kind == "int" and "float" in names))


def _parameter_problems(param, type_text, default):
    if param is None:
        return ["not in the signature"]
    problems = [] if type_text else ["no type"]
    if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
        empty = "()" if param.kind == param.VAR_POSITIONAL else "{}"
        if default != empty:
            problems.append(f"default {default!r}, not {empty}")
    elif param.default is param.empty:
        if default != "required":
            problems.append(f"default {default!r}, not required")
    elif default == "required" or _literal(default) != _literal(repr(param.default)):
        problems.append(f"default {default!r}, not {param.default!r}")
    elif type_text and not _admits(type_text, param.default):
        problems.append(f"type {type_text!r} does not admit {param.default!r}")
    return problems


def test_parameter_tables_match_the_signatures(page):
    tables = _tables(page, "Parameters")
    assert len(tables) >= 30
    problems = []
    for o, table in tables:
        assert table["head"] == ["Name", "Type", "Description", "Default"]
        params = {p.name: p
                  for p in _reference_parameters(_python_object(o["id"]))}
        for name, type_text, _, default in table["rows"]:
            problems += [f"{o['id']}({name}): {problem}" for problem in
                         _parameter_problems(params.get(name.lstrip("*")),
                                             type_text, default)]
    assert not problems, "\n".join(problems)


def test_every_type_cell_is_filled(page):
    problems = []
    for title in ("Parameters", "Returns", "Raises", "Attributes"):
        for o, table in _tables(page, title):
            column = table["head"].index("Type")
            problems += [f"{o['id']} {title}: {row[0]!r} has no type"
                         for row in table["rows"] if not row[column]]
    assert not problems, "\n".join(problems)


def _section(docstring, title):
    """The text of a Google-style section of `docstring`, unwrapped."""
    match = re.search(rf"^{title}:\n((?:[ \t]+\S.*\n?)+)", docstring, re.M)
    return " ".join(match.group(1).split()) if match else None


def test_each_returns_table_is_the_whole_returns_section(page):
    tables = _tables(page, "Returns")
    assert len(tables) >= 13
    problems = []
    for o, table in tables:
        written = _section(inspect.getdoc(_python_object(o["id"])), "Returns")
        # One value returned, so one row: its type, and every line of the
        # section as its description (Markdown's code spans unmarked).
        if len(table["rows"]) != 1:
            problems.append(f"{o['id']}: {len(table['rows'])} rows")
            continue
        (type_text, description), = table["rows"]
        if f"{type_text}: {description}" != written.replace("`", ""):
            problems.append(f"{o['id']}: {type_text!r}: {description!r}")
    assert not problems, "\n".join(problems)


def test_attribute_tables_have_the_documented_attributes(page):
    o = page["difflr.LRFindResult"]
    (table,) = o["tables"]
    assert table["title"] == "Attributes"
    documented = [row[0] for row in table["rows"]]
    assert documented == [f.name for f in dataclasses.fields(difflr.LRFindResult)]


def test_version_is_documented_by_its_own_docstring(page):
    body = ast.parse((ROOT / "difflr" / "__init__.py").read_text()).body
    at = next(i for i, node in enumerate(body) if isinstance(node, ast.Assign)
              and getattr(node.targets[0], "id", "") == "__version__")
    after = body[at + 1]
    assert isinstance(getattr(after, "value", None), ast.Constant), \
        "no docstring after __version__ in difflr/__init__.py"
    o = page["difflr.__version__"]
    assert o["heading"] == f"__version__ = {difflr.__version__!r}"
    assert o["text"] == " ".join(after.value.value.replace("`", "").split())


def test_no_attribute_is_documented_by_its_type(page):
    problems = []
    for o in _of_kind(page, "attribute"):
        value = _python_object(o["id"])
        own = (type(value).__doc__ or "").strip().split("\n")[0]
        if not isinstance(value, property) and own and own in o["text"]:
            problems.append(f"{o['id']}: {o['text'][:60]!r}...")
    assert not problems, "\n".join(problems)
