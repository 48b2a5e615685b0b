"""The README's Python API example runs as written (on the test's own IDX files)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_api_example_runs(idx_dir):
  readme = open(os.path.join(ROOT, 'README.md')).read()
  api = readme[readme.index('## Python API'):]
  code = re.search(r'```python\n(.*?)```', api, re.S).group(1)
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=600, cwd=ROOT,
                        env={**os.environ, 'PYTHONPATH': ROOT,
                             'LENET_JAX_IDX_DIR': str(idx_dir)})
  assert proc.returncode == 0, proc.stderr
  accuracy = float(re.search(r'test accuracy ([\d.]+)', proc.stdout).group(1))
  assert 0.0 <= accuracy <= 1.0
