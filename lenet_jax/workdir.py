"""Safe writing into a workdir: atomic files, a lock per sweep or shard, signals, full disks.

* `atomic_write`: readers see the old file or the whole new one, never a part;
  the temporary file (`<path>.tmp<pid>`) is removed if the write fails.
* `Lock`: one process per workdir (or per shard of it). A second process is
  refused with the holder's pid, instead of both writing the same checkpoints.
* `clean_temporaries`: removes what killed writers left behind (`*.tmp<pid>`
  files of processes that are gone, orbax's `*.orbax-checkpoint-tmp*`
  directories), only inside paths the caller's lock protects.
* `deferred_signals`: SIGINT and SIGTERM that arrive during a write take effect
  once the write is complete (the handler outside runs then, or a
  KeyboardInterrupt is raised), so an interrupted sweep leaves whole files only.
* `stop_requests`: SIGINT/SIGTERM ask the training loop to stop at its next
  safe point (after the epoch in progress, with a checkpoint); a second one
  stops at once. SIGUSR1 asks for a checkpoint and training goes on.
* `atomic_directory`: a directory written whole or not at all: filled under a
  temporary name and swapped in at the end, so an interrupted writer leaves
  the previous directory (or none), never a half-written one.
* `DiskFull`: a write that failed for lack of space, naming the directory.
"""
import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import threading

TMP_SUFFIX = re.compile(r'\.tmp(\d+)$')
ORBAX_TMP = 'orbax-checkpoint-tmp'


class DiskFull(OSError):
  """A write failed because the file system holding `directory` is full."""

  def __init__(self, directory: str):
    super().__init__(errno.ENOSPC, f'no space left on the device that holds {directory}')
    self.directory = directory


def require_space(directory: str, needed: int) -> None:
  """Raises DiskFull unless `directory`'s file system has `needed` bytes free.

  Checked before a write rather than discovered in its middle: orbax's
  writer threads report a full disk with pages of tracebacks of their own.
  """
  if shutil.disk_usage(directory).free < needed:
    raise DiskFull(directory)


def raise_if_disk_full(error: BaseException, path: str) -> None:
  """Re-raises `error` as DiskFull if it (or its cause) is ENOSPC."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
      raise DiskFull(os.path.dirname(os.path.abspath(path))) from error
    if 'No space left on device' in str(seen):  # tensorstore's errors carry no errno
      raise DiskFull(os.path.dirname(os.path.abspath(path))) from error
    seen = seen.__cause__ or seen.__context__
  raise error


_deferred = threading.local()

_HELD_FILES: set[str] = set()  # the O_EXCL lock files this process holds (Lock)
LOCK_ENV = 'LENET_JAX_LOCK'  # 'file': lock with O_EXCL files, never flock (Lock)
NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)  # flock's "not here" errors

# The signals that ask work to stop: SIGINT (Ctrl-C) and SIGTERM (kill, a
# scheduler); a cluster task adds its scheduler's advance warning (cluster.py
# adds SIGUSR2, which submitit asks SLURM to send before a time limit or a
# preemption). Every mechanism below treats them alike.
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM]
# The stop signal that arrived last, if one did (None: none, or Ctrl-C outside
# the handlers here, which Python itself turns into KeyboardInterrupt).
last_stop = {'signal': None}
# Every stop signal that has arrived (a cluster task asks whether its scheduler's
# warning was among them, whatever came after it).
stops_seen: set[int] = set()


@contextlib.contextmanager
def deferred_signals():
  """Holds SIGINT/SIGTERM until the block ends, then hands the first one to the
  handler that was there before (raising KeyboardInterrupt where that was the
  default action).

  Only in the main thread (signal handlers can only be set there); nested
  blocks defer to the outermost one.
  """
  if threading.current_thread() is not threading.main_thread() or getattr(
      _deferred, 'active', False):
    yield
    return
  received = []
  handler = lambda signum, frame: received.append(signum)
  previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
  _deferred.active = True
  try:
    yield
  finally:
    _deferred.active = False
    for s, h in previous.items():
      signal.signal(s, h)
  if received:
    before = previous[received[0]]
    if callable(before):
      before(received[0], None)
    elif before != signal.SIG_IGN:
      raise KeyboardInterrupt


class StopRequests:
  """What signals have asked of the training loop (see `stop_requests`)."""

  def __init__(self):
    self.stop = False  # SIGINT/SIGTERM: checkpoint, then end with KeyboardInterrupt
    self.checkpoint = False  # SIGUSR1: checkpoint, then go on


@contextlib.contextmanager
def stop_requests():
  """SIGINT/SIGTERM and SIGUSR1 as requests that the block answers at safe points.

  The first of the STOP_SIGNALS (SIGINT, SIGTERM) sets `stop` (a scheduler's
  SIGTERM before a preemption, or Ctrl-C, gets a checkpoint of the epoch in
  progress); a second one raises KeyboardInterrupt at once. SIGUSR1 sets `checkpoint`. Outside the
  main thread the handlers cannot be set and nothing is ever requested.
  """
  requests = StopRequests()
  if threading.current_thread() is not threading.main_thread():
    yield requests
    return

  def on_stop(signum, frame):
    del frame
    last_stop['signal'] = signum
    stops_seen.add(signum)
    if requests.stop:
      raise KeyboardInterrupt
    requests.stop = True

  def on_checkpoint(signum, frame):
    del signum, frame
    requests.checkpoint = True

  previous = {s: signal.signal(s, on_stop) for s in STOP_SIGNALS}
  previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_checkpoint)
  try:
    yield requests
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes `data` to `path` so that readers see the old file or the whole new one."""
  tmp = f'{path}.tmp{os.getpid()}'
  with deferred_signals():
    try:
      with open(tmp, 'wb' if isinstance(data, bytes) else 'w') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException as e:
      with contextlib.suppress(OSError):
        os.remove(tmp)
      if isinstance(e, OSError):
        raise_if_disk_full(e, path)
      raise


@contextlib.contextmanager
def atomic_directory(path: str, replaceable: frozenset[str] = frozenset()):
  """Yields a temporary directory beside `path`; when the block ends without an
  exception it replaces `path`, otherwise it is removed and `path` stays as it was.

  An existing `path` is replaced only if it holds nothing but names in
  `replaceable` (what an earlier block wrote there): a directory with other
  files (a user's --out=. or --out=WORKDIR) is refused with ValueError, never
  deleted. The swap (two renames and the removal of the previous directory)
  runs with SIGINT/SIGTERM held, so a Ctrl-C leaves the previous directory or
  the whole new one; only a kill -9 at that instant leaves the previous one at
  `<path>.old<pid>`.
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(errno.ENOTDIR, 'exists and is not a directory', path)
  if os.path.isdir(path):
    foreign = sorted(set(os.listdir(path)) - set(replaceable))
    if foreign:
      raise ValueError(f'{path} holds other files ({", ".join(foreign[:5])}'
                       f'{", ..." if len(foreign) > 5 else ""}), which writing there would '
                       'replace; give a new or empty directory.')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.mkdir(tmp)
  try:
    yield tmp
    with deferred_signals():
      old = f'{path}.old{os.getpid()}'
      if os.path.isdir(path):
        os.rename(path, old)
      os.rename(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def clean_temporaries(paths: list[str]) -> list[str]:
  """Removes stale temporaries of `paths`: inside a directory (searched
  recursively), or beside a file (`<file>.tmp<pid>`).

  A `*.tmp<pid>` file goes when its pid is not a live process here; orbax's
  temporary checkpoint directories go whenever found. Call it only under the
  lock that covers `paths`. Returns what was removed.
  """
  removed = []
  for top in paths:
    if not os.path.isdir(top):
      directory, name = os.path.split(top)
      for other in os.listdir(directory) if os.path.isdir(directory) else []:
        m = TMP_SUFFIX.search(other)
        if m and other[:m.start()] == name and not _pid_alive(int(m.group(1))):
          with contextlib.suppress(OSError):
            os.remove(os.path.join(directory, other))
            removed.append(os.path.join(directory, other))
      continue
    for root, dirs, files in os.walk(top):
      for d in [d for d in dirs if ORBAX_TMP in d]:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
        removed.append(os.path.join(root, d))
        dirs.remove(d)
      for name in files:
        m = TMP_SUFFIX.search(name)
        if m and not _pid_alive(int(m.group(1))):
          with contextlib.suppress(OSError):
            os.remove(os.path.join(root, name))
            removed.append(os.path.join(root, name))
  return removed


class Locked(ValueError):
  """Another live process holds the lock."""


class Lock:
  """An advisory lock on a file, with the holder's pid written in it.

  `shared=True` takes a shared lock: several shards may hold the sweep's lock
  at once, while a process that runs the whole sweep needs it exclusively.

  flock by default. Where flock fails (Lustre mounted without it, NFS without
  its lock daemon: ENOLCK, ENOSYS, EOPNOTSUPP), or where it works on one node
  only (some NFS setups: set LENET_JAX_LOCK=file on every node), the lock is
  a file created with O_EXCL, which such file systems create atomically:
  `<lock>.held` (exclusive) or `<lock>.shared-<host>-<pid>` (shared), holding
  `host pid`. A holder on this host whose pid is gone is taken over; one on
  another host cannot be checked from here, so the message names the file to
  delete if that process is gone.
  """

  def __init__(self, path: str, what: str, shared: bool = False):
    self.path, self.what, self.shared = os.path.abspath(path), what, shared
    self._fd = None
    self._files = []

  def __enter__(self):
    if os.environ.get(LOCK_ENV, 'flock') == 'file':
      return self._take_files()
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      holders = holder_pids(os.path.dirname(self.path))
      who = f'process {", ".join(holders)}' if holders else 'another process'
      raise Locked(f'{self.what} is in use by {who} (lock {self.path}); wait for it to '
                   'finish or stop it, then run the command again.') from None
    except OSError as e:
      os.close(fd)
      if e.errno not in NO_FLOCK:
        raise
      return self._take_files()  # this file system has no flock
    if not self.shared:
      os.ftruncate(fd, 0)
      os.write(fd, str(os.getpid()).encode())
    self._fd = fd
    return self

  def __exit__(self, *exc):
    if self._fd is not None:
      if not self.shared:
        os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    for path in self._files:
      _HELD_FILES.discard(os.path.realpath(path))
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    self._files = []

  # The O_EXCL lock files.

  def _create(self, path: str) -> bool:
    """Creates `path` holding 'host pid' unless it exists; whether it did."""
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(f'{socket.gethostname()} {os.getpid()}')
    self._files.append(path)
    _HELD_FILES.add(os.path.realpath(path))
    return True

  def _live_holders(self, paths: list[str]) -> list[str]:
    """'pid on host' of each holder file in `paths`; files of dead pids on this host
    are removed (their process is gone)."""
    live = []
    for path in paths:
      try:
        with open(path) as f:
          host, pid = f.read().split()
      except (OSError, ValueError):
        continue  # being written, or gone: counts as nothing
      # This pid, but no Lock of this process holds it: a reused pid's old file.
      mine = int(pid) == os.getpid() and os.path.realpath(path) not in _HELD_FILES
      if host == socket.gethostname() and (mine or not _pid_alive(int(pid))):
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
        continue
      live.append((path, f'process {pid} on {host}'))
    return live

  def _refuse(self, holders) -> None:
    self.__exit__()
    files = ', '.join(path for path, _ in holders)
    who = ', '.join(name for _, name in holders)
    raise Locked(f'{self.what} is in use by {who} (lock file {files}); wait for it to '
                 'finish or stop it, then run the command again. If that process is gone '
                 '(a node that failed), delete the file.')

  def _take_files(self):
    directory, name = os.path.split(self.path)
    held = f'{self.path}.held'
    shared = lambda: [os.path.join(directory, f) for f in os.listdir(directory)
                      if f.startswith(f'{name}.shared-')]
    mine = f'{self.path}.shared-{socket.gethostname()}-{os.getpid()}' if self.shared else held
    for _ in range(2):  # a second try after removing a dead holder's file
      if self._create(mine):
        break
      holders = self._live_holders([held])
      if holders:
        self._refuse(holders)
    else:
      self._refuse(self._live_holders([held]) or [(held, 'another process')])
    # Whoever is exclusive must find no shared holder, and a shared holder no
    # exclusive one; both look after creating their own file, so two that race
    # cannot both go on (at worst both are refused, and one runs again).
    others = self._live_holders([held] if self.shared else shared())
    if others:
      self._refuse(others)
    return self


def holder_pids(directory: str) -> list[str]:
  """Pids written in the lock files of `directory` (those holding an exclusive lock)."""
  pids = []
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
    if name.startswith('.lock'):
      try:
        with open(os.path.join(directory, name)) as f:
          text = f.read().strip()
      except OSError:
        continue
      if text.isdigit() and _pid_alive(int(text)):
        pids.append(text)
  return pids


@contextlib.contextmanager
def sweep_lock(workdir: str, num_shards: int = 1, shard_index: int = 0):
  """The lock a sweep (or one shard of it) holds on `workdir` while it trains.

  The whole sweep takes `.lock` exclusively; a shard takes `.lock` shared and
  `.lock.shard-I-of-N` exclusively, so shards run side by side but never twice,
  and never beside a process that runs the whole sweep.
  """
  if num_shards == 1:
    with Lock(os.path.join(workdir, '.lock'), f'--workdir={workdir}'):
      yield
    return
  with Lock(os.path.join(workdir, '.lock'), f'--workdir={workdir}', shared=True), \
       Lock(os.path.join(workdir, f'.lock.shard-{shard_index}-of-{num_shards}'),
            f'shard {shard_index} of {num_shards} in --workdir={workdir}'):
    yield
