"""The layout: the repository's modules import each other without a cycle, counting imports inside
functions too (an import hidden in a function must not hide a cycle), and the modules that hold shared
facts depend on nothing of ours (docs/design.md, "Layout")."""
import ast
import os


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted([name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")] + ["kernels"])


def imports_of(module):
    """The repository modules that `module` imports anywhere in its source (top level or in a function)."""
    path = os.path.join(ROOT, "kernels", "__init__.py") if module == "kernels" else os.path.join(ROOT, module + ".py")
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return sorted(names & set(MODULES) - {module})


def test_no_import_cycle():
    graph = {module: imports_of(module) for module in MODULES}
    done, on_path = set(), []

    def visit(module):
        assert module not in on_path, "import cycle: " + " -> ".join(on_path[on_path.index(module):] + [module])
        if module in done:
            return
        on_path.append(module)
        for imported in graph[module]:
            visit(imported)
        on_path.pop()
        done.add(module)

    for module in MODULES:
        visit(module)


def test_shared_facts_depend_on_nothing_of_ours():
    for module in ("sales", "config", "files", "kernels"):
        assert imports_of(module) == [], module
    assert "pretrain" not in imports_of("grpo") and "simulate" not in imports_of("reward")


def test_the_run_folder_is_the_training_loops_business():
    """runs.py (the lock, the run record, the claim of a folder) serves the two training loops and what loads
    their models; the model and the files it is written with know nothing of runs."""
    assert "runs" in imports_of("grpo") and "runs" in imports_of("pretrain")
    for module in ("model", "files", "training", "tokenizer", "kernels"):
        assert "runs" not in imports_of(module), module
    assert not {"grpo", "pretrain"} & set(imports_of("runs"))
