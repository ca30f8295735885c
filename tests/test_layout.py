"""The layout promises of the README's "Layout" section, checked on the source itself.

Imports are read with `ast`, so an import inside a function counts as much as one at the top. An
import under `if __name__ == "__main__":` belongs to the script being run, not to the module: when
`python gpt2.py` runs, that code is the module `__main__`, and `import gpt2` elsewhere loads a
separate module that never runs it.
"""
import ast
import os
import re

import pytest

from conftest import REPO_DIR

MAX_MODULE_LINES = 450
PICO_MAX_CODE_LINES = 60


def project_files():
    """Every Python file of the project outside tests/, relative to the repository."""
    files = []
    for folder in ("", "bench", "references"):
        for name in sorted(os.listdir(os.path.join(REPO_DIR, folder) or REPO_DIR)):
            if name.endswith(".py"):
                files.append(os.path.join(folder, name))
    return files


def top_level_modules():
    return {path[:-3] for path in project_files() if "/" not in path}


def modules_in_tests():
    return {name[:-3] for name in os.listdir(os.path.join(REPO_DIR, "tests")) if name.endswith(".py")}


def is_main_block(node):
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__")


def imported_names(path):
    """The top-level names of every module `path` imports, wherever the import statement is."""
    with open(os.path.join(REPO_DIR, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names, pending = set(), list(tree.body)
    while pending:
        node = pending.pop()
        if is_main_block(node):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
        pending.extend(ast.iter_child_nodes(node))
    return names


def import_graph():
    modules = top_level_modules()
    return {path[:-3]: imported_names(path) & modules for path in project_files() if "/" not in path}


def test_no_import_cycle_among_the_projects_modules():
    graph = import_graph()
    visiting, done = [], set()

    def visit(module):
        if module in visiting:
            cycle = visiting[visiting.index(module):] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_cycle_check_would_see_an_import_inside_a_function(tmp_path):
    """Guards the check above: imports nested in functions and branches are found."""
    source = "def f():\n    if True:\n        import utils\n    from errors import GPT2Error\n"
    path = tmp_path / "example.py"
    path.write_text(source)
    assert imported_names(os.path.relpath(path, REPO_DIR)) == {"utils", "errors"}


def test_encoder_imports_nothing_of_the_project():
    assert imported_names("encoder.py") & top_level_modules() == set()


def test_the_model_library_has_no_command_line():
    assert "argparse" not in imported_names("gpt2.py")


def test_nothing_outside_tests_imports_from_tests():
    for path in project_files():
        assert not imported_names(path) & modules_in_tests(), path


@pytest.mark.parametrize("path", project_files())
def test_no_module_is_over_450_lines(path):
    with open(os.path.join(REPO_DIR, path), encoding="utf-8") as f:
        n_lines = len(f.readlines())
    assert n_lines <= MAX_MODULE_LINES, f"{path} has {n_lines} lines: split it by job"


def test_pico_is_at_most_60_lines_of_code():
    """Blank lines and comment lines do not count; docstrings do."""
    with open(os.path.join(REPO_DIR, "gpt2_pico.py"), encoding="utf-8") as f:
        code = [line for line in f if not re.fullmatch(r"\s*(#.*)?", line.rstrip("\n"))]
    assert len(code) <= PICO_MAX_CODE_LINES, len(code)


def test_readme_layout_names_every_module():
    with open(os.path.join(REPO_DIR, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    for path in project_files():
        if not path.endswith("__init__.py"):
            assert f"`{path}`" in layout, f"README's Layout section does not name {path}"
