"""The recipes as config modules (lenet_jax/recipes/) and the docstrings that describe
them and the experiments.

Every recipe module builds a valid Config, `config.recipe(name)` builds the very same
one (run ids are hashes of configs, so the committed results depend on it), and each
module's docstring names the command that trains it; each experiment module's
docstring names the command that runs it.
"""
import importlib
import os
import pkgutil

import pytest

from experiments import EXPERIMENTS
from lenet_jax import config as config_lib
from lenet_jax import recipes
from lenet_jax import sweep as sweep_lib
from lenet_jax import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(m.name for m in pkgutil.iter_modules(recipes.__path__))
# --recipe's default (lenet_jax/cli.py): its command needs no --recipe flag.
DEFAULT_RECIPE = 'default'
# run_id of each recipe at seed 0, as the definitions in config.py gave them before
# the recipes moved to their own modules; the default's is the id of the claims
# study's seed-0 default-arm run (experiments/results/claims/results.csv).
RUN_IDS = {'default': '5400dda3ca74', 'd2l': '6fb2f62d9fd5'}


def _module(name):
  return importlib.import_module(f'lenet_jax.recipes.{name}')


def test_every_recipe_module_is_a_recipe_and_every_recipe_a_module():
  assert MODULES == sorted(config_lib.RECIPES)


@pytest.mark.parametrize('name', MODULES)
def test_get_config_is_a_valid_config(name):
  cfg = _module(name).get_config()
  assert isinstance(cfg, config_lib.Config)
  validation.check_config(sweep_lib.resolve(cfg))


@pytest.mark.parametrize('name', sorted(config_lib.RECIPES))
def test_recipe_is_the_module_config(name):
  cfg = _module(name).get_config()
  assert config_lib.recipe(name) == cfg
  assert config_lib.RECIPES[name]() == cfg
  assert config_lib.run_id(cfg) == RUN_IDS[name]


def test_the_old_names_still_build_the_recipes():
  assert config_lib.default() == _module('default').get_config()
  assert config_lib.d2l() == _module('d2l').get_config()


@pytest.mark.parametrize('name', MODULES)
def test_docstring_names_its_command(name):
  doc = _module(name).__doc__ or ''
  commands = [line.strip() for line in doc.splitlines()
              if line.strip().startswith('python run.py')]
  assert commands, f'lenet_jax/recipes/{name}.py: its docstring gives no `python run.py` command'
  flag = f'--recipe={name}'
  if name != DEFAULT_RECIPE:
    assert any(flag in c.split() for c in commands), (
        f'lenet_jax/recipes/{name}.py: its command {commands} does not say {flag}')
  for word in ('Expected runtime', 'Result'):
    assert word in doc, f'lenet_jax/recipes/{name}.py: its docstring has no "{word}"'
  # The command is the one whose measured result docs/experiments.md records.
  results = open(os.path.join(ROOT, 'docs', 'experiments.md')).read()
  for command in commands:
    assert f'`{command}`' in results, (
        f'lenet_jax/recipes/{name}.py: {command!r} is not a command of docs/experiments.md')


def test_an_unknown_recipe_names_the_known_ones():
  with pytest.raises(ValueError) as e:
    config_lib.recipe('lenet1')
  assert str(e.value) == ("recipe='lenet1' is unknown; choose one of "
                          f'{sorted(config_lib.RECIPES)}.')


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_experiment_docstring_names_its_command(name):
  doc = importlib.import_module(f'experiments.{name}').__doc__ or ''
  assert f'python -m experiments {name}' in doc, (
      f'experiments/{name}.py: its docstring does not give `python -m experiments {name}`')
  for word in ('Expected runtime', 'Result'):
    assert word in doc, f'experiments/{name}.py: its docstring has no "{word}"'
