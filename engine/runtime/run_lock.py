"""A run folder belongs to one run at a time: a LOCK file naming the process that holds it.

    lock = RunLock.take(run_dir)       # ValueError naming the holder when a live process holds the folder
    ...                                # the run writes its files
    lock.release()                     # also on errors; a kill -9 leaves the file behind, which the next run
                                       # finds stale and takes over

LOCK is JSON: {"pid", "host", "boot_id", "started" (the process's start time, in clock ticks since boot),
"token", "since"}. It is created with O_CREAT | O_EXCL, so of two runs started together on one folder exactly one
gets it; the other is refused before it loads anything or writes a byte there.
A lock is stale when its holder is gone: on this host, no process with that pid, or one that started at another
time (the pid was reused), or the machine rebooted since (another boot id). A stale lock is taken over (renamed
aside first, so two runs taking over at once cannot both win) and said in one line. A lock held from another host
cannot be checked from here: it is refused, naming the host and pid, and the message says how to clear it.
Tested in tests/test_run_lock.py and, with real processes, tests/test_faults.py.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LOCK = "LOCK"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: reboots go unnoticed, the pid check remains
        return ""


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), None where unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in parentheses may hold spaces


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def holder_alive(holder: dict) -> bool:
    """Whether the process a LOCK names (on this host) still runs: same pid, same start time, same boot."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
        return False
    if not _alive(pid):
        return False
    started = _start_time(pid)
    return started is None or holder.get("started") in (None, started)


def _describe(holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{when}"


@dataclass
class RunLock:
    path: Path
    token: str
    took_over: str | None = None  # what the stale lock taken over was, for the user

    @classmethod
    def take(cls, folder: str | Path) -> "RunLock":
        """Create `folder` if needed and hold its LOCK; ValueError when another live run holds it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path, me = folder / LOCK, cls._me()
        took_over = None
        for _ in range(3):  # create; on a stale lock, move it aside and create again
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = cls._read(path)
                if holder is None:  # being written this instant by another run: look again
                    time.sleep(0.2)
                    holder = cls._read(path)
                if not holder:  # gone meanwhile ({}): try again; still unreadable (None): garbage, stale
                    if holder is None and cls._set_aside(path, {}):
                        took_over = "unreadable (left by a run killed while taking it)"
                    continue
                if holder.get("host") != socket.gethostname():
                    raise ValueError(f"train.out_dir {folder} is locked by {_describe(holder)} (another machine): "
                                     "another run is using it. Use another train.out_dir; if that run is gone, "
                                     f"delete {path}") from None
                if holder_alive(holder):
                    raise ValueError(f"train.out_dir {folder} is in use by another run ({_describe(holder)}): two "
                                     "runs in one folder would mix their checkpoints and metrics. Wait for it to "
                                     "end, stop it, or use another train.out_dir") from None
                if cls._set_aside(path, holder):
                    took_over = f"left by {_describe(holder)}, which is gone (killed or crashed)"
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            return cls(path=path, token=me["token"], took_over=took_over)
        raise ValueError(f"train.out_dir {folder}: could not take {path} (other runs keep taking it): use another "
                         "train.out_dir")

    @staticmethod
    def _me() -> dict:
        pid = os.getpid()
        return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(), "started": _start_time(pid),
                "token": secrets.token_hex(8), "since": time.time()}

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None  # half written, or garbage: the caller looks once more, then treats it as stale
        return value if isinstance(value, dict) else None

    @staticmethod
    def _set_aside(path: Path, holder: dict) -> bool:
        """Rename a stale LOCK away (atomic: of two runs doing this at once, one moves it). If what was moved is
        not the stale lock we judged (another run took over in between), put it back."""
        aside = path.with_name(f".{LOCK}.stale-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        moved = RunLock._read(aside) or {}
        if moved.get("token") != holder.get("token"):  # (garbage judged as {} matches garbage moved)
            os.rename(aside, path)  # a live run's fresh lock: restore it; the next attempt refuses
            return False
        aside.unlink(missing_ok=True)
        return True

    def release(self) -> None:
        """Remove LOCK if it is still ours (best effort: the folder may be gone or read-only)."""
        try:
            if (self._read(self.path) or {}).get("token") == self.token:
                self.path.unlink()
        except OSError:
            pass
