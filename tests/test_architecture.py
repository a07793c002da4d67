"""The package's structure, read from its source with ``ast`` (nothing is imported): no import circles between
tfhier's modules (imports inside functions included), no module importing another's private names, and no module
too long to read in one sitting (see docs/architecture.md)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "tfhier"
MAX_LINES = 700

#: tfhier's layers, lowest first (docs/architecture.md): a module imports from its own layer or those below.
#: A module belongs to the layer of the longest name here that is it or a package above it.
LAYERS = (
    ("foundations", ("tfhier.replicas", "tfhier.fileio", "tfhier.checks", "tfhier.quiet", "tfhier.cluster")),
    ("noise", ("tfhier.noise",)),
    ("layers and heads", ("tfhier.blocks", "tfhier.heads")),
    ("data", ("tfhier.data",)),
    ("objectives", ("tfhier.objectives",)),
    ("models", ("tfhier.models",)),
    ("runs", ("tfhier.runs", "tfhier.rundir", "tfhier.samples", "tfhier.plotting")),
    ("applications", ("tfhier.training", "tfhier.evaluation", "tfhier.serving", "tfhier.synthetic_table")),
    ("interfaces", ("tfhier", "tfhier.api", "tfhier.cli")),
)


def module_files(root=PACKAGE):
    """``{dotted module name: path}`` of every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _absolute(module, node, is_package):
    """The absolute module name a (possibly relative) ``ImportFrom`` names."""
    if not node.level:
        return node.module
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module, path, modules):
    """``[(imported module, names imported from it, line)]`` for every import in ``path``, at any depth (module
    level, inside functions, classes and conditionals). ``from a import b`` where ``a.b`` is a module counts as
    an import of ``a.b``; an import of a name that is no module of the package is dropped."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    out.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, is_package)
            if source is None:
                continue
            plain = []
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    out.append((sub, [], node.lineno))
                else:
                    plain.append(alias.name)
            if plain and source in modules:
                out.append((source, plain, node.lineno))
    return out


def module_aliases(module, path, modules):
    """``{local name: module}`` for the names an import binds to a module of the package anywhere in ``path``
    (``import tfhier.x`` binds ``tfhier``; ``import tfhier.x as y`` and ``from tfhier import x as y`` bind ``y``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                        alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, is_package)
            for alias in node.names:
                if source and f"{source}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
    return aliases


def private_attribute_uses(module, path, modules):
    """``m._name`` attribute reads in ``path`` where ``m`` is a module of the package, named in full
    (``tfhier.x._name``) or by the name an import bound it to (``hp._name``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    aliases = module_aliases(module, path, modules)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            parts, value = [], node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in aliases:
                dotted = ".".join([aliases[value.id]] + parts[::-1])
                if dotted in modules:
                    found.append((dotted, node.attr, node.lineno))
    return found


def import_graph(modules):
    """``{module: {imported module: first line}}`` over the package's modules.

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so an import also reaches the packages
    above its target, except those above the importer itself (already being imported when it runs): a module
    outside ``tfhier.training`` importing ``tfhier.training.checkpoints`` depends on all of the package's
    ``__init__``, a module inside it does not."""
    graph = {m: {} for m in modules}
    for module, path in modules.items():
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        for target, _, line in imports_of(module, path, modules):
            parts = target.split(".")
            for reached in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                if reached in modules and reached not in own:
                    graph[module].setdefault(reached, line)
    return graph


def find_cycles(graph):
    """One cycle per strongly connected component of more than one module (Tarjan), as a list of modules."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        start = min(component)
        # A shortest path from start back to itself inside the component (breadth first).
        previous, frontier, done = {start: None}, [start], None
        while frontier and done is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w not in component:
                        continue
                    if w == start:
                        done = v
                        break
                    if w not in previous:
                        previous[w] = v
                        nxt.append(w)
                if done is not None:
                    break
            frontier = nxt
        path, v = [], done
        while v is not None:
            path.append(v)
            v = previous[v]
        cycles.append(path[::-1] + [start])
    return cycles


def describe(cycle, graph, modules):
    return " -> ".join(cycle) + "  (" + "; ".join(
        f"{modules[a].relative_to(PACKAGE.parent)}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:])) + ")"


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """The graph builder itself: module-level, function-level, relative and ``from package import submodule``
    imports all count, and a cycle hidden in a function is found."""
    pkg = tmp_path / "tfhier"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "a.py").write_text("import os\nfrom tfhier.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from tfhier import c\n    return c\nthing = 1\n")
    (pkg / "c.py").write_text("class C:\n    def g(self):\n        import tfhier.a\n"
                              "        from tfhier.a import _hidden\n")
    modules = module_files(pkg)
    assert set(modules) == {"tfhier", "tfhier.sub", "tfhier.a", "tfhier.sub.b", "tfhier.c"}
    graph = import_graph(modules)
    assert graph["tfhier.sub"] == {"tfhier.sub.b": 1}
    assert graph["tfhier.a"] == {"tfhier.sub": 2, "tfhier.sub.b": 2}  # tfhier.sub's __init__ runs first
    assert graph["tfhier.sub.b"] == {"tfhier.c": 2}
    assert graph["tfhier.c"] == {"tfhier.a": 3}
    cycles = find_cycles(graph)
    assert len(cycles) == 1 and set(cycles[0]) == {"tfhier.a", "tfhier.sub.b", "tfhier.c"}
    assert cycles[0][0] == cycles[0][-1]
    names = [names for _, names, _ in imports_of("tfhier.c", modules["tfhier.c"], modules) if names]
    assert names == [["_hidden"]]
    (pkg / "d.py").write_text("import tfhier.a\nfrom tfhier.sub import b as bee\n"
                              "x = tfhier.a._one + bee._two + bee.thing + tfhier.a.__name__\n")
    modules = module_files(pkg)
    assert private_attribute_uses("tfhier.d", modules["tfhier.d"], modules) == [
        ("tfhier.a", "_one", 3), ("tfhier.sub.b", "_two", 3)]


def test_no_import_circles():
    modules = module_files()
    graph = import_graph(modules)
    cycles = find_cycles(graph)
    assert not cycles, "import circles among tfhier's modules:\n" + "\n".join(
        describe(c, graph, modules) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    modules = module_files()
    found = []
    for module, path in modules.items():
        for target, names, line in imports_of(module, path, modules):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: from {target} import {', '.join(private)}")
        for target, name, line in private_attribute_uses(module, path, modules):
            if target != module:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target}.{name}")
    assert not found, "private names used across modules:\n" + "\n".join(found)


def layer_of(module):
    """``(index, name)`` of the layer ``module`` belongs to (None if no name of :data:`LAYERS` covers it)."""
    best = None
    for index, (name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index, name)
    return best and best[1:]


def test_no_import_goes_up_a_layer():
    modules = module_files()
    unplaced = [m for m in modules if layer_of(m) is None]
    assert not unplaced, (f"modules in no layer: {unplaced}; add them to LAYERS in {pathlib.Path(__file__).name} "
                          f"and to docs/architecture.md")
    graph = import_graph(modules)
    upward = []
    for module, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            (low, low_name), (high, high_name) = layer_of(module), layer_of(target)
            if high > low:
                upward.append(f"{modules[module].relative_to(PACKAGE.parent)}:{line}: {module} ({low_name}) "
                              f"imports {target} ({high_name})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_the_layer_check_sees_an_upward_import():
    """Objectives sit below models: an objective importing a model module is refused."""
    assert layer_of("tfhier.objectives")[0] < layer_of("tfhier.models.base")[0]
    assert layer_of("tfhier.noise")[0] < layer_of("tfhier.objectives")[0]
    assert layer_of("tfhier.training.loop") == layer_of("tfhier.evaluation")
    assert layer_of("tfhier.cli.train")[1] == "interfaces" and layer_of("tfhier")[1] == "interfaces"


@pytest.mark.parametrize("module", sorted(module_files()))
def test_module_reads_in_one_sitting(module):
    path = module_files()[module]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (at most {MAX_LINES})"
