"""Runs the Python example of README.md exactly as written there: the fenced ```python block
right after the line `<!-- ci: python-example -->`. Errors point at README.md's own lines.

    PYTHONPATH=target/python-client python build-support/clients/python/readme_example.py

CI (build-support/scripts/stack-smoke.sh) runs it against its own stack, with the addresses
of that stack in USER_SERVICE_ADDR and ORDER_SERVICE_ADDR, which the example reads.
"""

import pathlib
import re
import sys

MARKER = "<!-- ci: python-example -->"
README = pathlib.Path(__file__).resolve().parents[3] / "README.md"


def example(readme: str) -> tuple[str, int]:
    """The example's code and the README line it starts on (1-based)."""
    before, marker, after = readme.partition(MARKER)
    if not marker:
        sys.exit(f"{README}: no line {MARKER}")
    block = re.match(r"[ \t]*\n```python\n(.*?)^```[ \t]*$", after, re.DOTALL | re.MULTILINE)
    if block is None:
        sys.exit(f"{README}: no ```python block right after {MARKER}")
    first_line = before.count("\n") + 3
    return block.group(1), first_line


def main() -> None:
    code, first_line = example(README.read_text(encoding="utf-8"))
    # Blank lines ahead of the code put each statement on its README line number.
    source = "\n" * (first_line - 1) + code
    exec(compile(source, str(README), "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    main()
