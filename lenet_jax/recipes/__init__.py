"""The recipes: one module per named base configuration, in the manner of big_vision's
config files.

Each module defines `get_config() -> Config` and says in its docstring what the
recipe is and why, the command that trains it, its expected runtime and the result
it gave, each number with where the repository records it. `config.RECIPES` names
them and `config.recipe(name)` (`run.py --recipe=NAME`) builds one; the modules
import only `lenet_jax.config`'s dataclasses, and config.py imports a module only
when its recipe is asked for, so there is no import cycle.
"""
