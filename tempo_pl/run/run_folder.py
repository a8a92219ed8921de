"""The run folder of ``tempo-pl fit|validate`` (the first logger's ``save_dir/name/version``): which one
``--ckpt_path last`` resumes, and the claim that keeps two runs from writing into one.

- ``--ckpt_path last`` without an explicit logger ``version`` resumes the newest run of ``save_dir/name`` (the
  highest ``version_N``): its ``checkpoints/last.ckpt`` is what Lightning then finds, and the logs, eval files and
  checkpoints go on in the same folder. The same command line starts a run (no folder yet) and resumes it.
- A run claims its folder with a lock file (``.tempo-pl.lock``: pid, host, start time) for as long as it runs. A folder
  claimed by a live process is refused, and so is a folder that already holds a run unless the command resumes it
  (``fit`` with ``--ckpt_path``): a second run with the same explicit ``version`` would otherwise overwrite the first
  one's config, checkpoints and eval files.
- The command that started the run is recorded in ``.tempo-pl.command`` (``fit`` or ``validate``), so that
  ``tempo-pl plot`` labels a validate-only folder as such.
- A command that fails before its first RL step leaves no folder behind (:func:`removed_on_early_failure`): the
  folders it created, with the config and event files written so far, are deleted.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

LOCK_NAME = ".tempo-pl.lock"
COMMAND_NAME = ".tempo-pl.command"
"""Holds the command that started the run in the folder: ``fit`` or ``validate``."""
VERSIONED_LOGGERS = ("TensorBoardLogger", "CSVLogger")
"""Loggers whose folder is ``save_dir/name/version_N`` (or ``save_dir/name/<version>``)."""


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def first_versioned_logger(logger_cfg: Any) -> Optional[Any]:
    """The config of the first logger (the one Lightning's checkpoints and ``log_dir`` follow) when it is a
    TensorBoard or CSV logger; None otherwise."""
    first = logger_cfg[0] if isinstance(logger_cfg, (list, tuple)) and logger_cfg else logger_cfg
    class_path = str(_get(first, "class_path", ""))
    if class_path.rsplit(".", 1)[-1] in VERSIONED_LOGGERS:
        return first
    return None


def latest_version(root: Path) -> Optional[int]:
    """The highest N of the ``version_N`` folders under ``root``, None when there is none."""
    if not root.is_dir():
        return None
    numbers = [int(m.group(1)) for entry in root.iterdir() if entry.is_dir()
               if (m := re.fullmatch(r"version_(\d+)", entry.name))]
    return max(numbers) if numbers else None


def pin_version_for_resume(logger_cfg: Any, default_root_dir: Optional[str]) -> Optional[Path]:
    """For ``--ckpt_path last``: set the first logger's ``version`` to the newest existing run of its
    ``save_dir/name`` when no version is given. Returns the folder pinned (None: version already explicit, no run
    yet, or not a versioned logger)."""
    logger = first_versioned_logger(logger_cfg)
    init_args = _get(logger, "init_args")
    if init_args is None or _get(init_args, "version") is not None:
        return None
    save_dir = _get(init_args, "save_dir") or default_root_dir or os.getcwd()
    root = Path(save_dir) / str(_get(init_args, "name") or "lightning_logs")
    version = latest_version(root)
    if version is None:
        return None
    if isinstance(init_args, dict):
        init_args["version"] = version
    else:
        init_args.version = version
    return root / f"version_{version}"


def process_rank() -> int:
    """This process's rank from the launcher's environment (0 before any launch): every rank runs the CLI, one
    claims the folder."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"):
        value = os.environ.get(key)
        if value and value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def _holder(lock: Path) -> Optional[dict]:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    try:
        os.kill(int(holder["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


PICK_ANOTHER = ("pick another logger version (--trainer.logger.init_args.version=NAME, or leave it unset for a new "
                "version_N)")


def claim(log_dir: Path, resuming: bool, command: str) -> Path:
    """Claims ``log_dir`` for this process (the lock is removed when the process exits), or raises naming the
    folder and how to pick another. ``resuming``: the command continues the run of this folder."""
    log_dir = Path(log_dir)
    lock = log_dir / LOCK_NAME
    holder = _holder(lock) if lock.exists() else None
    if holder is not None and _alive(holder) and holder.get("pid") != os.getpid():
        raise RuntimeError(
            f"{command}: the run folder {str(log_dir)!r} is in use by a live run (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('started')}); {PICK_ANOTHER}. If that run is gone, delete "
            f"{str(lock)!r}"
        )
    existing = sorted(entry.name for entry in log_dir.iterdir() if entry.name != LOCK_NAME) if log_dir.is_dir() else []
    if existing and not resuming:
        resume = " or resume it with --ckpt_path last" if command == "fit" else ""
        raise FileExistsError(
            f"{command}: the run folder {str(log_dir)!r} already holds a run ({', '.join(existing[:6])}); writing "
            f"into it would overwrite its config, checkpoints and eval files. {PICK_ANOTHER[0].upper()}"
            f"{PICK_ANOTHER[1:]}, remove the folder{resume}"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": command}
    tmp = lock.with_name(f"{LOCK_NAME}.{os.getpid()}")
    tmp.write_text(json.dumps(record))
    try:
        os.link(tmp, lock)  # atomic: fails when another process claimed the folder in the meantime
    except FileExistsError:
        other = _holder(lock)
        if other is not None and _alive(other) and other.get("pid") != os.getpid():
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"{command}: the run folder {str(log_dir)!r} was claimed by pid {other.get('pid')} "
                               f"just now; {PICK_ANOTHER}") from None
        tmp.replace(lock)  # a stale lock of a process that is gone
    else:
        tmp.unlink()
    atexit.register(release, lock)
    if not resuming:
        (log_dir / COMMAND_NAME).write_text(command + "\n")
    return lock


def run_command(log_dir: Path) -> Optional[str]:
    """The command that started the run in ``log_dir`` (``fit``, ``validate``), None when unrecorded."""
    try:
        return (Path(log_dir) / COMMAND_NAME).read_text().strip() or None
    except OSError:
        return None


def first_missing_folder(log_dir: Path) -> Optional[Path]:
    """The outermost folder of ``log_dir``'s path that does not exist yet (what claiming it will create); None when
    ``log_dir`` exists."""
    log_dir = Path(log_dir).absolute()
    if log_dir.exists():
        return None
    missing = log_dir
    while not missing.parent.exists():
        missing = missing.parent
    return missing


@contextlib.contextmanager
def removed_on_early_failure(created: Optional[Path], log_dir: Path,
                             before_first_step: Callable[[], bool]) -> Iterator[None]:
    """Runs the block; when it raises while ``before_first_step()`` holds and ``log_dir`` holds no checkpoint, deletes
    ``log_dir`` and the empty folders above it up to ``created`` (the outermost folder this command created,
    :func:`first_missing_folder`), then re-raises: a failed first command leaves no folder holding only a config and
    an events file. A folder above that another run wrote into meanwhile is kept. ``created`` None (the folder
    existed, a resumed run) keeps everything."""
    try:
        yield
    except BaseException:
        log_dir = Path(log_dir).absolute()
        checkpoints = log_dir / "checkpoints"
        if created is not None and before_first_step() and not (checkpoints.is_dir() and any(checkpoints.iterdir())):
            shutil.rmtree(log_dir, ignore_errors=True)
            folder, created = log_dir, Path(created).absolute()
            while folder != created and created in folder.parents and _removed_if_empty(folder.parent):
                folder = folder.parent
            print(f"[tempo-pl] the run failed before its first RL step: removed {str(log_dir)!r}", file=sys.stderr)
        raise


def _removed_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:  # not empty, or gone
        return False
    return True


def release(lock: Path) -> None:
    """Removes ``lock`` if this process holds it."""
    holder = _holder(lock)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)


class RunAlreadyFinished(RuntimeError):
    """A resume whose checkpoint ended the training the config asks for in fewer RL steps than it now asks for."""


def check_resumed_budget(trainer: Any, rl_step: int) -> None:
    """At the start of a resumed fit: when Lightning's loop has nothing left to run (the checkpoint's epochs are
    done), says so; raises :class:`RunAlreadyFinished` when the config asks for more RL steps than were done (a
    raised ``limit_train_batches`` cannot reopen a finished epoch)."""
    if not trainer.fit_loop.done:
        return
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    batches = trainer.num_training_batches
    asked = batches * max_epochs if max_epochs is not None and batches != float("inf") else None
    if asked is not None and rl_step < asked:
        raise RunAlreadyFinished(
            f"the checkpoint {str(trainer.ckpt_path)!r} ended its run's {max_epochs} epoch(s) at RL step {rl_step}; "
            f"limit_train_batches: {batches} x max_epochs: {max_epochs} asks for {int(asked)}, but a finished epoch "
            "is not reopened. To train more RL steps from it, raise trainer.max_epochs (a further epoch over the "
            "prompt streams)")
    if trainer.is_global_zero:
        print(f"[tempo-pl] the run resumed from {str(trainer.ckpt_path)!r} had already finished (RL step {rl_step}); "
              "nothing is left to train", file=sys.stderr)
