"""A Griffe extension for the API reference: difflr's docstrings as Markdown.

difflr's docstrings are Google style, and their examples are doctests
(`tests/test_docstrings.py` runs them) written flush with the text after a
line `Example:`. Markdown would read `>>>` as nested quotes and a printed
`[0.1, 1.0]` as a link, so each doctest run (up to a blank line) becomes a
fenced `pycon` block, and `Example:` a bold caption rather than a Google
section (whose body Griffe expects indented).
"""

import griffe


def fence_doctests(text):
    lines, out, block, fenced = text.split("\n"), [], None, False
    for line in lines + [""]:
        if block is None and line.lstrip().startswith("```"):
            fenced = not fenced  # already a code block: leave it alone
        if block is None and not fenced and line.lstrip().startswith(">>>"):
            block = []
        if block is not None:
            if line.strip():
                block.append(line)
                continue
            indent = block[0][: len(block[0]) - len(block[0].lstrip())]
            out += [f"{indent}```pycon", *block, f"{indent}```"]
            block = None
        out.append("**Example:**" if line.strip() == "Example:" and
                   not line.startswith(" ") else line)
    return "\n".join(out[:-1])


class DoctestFences(griffe.Extension):
    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)

    def on_instance(self, *, obj, **kwargs):  # Griffe before on_object
        self.on_object(obj=obj)
