"""Warnings from the libraries underneath, as the command lines show them.

Python prints a `warnings.warn` as two lines (the file and line that warned,
then the source line), every time its location warns, and libraries tend to
warn from deep inside a step or an exit hook, so the lines land among or after
the results. After `install()` (the command lines call it first) each distinct
warning prints once, as one line on stderr when it happens:
`warning (LIBRARY): MESSAGE [CATEGORY]`.
"""
import contextlib
import sys
import warnings


def _library(filename: str) -> str:
  """The top-level package a warning came from, judged by its file's path."""
  parts = filename.replace('\\', '/').split('/')
  if 'site-packages' in parts:
    index = parts.index('site-packages') + 1
    if index < len(parts):
      return parts[index].removesuffix('.py')
  return parts[-1].removesuffix('.py') or 'python'


def one_line_warnings(stream=None):
  """The `warnings.showwarning` of the command lines: each distinct warning
  once, on one line, on `stream` (default stderr). Which warnings show is left
  to the filters (Python's defaults hide dependencies' DeprecationWarnings)."""
  seen = set()

  def show(message, category, filename, lineno, file=None, line=None):
    text = ' '.join(str(message).split())
    if (category, text) in seen:
      return
    seen.add((category, text))
    print(f'warning ({_library(filename)}): {text} [{category.__name__}]',
          file=stream or sys.stderr, flush=True)
  return show


def install() -> None:
  """For a command line's whole process, exit hooks included."""
  warnings.showwarning = one_line_warnings()


@contextlib.contextmanager
def warnings_once(stream=None):
  """`install` for the block only (the filters and the previous display come back)."""
  with warnings.catch_warnings():
    warnings.showwarning = one_line_warnings(stream)
    yield
