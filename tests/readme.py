"""The README's examples, as the tests that run them read them.

Every bash and python block of README.md is an example with a name, given by the HTML comment
right above its fence (invisible when the README is rendered):

    <!-- example: calling-curl -->
    <!-- example: deploy-kubernetes (not run: needs a Kubernetes cluster) -->

A block may be followed by the output it prints, marked `<!-- output -->` above a ```text
fence; `...` in it stands for any text (a key, random-weight words). Other fences (yaml, text)
are not run: yaml examples are checked as configuration (tests/test_readme.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = ("bash", "python")

_FENCE = re.compile(
    r"(?P<marks>(?:[ \t]*<!--[^>]*-->\n)*)(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\n(?P<body>.*?)"
    r"^(?P=indent)```[ \t]*$",
    re.S | re.M,
)
_EXAMPLE = re.compile(r"<!-- example: (?P<name>[\w-]+)(?: \(not run: (?P<why>[^)]*)\))? -->")


@dataclass(frozen=True)
class Example:
    name: str | None
    lang: str
    code: str
    line: int  # where its fence opens in README.md
    not_run: str | None = None  # why the tests do not run it
    output: str | None = None  # what the README says it prints


def examples(text: str | None = None) -> list[Example]:
    text = README.read_text() if text is None else text
    found: list[Example] = []
    for match in _FENCE.finditer(text):
        marks, indent = match["marks"], match["indent"]
        code = re.sub(rf"^{re.escape(indent)}", "", match["body"], flags=re.M)
        line = text.count("\n", 0, match.start("indent")) + 1
        if "<!-- output -->" in marks and found and match["lang"] == "text":
            last = found.pop()
            found.append(Example(last.name, last.lang, last.code, last.line, last.not_run, code))
            continue
        named = _EXAMPLE.search(marks)
        found.append(
            Example(
                named["name"] if named else None,
                match["lang"],
                code,
                line,
                named["why"] if named else None,
            )
        )
    return found


def shape(output: str) -> re.Pattern[str]:
    """The README's shown output as a pattern: line by line, `...` matching any text."""
    lines = [
        ".*".join(re.escape(part) for part in line.rstrip().split("..."))
        for line in output.strip("\n").splitlines()
    ]
    return re.compile(r"\s*\n".join(lines) + r"\s*", re.S)
