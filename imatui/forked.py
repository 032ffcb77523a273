"""Work done in a forked child process, its result (or its exception) sent back pickled by a pipe.

The CLI's statistics and diff fork worker processes (numpy's loops release the GIL, the Python
between them does not), and `imatui diff` parses B's header in one while A's is parsed. Only a
single-threaded caller on Linux may fork (`CAN_FORK`, and no other thread running: the caller checks).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

CAN_FORK = hasattr(os, "fork") and sys.platform.startswith("linux")  # macOS: fork is unsafe with its libraries


@dataclass
class Child:
    pid: int
    fd: int  # the read end of its pipe


def start(work: Callable[[], Any], close: Iterable[int] = ()) -> Child:
    """Fork a child that runs work() and sends ("ok", value) or ("error", exception); `close`: file
    descriptors of the parent the child must not hold (other children's pipes)."""
    rfd, wfd = os.pipe()
    # Ctrl-C between fork and the child's own handler would unwind the child into our code
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pid = os.fork()
    except BaseException:
        os.close(rfd)
        os.close(wfd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    if pid == 0:  # the child: work, send, and leave without running the parent's exit code
        code = 0
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(rfd)
            for fd in close:
                os.close(fd)
            try:
                payload: tuple = ("ok", work())
            except BaseException as e:  # noqa: BLE001 - sent to the parent, which raises it
                payload = ("error", e)
            try:
                data = pickle.dumps(payload)
            except Exception:  # noqa: BLE001
                data = pickle.dumps(("error", RuntimeError(repr(payload[1]))))
            view = memoryview(data)
            while view:
                view = view[os.write(wfd, view):]
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    child = Child(pid, rfd)
    try:  # a Ctrl-C that came meanwhile is raised here: the child must not outlive this call then
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    except BaseException:
        stop(child)
        raise
    return child


def result(child: Child) -> tuple[tuple[str, Any] | None, int]:
    """(("ok", value) or ("error", exception), exit status) once the child is done; None in place of
    the pair when it ended without sending one (killed, out of memory)."""
    chunks = []
    try:
        while chunk := os.read(child.fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(child.fd)
    _, status = os.waitpid(child.pid, 0)
    try:
        return pickle.loads(b"".join(chunks)), os.waitstatus_to_exitcode(status)
    except Exception:  # noqa: BLE001 - nothing or a part
        return None, os.waitstatus_to_exitcode(status)


def stop(child: Child) -> None:
    """On an error or Ctrl-C of the parent: the child's result is not wanted."""
    for step in (lambda: os.close(child.fd), lambda: os.kill(child.pid, signal.SIGKILL),
                 lambda: os.waitpid(child.pid, 0)):
        try:
            step()
        except OSError:
            pass
