"""Writes docs/api.md, the API reference, from the docstrings of torchqat's public names
(torchqat.__all__, torchqat.int8, torchqat.data). Run after changing a public docstring:

    PYTHONPATH=python python scripts/api_docs.py            # writes docs/api.md
    PYTHONPATH=python python scripts/api_docs.py --check    # exit 1 if docs/api.md is stale
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _section(qualname: str, obj) -> str:
    doc = inspect.getdoc(obj) or "(no docstring)"
    kind = "class" if inspect.isclass(obj) else "function"
    sig = _signature(obj.__init__ if kind == "class" and "__init__" in vars(obj) else obj)
    if kind == "class":
        sig = sig.replace("(self, ", "(").replace("(self)", "()")
    return f"### `{qualname}`\n\n```python\n{kind} {qualname}{sig}\n```\n\n{doc}\n"


def render() -> str:
    import torchqat
    import torchqat.data
    import torchqat.int8

    parts = ["# API reference\n",
             "Generated from the docstrings by `scripts/api_docs.py`; do not edit by hand.\n"]
    groups = [("torchqat", torchqat, [n for n in torchqat.__all__ if n != "__version__"]),
              ("torchqat.int8", torchqat.int8, list(torchqat.int8.__all__)),
              ("torchqat.data", torchqat.data,
               list(getattr(torchqat.data, "__all__", [n for n in vars(torchqat.data)
                                                       if not n.startswith("_")])))]
    for module_name, module, names in groups:
        parts.append(f"## `{module_name}`\n")
        for name in names:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or callable(obj)):
                continue
            if getattr(obj, "__module__", "").split(".")[0] != "torchqat":
                continue
            parts.append(_section(f"{module_name}.{name}", obj))
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    path = os.path.join(ROOT, "docs", "api.md")
    if args.check:
        with open(path) as f:
            stale = f.read() != text
        print(f"docs/api.md is {'stale' if stale else 'up to date'}")
        return 1 if stale else 0
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
