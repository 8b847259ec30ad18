"""A Griffe extension for the API reference: what a user can import and read.

The reference is built by inspection (difflr.layers' classes are made by a
function), which shows what Python sees, not what a user should rely on:

- bases by where they are defined: `keras.src.layers.core.dense.Dense`
  (Keras's implementation package, not its API) or a private difflr class
  (`difflr._unfreezing.Unfreezing`). Each base is shown by its public name
  (`keras.layers.Dense`); a base with none is replaced by its own bases.
- a variadic parameter (`**kwargs`) as "required" in the tables; it
  shows the empty tuple or dict it gets instead.
- a constant's docstring is its type's (`__version__` would read as
  `str.__doc__`): it is taken from the source instead (the string literal
  after the assignment), or dropped if the source has none.
"""

import functools
import inspect
import pathlib
import sys

import griffe

# Implementation packages, public-looking by name: Keras's API is what
# `keras/api` re-exports, its code lives in `keras.src`.
_NOT_API = {"src"}


def _private(part):
    return part.startswith("_") or part in _NOT_API


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in vars(module) if not name.startswith("_")]
    return names


@functools.cache
def _public_modules(top):
    """[(path, module)] of every module reachable from package `top` by
    public names, breadth first."""
    found, queue, seen = [], [(top, sys.modules[top])], set()
    while queue:
        path, module = queue.pop(0)
        if id(module) in seen:
            continue
        seen.add(id(module))
        found.append((path, module))
        for name in _public_names(module):
            value = getattr(module, name, None)
            if (inspect.ismodule(value) and not _private(name)
                    and value.__name__.split(".")[0] == top):
                queue.append((f"{path}.{name}", value))
    return found


def public_path(cls):
    """The public dotted name of class `cls`, or None if it has none.

    Of several (`keras.Optimizer`, `keras.optimizers.Optimizer`), the one
    closest to where the class is defined (`keras.src.optimizers...`),
    then the shortest.
    """
    top = cls.__module__.split(".")[0]
    if top not in sys.modules:
        return None
    paths = [f"{path}.{cls.__name__}" for path, module in _public_modules(top)
             if cls.__name__ in _public_names(module)
             and getattr(module, cls.__name__, None) is cls]
    if not paths:
        return None
    home = [part for part in cls.__module__.split(".") if not _private(part)]

    def rank(path):
        parts = path.split(".")[:-1]
        shared = next((i for i, (a, b) in enumerate(zip(parts, home)) if a != b),
                      min(len(parts), len(home)))
        return -shared, len(parts), path

    return min(paths, key=rank)


def public_bases(cls):
    """The public names of `cls`'s bases, `object` left out; a base
    without a public name is replaced by its own bases."""
    bases = []
    for base in cls.__bases__:
        if base is object:
            continue
        path = public_path(base)
        for name in [path] if path else public_bases(base):
            if name not in bases:
                bases.append(name)
    return bases


@functools.cache
def _static_module(name, filepath):
    """The module as Griffe reads it from source (no import)."""
    path = pathlib.Path(filepath)
    return griffe.visit(name, filepath=path, code=path.read_text())


def _source_docstring(attr):
    module = attr.module
    if not isinstance(module.filepath, pathlib.Path):
        return None
    static = _static_module(module.path, str(module.filepath))
    try:
        return static[attr.path[len(module.path) + 1:]].docstring
    except KeyError:
        return None


# What a variadic parameter holds when the call passes nothing to it.
_EMPTY = {griffe.ParameterKind.var_positional: "()",
          griffe.ParameterKind.var_keyword: "{}"}


class PublicApi(griffe.Extension):
    def on_class_instance(self, *, node, cls, **kwargs):
        cls.bases = public_bases(node.obj)

    def on_function_instance(self, *, node, func, **kwargs):
        # A parameter without a default reads as "required" in the tables;
        # `**kwargs` is not (the signature still shows no default for it).
        for parameter in func.parameters:
            if parameter.kind in _EMPTY and parameter.default is None:
                parameter.default = _EMPTY[parameter.kind]

    def on_attribute_instance(self, *, node, attr, **kwargs):
        if attr.docstring is None or node.obj.__doc__ != type(node.obj).__doc__:
            return  # a documented object of its own (a class, a function)
        source = _source_docstring(attr)
        attr.docstring = None if source is None else griffe.Docstring(
            source.value, lineno=source.lineno, endlineno=source.endlineno,
            parent=attr, parser=attr.docstring.parser,
            parser_options=attr.docstring.parser_options)
