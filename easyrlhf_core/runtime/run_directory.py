"""The output directory of a run: one writer at a time, and nothing lost when a run fails before training.

**One writer.** A run holds an exclusive lock on ``OUTPUT_DIR/.easyrlhf.lock`` from before its first check
of the directory until it ends (``flock``: the operating system drops it when the process dies, however it
dies). The lock file names the holder (pid, host, start time, command), so a second ``easyrlhf run`` into the
same directory, plain, ``--resume`` or ``--overwrite``, is refused with one line naming the live process. The
ranks of a multi-process run hold a shared lock on ``OUTPUT_DIR/.easyrlhf.ranks.lock`` while they run, so the
directory stays taken even if the launching process is killed and its ranks go on. A lock file left by a
dead process is taken over with a note. Both files are removed when the run ends.

**Nothing lost.** :meth:`RunDirectory.claim` remembers what the directory held. ``--overwrite`` moves the old
contents aside (into ``OUTPUT_DIR/.easyrlhf.replaced``) instead of deleting them; they are deleted once the new
run has trained (after a start killed before that, the next run that takes the lock over restores them). A run
that fails before it has trained (no complete checkpoint, no saved ``model/``, no metrics row)
is rolled back by :meth:`RunDirectory.rollback`: what it created is removed and the old contents come back,
so the corrected command just works.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from easyrlhf_core.kit.errors import EasyRLHFError

LOCK_FILE = ".easyrlhf.lock"
RANKS_LOCK_FILE = ".easyrlhf.ranks.lock"
#: ``--overwrite``: where the previous contents wait until the new run has trained (inside the directory, so
#: moving them is a rename on one filesystem whatever the directory is: a mount point, ``-o .``).
REPLACED_DIR = ".easyrlhf.replaced"
#: Our own bookkeeping: never counted as the directory's contents.
LOCK_FILES = (LOCK_FILE, RANKS_LOCK_FILE, REPLACED_DIR)

Log = Callable[[str], None]


class DirectoryInUse(EasyRLHFError):
    """Another live process is writing to the output directory."""


def holder_description(info: dict[str, Any]) -> str:
    """``pid 123 on host, since 2026-12-01 21:30:00: easyrlhf run ...`` from a lock file's JSON."""
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get("host"):
        parts.append(f"on {info['host']}")
    text = " ".join(parts)
    if info.get("started"):
        text += f", since {info['started']}"
    if info.get("command"):
        text += f": {info['command']}"
    return text


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


class FileLock:
    """An ``flock`` on one file, exclusive or shared, never waiting: taken, or :class:`DirectoryInUse`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.unsupported: str | None = None  # why the filesystem cannot lock, when it cannot

    def try_acquire(self, shared: bool = False) -> bool:
        """Take the lock; False when another process holds it. Safe against a holder that removes the
        file while we open it (the lock must be on the file the path names)."""
        import fcntl

        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as exc:  # a filesystem without flock (some NFS, Lustre and FUSE mounts)
                self.unsupported = exc.strerror or str(exc)
                self.fd = fd
                return True
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)  # the holder removed the file between our open and our lock: try the new one
        return False

    def write(self, info: dict[str, Any]) -> None:
        assert self.fd is not None
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def release(self, remove: bool = True) -> None:
        """Drop the lock (removing the file first, while still holding it, when ``remove``)."""
        if self.fd is None:
            return
        if remove:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = None


def _holder_info() -> dict[str, Any]:
    command = " ".join(["easyrlhf", *sys.argv[1:]]) if sys.argv else ""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": command,
    }


def _in_use(path: Path, info: dict[str, Any], what: str) -> DirectoryInUse:
    holder = holder_description(info) if info else "a live process"
    return DirectoryInUse(
        f"{what} ({holder}); wait for it to finish or stop it, or choose another --output-dir", where=str(path)
    )


def contents(path: Path) -> list[Path]:
    """The directory's entries, without the lock files."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.name not in LOCK_FILES)


#: Files that hold work worth keeping even before a checkpoint: rrhf's sampled and scored candidates.
WORK_FILES = ("candidates.jsonl",)


def has_trained(path: Path) -> bool:
    """True once a run in ``path`` (or a pipeline stage below it) has something worth keeping: a complete
    checkpoint, a saved ``model/``, a row in a ``metrics.jsonl``, or a work file (:data:`WORK_FILES`)."""
    from easyrlhf_core.kit.checkpoints import is_complete

    if not path.is_dir():
        return False
    for found in (f for entry in contents(path) for f in (entry, *(entry.rglob("*") if entry.is_dir() else ()))):
        if found.name.startswith("checkpoint-") and found.is_dir() and is_complete(found):
            return True
        if found.name == "model" and (found.is_symlink() or found.is_dir()):
            return True
        if found.name in ("metrics.jsonl", *WORK_FILES) and found.is_file() and found.stat().st_size > 0:
            return True
    return False


@dataclass
class RunDirectory:
    """The output directory of one run, held by this process from :meth:`lock` to :meth:`release`."""

    path: Path
    log: Log = lambda _message: None
    created_dirs: list[Path] = field(default_factory=list)  # directories this run made: itself, parents
    existing: list[str] = field(default_factory=list)  # entries it held when claimed (kept on rollback)
    backup: Path | None = None  # --overwrite: where the old contents wait until the new run has trained
    taken_over: dict[str, Any] = field(default_factory=dict)  # the lock file's holder, when it had died here
    _lock: FileLock | None = None

    # -- the lock ----------------------------------------------------------------------------------
    def lock(self) -> RunDirectory:
        """Take the directory (creating it if needed), or raise :class:`DirectoryInUse` naming the holder."""
        self.path = self.path.absolute()
        if self.path.exists() and not self.path.is_dir():
            raise EasyRLHFError(
                "the output path exists and is not a directory; choose another --output-dir", where=str(self.path)
            )
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True)
            self.created_dirs = missing
        except FileExistsError:  # another run made it a moment ago: the lock decides
            pass
        lock = FileLock(self.path / LOCK_FILE)
        if not lock.try_acquire():
            self.created_dirs = []  # not ours to remove: the holder works in it
            raise _in_use(self.path, _read_info(lock.path), "another easyrlhf run is writing to this output directory")
        if lock.unsupported:
            self.log(f"warning: cannot lock {self.path} ({lock.unsupported}); make sure no other run writes there")
        previous = _read_info(lock.path)
        ranks = FileLock(self.path / RANKS_LOCK_FILE)
        if (self.path / RANKS_LOCK_FILE).exists() and not ranks.try_acquire():
            lock.release(remove=False)
            self.created_dirs = []
            raise _in_use(
                self.path,
                _read_info(self.path / RANKS_LOCK_FILE),
                "the ranks of another easyrlhf run are still writing to this output directory",
            )
        ranks.release()  # our own ranks take it, shared, when they start (see announce_ranks)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            here = previous.get("host") in (None, socket.gethostname())
            dead = here and not _pid_alive(previous["pid"])
            state = (
                "no longer running"
                if dead
                else ("still running, but not holding the lock" if here else "on another machine")
            )
            self.log(f"note: taking over the lock on {self.path} left by {holder_description(previous)} ({state})")
            if dead:
                self.taken_over = previous
        lock.write(_holder_info())
        self._lock = lock
        self._restore_killed_overwrite()
        self.existing = [p.name for p in contents(self.path)]
        return self

    def _restore_killed_overwrite(self) -> None:
        """A ``--overwrite`` run killed before it trained left the old contents aside: bring them back (when
        it did train, say where they are)."""
        aside = self.path / REPLACED_DIR
        if not aside.is_dir():
            return
        if has_trained(self.path):
            self.log(f"note: {aside} holds what an earlier --overwrite replaced; delete it when no longer needed")
            return
        _remove_entries(contents(self.path))
        for entry in sorted(aside.iterdir()):
            entry.rename(self.path / entry.name)
        aside.rmdir()
        self.log(f"note: restored the contents of {self.path} that an interrupted --overwrite run had moved aside")

    def clear_dead_start(self) -> None:
        """A run that died (SIGKILL, out of memory) before training, holding the lock we took over, left only
        its own start files: remove them with a note, so the same command can run again."""
        ours = {
            "config.yaml",
            "inputs.json",
            "metrics.jsonl",
            "checkpoints",
            "samples.jsonl",
            "README.md",
            "plots",
            "logs",
        }
        left = [p.name for p in contents(self.path)]
        if not self.taken_over or not left or not set(left) <= ours or has_trained(self.path):
            return
        _remove_entries(contents(self.path))
        self.existing = []
        self.log(
            f"note: the run started by {holder_description(self.taken_over)} died before training; removed "
            f"what it left ({', '.join(left)})"
        )

    def announce_ranks(self) -> None:
        """Before launching ranks: name this process in the ranks lock file the ranks will hold."""
        (self.path / RANKS_LOCK_FILE).write_text(json.dumps(_holder_info()) + "\n", encoding="utf-8")

    def release(self) -> None:
        """Drop the lock and remove its files; directories this run created and left empty go too."""
        if self._lock is not None:
            ranks = FileLock(self.path / RANKS_LOCK_FILE)
            if (self.path / RANKS_LOCK_FILE).exists() and ranks.try_acquire():
                ranks.release()  # no rank holds it any more
            self._lock.release()
            self._lock = None
        for made in self.created_dirs:  # innermost first, only while empty
            try:
                made.rmdir()
            except OSError:
                break
        self.created_dirs = []

    # -- claiming and rolling back ----------------------------------------------------------------------
    def claim(self, overwrite: bool) -> None:
        """Make the directory this run's: with ``overwrite``, its old contents move aside (kept until
        :meth:`commit`, restored by :meth:`rollback`)."""
        if overwrite and self.existing:
            self.backup = self.path / REPLACED_DIR
            self.backup.mkdir()
            self.existing = []
            for entry in contents(self.path):
                entry.rename(self.backup / entry.name)
            self.log(
                f"--overwrite: the previous contents of {self.path} are kept in {self.backup} until this run "
                f"has trained"
            )

    def commit(self) -> None:
        """The run has trained: the replaced contents can go."""
        if self.backup is not None:
            shutil.rmtree(self.backup, ignore_errors=True)
            self.backup = None

    def finish(self, failed: bool) -> None:
        """At the end of the run: keep what it made if it trained (or succeeded), else roll back; release."""
        try:
            if failed and not has_trained(self.path):
                self.rollback()
            else:
                self.commit()
        except OSError as exc:  # never hide the run's own error behind a cleanup problem
            self.log(f"warning: could not tidy {self.path} after the run ({exc})")
        finally:
            self.release()

    def rollback(self) -> None:
        """Remove what this run added and bring back what ``--overwrite`` moved aside: the directory is as
        the run found it."""
        added = [e for e in contents(self.path) if e.name not in self.existing]
        _remove_entries(added)
        if self.backup is not None:
            for entry in sorted(self.backup.iterdir()):
                entry.rename(self.path / entry.name)
            self.backup.rmdir()
            self.backup = None
            added.append(self.path)
        if added:
            self.log(f"the run failed before training; {self.path} is left as it was found")


def _remove_entries(entries: list[Path]) -> None:
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def hold_for_rank(path: Path) -> FileLock | None:
    """In a launched rank: a shared lock on the ranks lock file for as long as the rank lives (the
    launching process holds the directory's lock; this keeps the directory taken if it dies first)."""
    if not path.is_dir():
        return None
    lock = FileLock(path / RANKS_LOCK_FILE)
    for _ in range(50):  # a newcomer checks the ranks lock exclusively for an instant
        if lock.try_acquire(shared=True):
            return lock
        time.sleep(0.1)
    return None
