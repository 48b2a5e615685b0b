"""The README's Python programs and docs/api.md's first example run as written.

They run on the test's own IDX files (`LENET_JAX_IDX_DIR`). A ```python block that imports
something is a complete program and runs; one without imports is a fragment and does not.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks(page):
  text = open(os.path.join(ROOT, page)).read()
  return re.findall(r'^```python\n(.*?)^```', text, re.S | re.M)


def is_program(code):
  return re.search(r'^(import \w|from [\w.]+ import )', code, re.M) is not None


def programs():
  """(id, code): every complete program of README.md, then docs/api.md's first block."""
  readme = [code for code in python_blocks('README.md') if is_program(code)]
  found = [(f'README.md[{i}]', code) for i, code in enumerate(readme)]
  found.append(('docs/api.md[0]', python_blocks('docs/api.md')[0]))
  return found


def test_the_readme_has_a_program():
  assert any(name.startswith('README.md') for name, _ in programs())


@pytest.mark.parametrize('name,code', programs(), ids=[name for name, _ in programs()])
def test_the_program_runs(name, code, idx_dir):
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=600, cwd=ROOT,
                        env={**os.environ, 'PYTHONPATH': ROOT,
                             'LENET_JAX_IDX_DIR': str(idx_dir)})
  assert proc.returncode == 0, f'{name} failed:\n{proc.stderr}'
  if 'test accuracy' in code:
    accuracy = float(re.search(r'test accuracy ([\d.]+)', proc.stdout).group(1))
    assert 0.0 <= accuracy <= 1.0
