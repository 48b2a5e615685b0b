"""The work directory's lock where flock is missing or local to one node: O_EXCL files."""
import errno
import fcntl
import os
import socket

import pytest

from lenet_jax import workdir as workdir_lib
from lenet_jax.workdir import Lock, Locked


@pytest.fixture
def file_locks(monkeypatch):
  monkeypatch.setenv(workdir_lib.LOCK_ENV, 'file')


def test_an_exclusive_lock_refuses_a_second_and_is_released(tmp_path, file_locks):
  path = str(tmp_path / '.lock')
  with Lock(path, 'the workdir'):
    assert (tmp_path / '.lock.held').read_text() == f'{socket.gethostname()} {os.getpid()}'
    with pytest.raises(Locked, match=f'the workdir is in use by process {os.getpid()} on '
                       f'{socket.gethostname()} \\(lock file {path}.held\\)'):
      with Lock(path, 'the workdir'):
        pass
    assert (tmp_path / '.lock.held').exists()  # the refused one took nothing away
  assert os.listdir(tmp_path) == []
  with Lock(path, 'the workdir'):  # free again
    pass


def test_shared_holders_coexist_but_exclude_an_exclusive_one(tmp_path, file_locks):
  path = str(tmp_path / '.lock')
  shard = Lock(path, 'shard', shared=True)
  with shard:
    held = [f for f in os.listdir(tmp_path) if f.startswith('.lock.shared-')]
    assert len(held) == 1
    with pytest.raises(Locked, match='in use by process'):
      with Lock(path, 'whole sweep'):
        pass
    assert sorted(os.listdir(tmp_path)) == held  # the refused one removed its own file
  with Lock(path, 'whole sweep'):
    with pytest.raises(Locked, match='in use by process'):
      with Lock(path, 'shard', shared=True):
        pass


def test_a_dead_holder_here_is_taken_over_one_elsewhere_is_named(tmp_path, file_locks):
  path = str(tmp_path / '.lock')
  (tmp_path / '.lock.held').write_text(f'{socket.gethostname()} 999999999')  # no such pid
  with Lock(path, 'the workdir'):
    assert (tmp_path / '.lock.held').read_text().endswith(str(os.getpid()))
  (tmp_path / '.lock.held').write_text('node-17 4242')
  with pytest.raises(Locked) as error:
    with Lock(path, 'the workdir'):
      pass
  assert ('in use by process 4242 on node-17' in str(error.value)
          and 'If that process is gone (a node that failed), delete the file.' in
          str(error.value))


def test_a_file_system_without_flock_falls_back_to_files(tmp_path, monkeypatch):
  monkeypatch.delenv(workdir_lib.LOCK_ENV, raising=False)

  def no_flock(fd, operation):
    raise OSError(errno.ENOSYS, 'Function not implemented')
  monkeypatch.setattr(fcntl, 'flock', no_flock)
  path = str(tmp_path / '.lock')
  with Lock(path, 'the workdir'):
    assert (tmp_path / '.lock.held').exists()
    with pytest.raises(Locked):
      with Lock(path, 'the workdir'):
        pass
  assert not (tmp_path / '.lock.held').exists()


def test_a_file_naming_this_pid_that_no_lock_here_holds_is_stale(tmp_path, file_locks):
  """A pid reused after a kill (containers number from 1): the old file is not ours."""
  (tmp_path / '.lock.held').write_text(f'{socket.gethostname()} {os.getpid()}')
  with Lock(str(tmp_path / '.lock'), 'the workdir'):
    assert (tmp_path / '.lock.held').exists()


def test_two_spellings_of_one_lock_path_still_exclude(tmp_path, file_locks, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with Lock('.lock', 'the workdir'):
    with pytest.raises(Locked):
      with Lock(str(tmp_path / '.lock'), 'the workdir'):
        pass
