"""Each experiment's pre-registration: written from its module, committed before its runs.

`text(module)` states what the experiment will test and how, from the module
and `protocol` alone: its families of comparisons with their hypotheses and
primary contrasts, its arms and learning-rate grids, the metrics, the budget
rule, the seeds, the margin and the correction. `python -m experiments NAME
--preregister` writes it to experiments/preregistration/NAME.md, to be
committed before the experiment's first run.

A full-mode run of an experiment (the study, or one of its checks) starts only
when that file holds exactly what the module states now (families marked
`post_hoc` aside: those go in a section of their own, which may grow), and
records the file's hash and the commit that last changed it in
WORKDIR/preregistration.json at its first run; a later invocation whose
pre-registration differs from the recorded one is refused. The report names
the file, its hash and that commit.
"""
import hashlib
import json
import os
import subprocess

from experiments import protocol
from lenet_jax import runs
from lenet_jax.workdir import atomic_write

ROOT = os.path.dirname(os.path.abspath(__file__))
DIRECTORY = os.path.join(ROOT, 'preregistration')
RECORD_FILE = 'preregistration.json'  # in an experiment's workdir
POST_HOC_HEADING = '## Added after results (post hoc)'


def path(name: str) -> str:
  return os.path.join(DIRECTORY, f'{name}.md')


def _overrides(arm: protocol.Arm) -> str:
  if not arm.overrides:
    return 'the base recipe'
  return ', '.join(f'{k}={v!r}' for k, v in arm.overrides.items())


def _contrast(c: protocol.Contrast, primary: bool) -> str:
  metric = c.metric if c.reference_metric in (None, c.metric) else (
      f'{c.metric} - {c.reference_metric}')
  return f'- {"**primary** " if primary else ""}`{c.label}` ({metric})'


def _family(f: protocol.Family) -> list[str]:
  primary = {c.label for c in f.primary_contrasts()}
  lines = [f'### {f.question}: {f.title}', '', f'Hypothesis: {f.hypothesis}', '',
           f'Comparisons ({len(f.contrasts)}, one Holm family):', '']
  lines += [_contrast(c, c.label in primary) for c in f.contrasts]
  if f.post_hoc:
    lines += ['', f'Post hoc: {f.post_hoc}']
  return lines + ['']


def text(module) -> str:
  """The pre-registration of `module`, from the module and `protocol` alone."""
  base = module.base(False) if hasattr(module, 'base') else protocol.base(False)
  arms = list(module.arms(False))
  families = protocol.families_of(module)
  declared = [f for f in families if not f.post_hoc]
  later = [f for f in families if f.post_hoc]
  checked = sorted({label for c in protocol.primary_contrasts(module)
                    for label in (c.arm, c.reference)})
  lines = [
      f'# Pre-registration: {module.NAME}', '',
      f'{module.TITLE}. Written from experiments/{module.NAME}.py and experiments/protocol.py '
      '(`python -m experiments ' + module.NAME + ' --preregister`) and committed before the '
      "experiment's first run; the runs refuse to start if this file differs from what the "
      'module states.', '',
      f'**Question.** {module.QUESTION}', '',
      '## Design', '',
      f'- Base recipe: {base.model.activation}, {base.optim.optimizer} at a '
      f'{base.optim.schedule} learning rate, batch {base.batch_size}, init {base.model.init}, '
      f'dataset {base.data.dataset}.',
      f'- Budget rule: {protocol.budget_words(base)}. A run that reaches the cap is flagged as '
      'not converged.',
      f'- Seeds: the learning rate is tuned on seeds {list(protocol.TUNING_SEEDS)} (every rate '
      f'of the arm\'s grid; best mean validation accuracy; a winning edge extends the grid, up '
      f'to {protocol.MAX_EXTENSIONS} times per side); each arm is reported on seeds '
      f'{protocol.REPORT_SEEDS[0]}-{protocol.REPORT_SEEDS[-1]} at its chosen rate, paired by '
      'seed across arms.',
      '- Primary metric: test accuracy of the best-on-validation model, compared by a paired '
      'bootstrap over the report seeds and the test images (per-example correctness). Other '
      'metrics (named per comparison): a paired t test over seeds.',
      f'- Correction: Holm within each family below, at family-wise alpha {protocol.ALPHA:g}, '
      'for the difference and, separately, for equivalence (TOST).',
      f'- Margin: +-{100 * protocol.MARGIN:g} points of accuracy on Fashion-MNIST '
      f'({100 * protocol.RELATIVE_MARGIN:g}% of the 9.2% error of the default network in the '
      'earlier study). On other data: the same fraction of the reference arm\'s test error '
      f'there; when that is fewer than {protocol.MIN_MARGIN_IMAGES} test images, no '
      'equivalence verdict is made.',
      '- Verdicts: "different" (the Holm interval excludes 0), "equivalent within +-m" (the '
      'Holm TOST interval lies inside +-m), both, or "inconclusive". No "no difference" is '
      'claimed without an equivalence verdict.',
      ]
  if checked:
    lines += [
        '- Checks of the primary comparisons (marked below), training their arms only '
        f'({", ".join(f"`{a}`" for a in checked)}): (1) budget: patience '
        f'{protocol.CHECK_PATIENCE}, at most '
        f'{protocol.CHECK_MAX_EPOCHS} epochs; (2) other data: {protocol.CHECK_DATASET}, with '
        'the margin rule above, and for each comparison the difference between the two '
        'datasets\' effects (a difference-in-differences bootstrap interval); a '
        '"dataset-dependent" claim needs that interval to exclude 0. A verdict "holds" in a '
        'check when the check gives the same verdict (and sign, for a difference).']
  lines += ['', '## Arms', '']
  for arm in arms:
    grid = ', '.join(f'{r:g}' for r in arm.grid(base, False))
    lines.append(f'- `{arm.label}`: {_overrides(arm)}; learning rates {grid}')
  lines += ['', '## Families', '']
  for f in declared:
    lines += _family(f)
  if later or checked:
    lines += [POST_HOC_HEADING, '']
    for f in later:
      lines += _family(f)
  if checked:  # an amendment of the checks, for every experiment that has them
    lines += [f'Checks: {protocol.CHECK_LEVELS_AMENDMENT}', '']
  return '\n'.join(lines).rstrip() + '\n'


def registered_part(document: str) -> str:
  """What is fixed before the results: everything above the post hoc section (its trailing
  blank lines aside, so that adding the section leaves it, and its digest, as it was)."""
  return document.split(POST_HOC_HEADING)[0].rstrip() + '\n'


def digest(document: str) -> str:
  return hashlib.sha256(registered_part(document).encode()).hexdigest()


def write(module) -> str:
  os.makedirs(DIRECTORY, exist_ok=True)
  target = path(module.NAME)
  atomic_write(target, text(module))
  return target


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(['git', '-C', ROOT, *args], capture_output=True, text=True,
                         timeout=30, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def committed_in(target: str) -> str | None:
  """The commit that last changed `target`, if it is committed unchanged; else None."""
  if _git('status', '--porcelain', '--', target) != '':
    return None  # not a git checkout, or the file is new or modified
  return _git('log', '-1', '--format=%H %cs', '--', target) or None


def check_and_record(module, workdir: str) -> dict:
  """Refuses (ValueError naming the fix) unless the committed pre-registration is what the
  module states; records it in the workdir at the first run and checks it later."""
  target = path(module.NAME)
  fix = (f'write it with `python -m experiments {module.NAME} --preregister`, review it and '
         'commit it before the first run')
  if not os.path.exists(target):
    raise ValueError(f'{module.NAME} has no pre-registration ({target}); {fix}.')
  with open(target) as f:
    on_disk = f.read()
  if registered_part(on_disk) != registered_part(text(module)):
    raise ValueError(
        f'{target} differs from what experiments/{module.NAME}.py states now. Once results '
        'exist, leave the declared families, arms and protocol as they are and add what is new '
        'as a new family marked post_hoc="why and when" over existing arms (it goes in a '
        f'section of its own); before any result exists, {fix}.')
  commit = committed_in(target)
  if commit is None:
    raise ValueError(f'{target} is not committed as it is (or this is not a git checkout); '
                     f'{fix}.')
  record = {'file': os.path.relpath(target, os.path.dirname(ROOT)), 'sha256': digest(on_disk),
            'commit': commit}
  recorded_path = os.path.join(workdir, RECORD_FILE)
  if not os.path.exists(recorded_path) and (
      runs.run_ids(workdir) or os.path.exists(os.path.join(workdir, runs.ARCHIVE_FILE))):
    raise ValueError(f'{workdir} holds runs trained before any pre-registration was recorded '
                     'there, so they cannot count as registered; start the study in a new '
                     '--workdir.')
  if os.path.exists(recorded_path):
    with open(recorded_path) as f:
      recorded = json.load(f)
    if recorded.get('sha256') != record['sha256']:
      raise ValueError(
          f'{workdir} was started under another pre-registration ({recorded.get("commit")}, '
          f'sha256 {recorded.get("sha256", "")[:12]}); its runs cannot answer this one. Revert '
          f'{target}, or start the study in a new --workdir.')
    return recorded
  atomic_write(recorded_path, json.dumps(record, indent=2))
  return record


def recorded(workdir: str) -> dict | None:
  try:
    with open(os.path.join(workdir, RECORD_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
