"""Project wiring: CI runs exactly the README's test command; the package's shape."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hdml_tf"
MAX_FUNCTION_LINES = 60


def _readme_block_after(heading_text):
    readme = (ROOT / "README.md").read_text()
    start = readme.index(heading_text)
    match = re.search(r"```bash\n(.*?)\n```", readme[start:], re.S)
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command():
    command = _readme_block_after("The tests (what `.ci/run` runs")
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    assert command in ci_lines
    assert "pytest" in command and "set -euo pipefail" in ci_lines


def test_readme_main_job_installs_what_it_needs():
    command = _readme_block_after("The main job")
    for piece in ("dataset-fashion-mnist", "requirements.txt", "-e .", "hdml-tf demo"):
        assert piece in command


# ------------------------------------------------------------------ the package


def _modules():
    """Dotted name -> path of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph():
    """module -> the package modules it imports anywhere in its source (from the AST:
    ``from hdml_tf import config`` names hdml_tf.config, ``from hdml_tf.data.base import
    X`` names hdml_tf.data.base)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    prefix = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(prefix + ([base] if base else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    edges.add(target if target in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "hdml_tf.training.loop" in graph  # the graph is read
    assert _cycles(graph) == []


def test_cycle_detection_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_entry_points_import_the_command_line():
    importers = sorted(m for m, edges in import_graph().items() if "hdml_tf.cli" in edges)
    assert importers == [], importers  # hdml_tf/__main__.py goes through hdml_tf_entry
    entry = ast.parse((ROOT / "hdml_tf_entry.py").read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == "hdml_tf"
               and any(a.name == "cli" for a in n.names) for n in ast.walk(entry))


def test_no_main_blocks_in_the_library():
    mains = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
             if p.name != "__main__.py" and '__name__ == "__main__"' in p.read_text()]
    assert mains == []


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                f"({length} lines)")
    assert long == []
