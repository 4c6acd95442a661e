"""engine/runtime/run_lock.py without processes: who may hold a run folder, and when a LOCK is stale.

A live holder is this very process (its pid, start time and boot id are real), so a second take must be refused;
stale holders are written by hand (a pid that cannot exist, a reused pid with another start time, another boot).
"""

import json
import os
import socket

import pytest

from engine.runtime.run_lock import LOCK, RunLock, _boot_id, _start_time, holder_alive


def write(folder, **holder):
    (folder / LOCK).write_text(json.dumps({"host": socket.gethostname(), "token": "t", **holder}))


def test_one_holder_at_a_time_and_release_removes_only_its_own(tmp_path):
    lock = RunLock.take(tmp_path / "run")  # makes the folder
    held = json.loads((tmp_path / "run" / LOCK).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and lock.took_over is None
    with pytest.raises(ValueError, match=f"is in use by another run \\(pid {os.getpid()} on "):
        RunLock.take(tmp_path / "run")  # this process is alive: refused
    write(tmp_path / "run", pid=os.getpid(), token="someone-else")
    lock.release()  # the file is no longer ours: left alone
    assert (tmp_path / "run" / LOCK).exists()


@pytest.mark.parametrize("holder, said", [
    ({"pid": 2**22 + 12345}, "which is gone"),                               # no such process (above pid_max)
    ({"pid": os.getpid(), "started": -1}, "which is gone"),                  # our pid, another start time: reused
    ({"pid": os.getpid(), "boot_id": "another-boot"}, "which is gone"),      # the machine rebooted since
])
def test_a_stale_lock_is_taken_over_and_said(tmp_path, holder, said):
    if "started" in holder and _start_time(os.getpid()) is None or "boot_id" in holder and not _boot_id():
        pytest.skip("no /proc here: start times and boot ids are unknown")
    write(tmp_path, **holder)
    lock = RunLock.take(tmp_path)
    assert said in lock.took_over and json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert not list(tmp_path.glob(f".{LOCK}.stale-*"))  # the stale one set aside, then removed


def test_garbage_is_stale_and_another_host_is_refused_with_what_to_do(tmp_path):
    (tmp_path / LOCK).write_text("{not json")
    assert "unreadable" in RunLock.take(tmp_path).took_over
    write(tmp_path, pid=1, host="elsewhere")
    with pytest.raises(ValueError, match=f"locked by pid 1 on elsewhere .*delete {tmp_path / LOCK}"):
        RunLock.take(tmp_path)


def test_holder_alive_reads_pid_start_time_and_boot():
    me = {"pid": os.getpid(), "started": _start_time(os.getpid()), "boot_id": _boot_id()}
    assert holder_alive(me)
    assert not holder_alive({**me, "pid": 0}) and not holder_alive({**me, "pid": "12"})
