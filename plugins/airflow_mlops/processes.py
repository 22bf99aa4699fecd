"""Process groups of the servers the suite starts (embedded Airflow components, the serving process)."""

from __future__ import annotations

import os


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the whole group led by ``pid``; a group already gone is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pid: int) -> bool:
    """Whether any process of the group led by ``pid`` is alive (a zombie leader of ours is reaped)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still "exists"; reap it if it is our child.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return False
    except ChildProcessError:
        pass
    return True
