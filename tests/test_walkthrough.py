"""docs/walkthrough.md runs: every ```python block is run in order, in one namespace, from the
repository's folder, on the tiny-a fixture, and what it prints must equal the ```text block that
follows it (a block with no output block must print nothing). After changing the page or the
code it walks through, `python tests/test_walkthrough.py --update` rewrites the output blocks;
read the diff before committing it."""
import contextlib
import io
import os
import re
import sys

import numpy as np

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
PAGE = os.path.join(REPO_DIR, "docs", "walkthrough.md")
BLOCK = re.compile(r"```python\n(.*?)```\n(?:\n```text\n(.*?)```\n)?", re.S)


def run_blocks(text):
    """[(code, expected output or None, printed output)] for every python block of the page."""
    namespace, results = {}, []
    saved_cwd, saved_options = os.getcwd(), np.get_printoptions()
    os.environ["WALKTHROUGH_MODEL"] = "tests/fixtures/tiny-a"  # what CI has; a reader's 124M prints other numbers
    os.chdir(REPO_DIR)
    sys.path.insert(0, REPO_DIR)
    try:
        for match in BLOCK.finditer(text):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(match[1], "docs/walkthrough.md", "exec"), namespace)
            results.append((match, match[2], printed.getvalue()))
    finally:
        os.chdir(saved_cwd)
        np.set_printoptions(**saved_options)
        del os.environ["WALKTHROUGH_MODEL"]
    return results


def test_every_block_runs_and_prints_what_the_page_shows():
    with open(PAGE, encoding="utf-8") as f:
        text = f.read()
    results = run_blocks(text)
    assert len(results) >= 10 and text.count("```python") == len(results), "every python block is checked"
    for match, expected, printed in results:
        assert printed == (expected or ""), f"the block\n{match[1]}\nprinted\n{printed}\nbut the page shows\n{expected}"


def test_the_readme_links_to_the_walkthrough_in_its_first_lines():
    with open(os.path.join(REPO_DIR, "README.md"), encoding="utf-8") as f:
        first_lines = "".join(f.readlines()[:12])
    assert "(docs/walkthrough.md)" in first_lines


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    with open(PAGE, encoding="utf-8") as f:
        text = f.read()
    pieces, end = [], 0
    for match, _, printed in run_blocks(text):
        pieces += [text[end : match.start()], f"```python\n{match[1]}```\n"]
        pieces += [f"\n```text\n{printed}```\n"] if printed else []
        end = match.end()
    with open(PAGE, "w", encoding="utf-8") as f:
        f.write("".join(pieces) + text[end:])
