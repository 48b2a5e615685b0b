"""The README stays a front door, and its links and the docs' links lead somewhere.

README.md has at most 150 lines; every relative link in README.md and docs/*.md names a file
that exists and, for `page.md#anchor`, a heading of that page (GitHub's slugs); every page
under docs/ is linked from the README.
"""
import collections
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
DOCS = sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
PAGES = [README] + DOCS
MAX_README_LINES = 150


def _without_fences(text):
  """The text without fenced code blocks, where '#' starts no heading."""
  return re.sub(r'^(```|~~~).*?^\1[^\n]*$', '', text, flags=re.S | re.M)


def _prose(text):
  """The text without code blocks and inline code, where brackets are not links."""
  return re.sub(r'`[^`\n]*`', '', _without_fences(text))


def links(path):
  """The link targets of a markdown file: `[text](target)` and `![alt](target)`."""
  targets = re.findall(r'\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)',
                       _prose(open(path).read()))
  return [t for t in targets if not re.match(r'[a-z][a-z0-9+.-]*:', t, re.I)]


def slug(heading):
  """GitHub's anchor for a heading: lowercase, punctuation other than - and _ dropped,
  spaces to '-' (inline code and link markup render as their text)."""
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading).strip().lower()
  text = ''.join(c for c in text if c.isalnum() or c in '-_ ')
  return text.replace(' ', '-')


def anchors(path):
  """Every heading's anchor in a markdown file, with GitHub's -1, -2 for repeats."""
  seen = collections.Counter()
  found = set()
  for line in _without_fences(open(path).read()).splitlines():
    match = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
    if not match:
      continue
    base = slug(match.group(1))
    found.add(base if not seen[base] else f'{base}-{seen[base]}')
    seen[base] += 1
  return found


def test_slug_follows_github():
  assert slug("Experiments: the note's questions") == 'experiments-the-notes-questions'
  assert slug('What install.sh does') == 'what-installsh-does'
  assert slug('GPU results (NVIDIA H200)') == 'gpu-results-nvidia-h200'
  assert slug('Your own model through `train_step`') == 'your-own-model-through-train_step'
  assert slug('Interruptions, resuming -- and more') == 'interruptions-resuming----and-more'


def test_the_readme_is_a_front_door():
  lines = len(open(README).read().splitlines())
  assert lines <= MAX_README_LINES, (
      f'README.md has {lines} lines, more than {MAX_README_LINES}: move the detail to a '
      'page under docs/ and link it from the README.')


@pytest.mark.parametrize('page', PAGES, ids=[os.path.relpath(p, ROOT) for p in PAGES])
def test_every_link_resolves(page):
  broken = []
  for target in links(page):
    path, _, anchor = target.partition('#')
    full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.exists(full):
      broken.append(f'{target}: no file {os.path.relpath(full, ROOT)}')
    elif anchor and full.endswith('.md') and anchor not in anchors(full):
      broken.append(f'{target}: no heading with the anchor #{anchor} in '
                    f'{os.path.relpath(full, ROOT)} (its anchors: {sorted(anchors(full))})')
  assert not broken, f'{os.path.relpath(page, ROOT)} has broken links:\n' + '\n'.join(broken)


def test_every_docs_page_is_linked_from_the_readme():
  assert DOCS, 'docs/ has no pages'
  linked = {os.path.normpath(os.path.join(ROOT, t.partition('#')[0]))
            for t in links(README) if t.partition('#')[0]}
  missing = [os.path.relpath(p, ROOT) for p in DOCS if os.path.normpath(p) not in linked]
  assert not missing, f'README.md links no docs page {missing}; add each to its list of pages.'
