"""The package's layering, checked statically: every import counted, also those inside functions."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("gender_jax", "serve")


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for package in PACKAGES:
    for path in (ROOT / package).rglob("*.py"):
      parts = path.relative_to(ROOT).with_suffix("").parts
      out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
  """Project modules `name` imports, resolved to the modules that exist."""
  found = set()
  is_package = path.name == "__init__.py"
  for node in ast.walk(ast.parse(path.read_text())):
    targets = []
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = name.split(".")[:len(name.split(".")) - node.level + is_package]
        base = ".".join(anchor + ([base] if base else []))
      targets = [f"{base}.{a.name}" for a in node.names] + [base]
    for t in targets:
      while t and t not in modules:  # `from pkg import name`: a module or a name in pkg
        t = t.rpartition(".")[0]
      if t and t != name:
        found.add(t)
  return found


def _graph():
  modules = _modules()
  return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_no_import_cycles():
  graph = _graph()
  # A package's __init__ importing its own submodules is the package's face, not a layer.
  graph = {m: {t for t in ts if not (m in PACKAGES and t.startswith(m + "."))}
           for m, ts in graph.items()}
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for t in sorted(graph[m]):
      if state.get(t) == "open":
        cycles.append(" → ".join(stack[stack.index(t):] + [t]))
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)
  assert not cycles, "import cycles:\n" + "\n".join(cycles)


# The floors, bottom up: a module imports only from its own floor or below. Commands (the
# top-level command modules, every `__main__`, the offline weight conversion) stand on top.
FLOORS = ("gender_jax|gender_jax.cli|gender_jax.parallel", "gender_jax.data", "gender_jax.models",
          "gender_jax.faces", "gender_jax.inference", "gender_jax.evaluation", "gender_jax.train",
          "gender_jax.export|serve")
COMMANDS = ("gender_jax.evaluate", "gender_jax.predict", "gender_jax.calibrate",
            "gender_jax.clean", "gender_jax.convert", "gender_jax.faces.from_tflite")


def floor(module: str) -> int:
  if module in COMMANDS or module.endswith("__main__"):
    return len(FLOORS)
  best = -1
  for level, prefixes in enumerate(FLOORS):
    for prefix in prefixes.split("|"):
      if module == prefix or module.startswith(prefix + ".") and prefix != "gender_jax":
        best = level
  assert best >= 0, f"{module} stands on no floor: add it to FLOORS"
  return best


def test_imports_point_down_the_floors():
  up = sorted(f"{m} (floor {floor(m)}) → {t} (floor {floor(t)})"
              for m, ts in _graph().items() for t in ts if floor(t) > floor(m))
  assert not up, "imports running up a floor:\n" + "\n".join(up)


def test_the_package_top_holds_few_modules():
  top = sorted(p.name for p in (ROOT / "gender_jax").glob("*.py"))
  assert len(top) <= 12, top


def test_one_place_opens_an_image_from_bytes():
  users = [str(p.relative_to(ROOT)) for p in _modules().values() if "Image.open(" in p.read_text()]
  assert users == ["gender_jax/data/preprocess.py"]


def test_no_two_modules_share_a_file_name():
  names = {}
  for module, path in _modules().items():
    if path.name not in ("__init__.py", "__main__.py"):
      names.setdefault(path.name, []).append(module)
  assert not {n: ms for n, ms in names.items() if len(ms) > 1}


def test_modules_stay_small_and_the_loop_readable():
  """No module over 400 lines; `train_and_evaluate` (the loop a reader follows) under 120."""
  long = {str(p.relative_to(ROOT)): n for p in _modules().values()
          if (n := len(p.read_text().splitlines())) > 400}
  assert not long
  tree = ast.parse((ROOT / "gender_jax" / "train" / "loop.py").read_text())
  [loop] = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
            and n.name == "train_and_evaluate"]
  assert loop.end_lineno - loop.lineno + 1 < 120
