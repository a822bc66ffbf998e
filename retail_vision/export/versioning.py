"""TF Serving version folders: `<name>/<version>/`, numbered 1, 2, ...; each appears whole or not at all.

Work happens in a hidden temporary folder beside the versions (same file system), which is
renamed to the next free number only when everything in it is written and checked. TF Serving
ignores folders whose names are not numbers, so it never sees a half-written version.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


def versions(model_dir: str) -> list[int]:
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(name) for name in os.listdir(model_dir) if name.isdigit())


STAGING_PREFIX = ".export-"


def remove_abandoned(model_dir: str) -> None:
    """Delete staging folders of exports whose process is gone (killed with SIGKILL, say)."""
    for name in os.listdir(model_dir):
        if not name.startswith(STAGING_PREFIX):
            continue
        pid = name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staging_folder(model_dir: str):
    """Yield a temporary folder in `model_dir`; it is removed if the block fails or is interrupted.

    Its name carries the process id, so a later export can tell an abandoned one from a live one.
    """
    os.makedirs(model_dir, exist_ok=True)
    remove_abandoned(model_dir)
    staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=model_dir)
    # mkdtemp makes a private folder (0700); a published version must be readable by the server.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: str, model_dir: str) -> str:
    """Rename the staging folder to the next free version number and return its path."""
    while True:
        version = (versions(model_dir) or [0])[-1] + 1
        target = os.path.join(model_dir, str(version))
        try:
            os.rename(staging, target)  # atomic; fails if another export took the number first
            return target
        except OSError:
            if not os.path.exists(target):
                raise
