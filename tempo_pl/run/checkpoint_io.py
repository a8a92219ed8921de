"""Checkpoint files that run no code when read and are never left half-written.

- Loads use ``torch.load(weights_only=True)``: tensors and plain values only. A file whose pickle needs anything
  else (an object with a ``__reduce__``, a class to import) is refused with :class:`UnsafeCheckpoint` naming the
  file and what it asked for, before anything of it runs. The package's own checkpoints hold nothing else.
- Saves (:func:`write_atomically`) go to a temporary file beside the target in the same folder, are fsync'ed, then
  renamed over the target: a save that fails (disk full, quota, I/O error) or is killed leaves the previous file as
  it was, and raises :class:`CheckpointWriteError` naming the file and the reason.
- A ``torch.save`` file is a zip archive in which every record carries its CRC-32. :func:`check_intact` reads the
  whole archive against them (a truncated, empty or altered file is a :class:`DamagedCheckpoint` naming the file and
  the reason) before any load, so ``--ckpt_path last`` can fall back to an older intact checkpoint
  (:func:`newest_intact`).

:class:`SafeCheckpointIO` is Lightning's checkpoint IO with these loads and saves; :func:`install` puts it into a
trainer's strategy (``tempo-pl fit|validate`` and :class:`~tempo_pl.callbacks.RLStepCheckpoint` do).

Example::

    from tempo_pl.run.checkpoint_io import load_checkpoint_file
    state = load_checkpoint_file("runs/tiny/version_0/checkpoints/last.ckpt")
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from tempo_pl.config import AlgorithmConfig, EvalConfig, SamplingConfig, TrainingConfig
from tempo_pl.models.builders import CriticSpec, LoraSpec, ModelSpec

PathLike = Union[str, Path]
DCP_METADATA = ".metadata"
"""The file torch.distributed.checkpoint writes last into a sharded checkpoint folder."""
TEMP_PREFIX = "."
TEMP_INFIX = ".tmp-"
WRITE_CHUNK = 64 << 20
SPEC_CLASSES = (AlgorithmConfig, EvalConfig, TrainingConfig, CriticSpec, LoraSpec, ModelSpec, SamplingConfig)
"""The package's option dataclasses, which a module built in Python keeps in its hyper-parameters: plain fields,
rebuilt by the weights-only unpickler without running any code of theirs."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: ``path`` and ``reason`` say which and why."""

    def __init__(self, path: PathLike, reason: str, what: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{what} {str(path)!r}: {reason}")


class UnsafeCheckpoint(CheckpointError):
    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(path, f"{reason}; refused, since loading it would run code it names. tempo-pl reads "
                               "checkpoints with torch.load(weights_only=True) only", "refusing the checkpoint")


class DamagedCheckpoint(CheckpointError):
    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(path, reason, "damaged checkpoint")


class CheckpointWriteError(CheckpointError):
    def __init__(self, path: PathLike, reason: str, kept: bool) -> None:
        after = "the previous file is kept unchanged" if kept else "no file was written"
        super().__init__(path, f"{reason}; {after}", "could not write the checkpoint")


def describe_os_error(err: OSError) -> str:
    """The reason of a failed write in words, the disk being full named as such."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({errno.errorcode[err.errno]}: {os.strerror(err.errno)})"
    name = errno.errorcode.get(err.errno, "") if err.errno else ""
    return f"{name + ': ' if name else ''}{err.strerror or err}"


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a folder that cannot be opened (some network filesystems): the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """The temporary file of a save of ``path``: hidden, beside it, named by the writing process."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}{TEMP_INFIX}{os.getpid()}")


def write_atomically(path: PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync, rename over ``path``, fsync the folder.

    Temporary files of earlier saves of ``path`` that were killed are removed first. Raises
    :class:`CheckpointWriteError` (the cause chained) when any step fails; ``path`` is then as it was."""
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{TEMP_PREFIX}{path.name}{TEMP_INFIX}*"):
            stale.unlink(missing_ok=True)
    except OSError as err:
        raise CheckpointWriteError(path, describe_os_error(err), existed) from err
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise CheckpointWriteError(path, describe_os_error(err), existed) from err
        raise
    _fsync_folder(path.parent)


def save_checkpoint_file(checkpoint: dict[str, Any], path: PathLike) -> None:
    """``torch.save`` of ``checkpoint`` to ``path`` through :func:`write_atomically`. The archive is built in memory
    first (as Lightning's own save does), so a failing disk shows up as the ``OSError`` of a plain write."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getbuffer()

    def write(file) -> None:
        for start in range(0, len(data), WRITE_CHUNK):
            file.write(data[start:start + WRITE_CHUNK])

    write_atomically(path, write)


def check_intact(path: PathLike) -> None:
    """Raises :class:`DamagedCheckpoint` unless ``path`` is a whole checkpoint: a ``torch.save`` zip archive whose
    every record matches its CRC-32, or a sharded folder holding torch.distributed.checkpoint's ``.metadata``."""
    path = Path(path)
    if path.is_file() and _VERIFIED.get(path.resolve()) == _identity(path):
        return  # read whole already, unchanged since (--ckpt_path last checks the file before Lightning loads it)
    if path.is_dir():
        if not (path / DCP_METADATA).is_file():
            raise DamagedCheckpoint(path, f"the sharded checkpoint folder has no {DCP_METADATA} (its save did not "
                                          "finish)")
        return
    if not path.exists():
        raise DamagedCheckpoint(path, "the file does not exist")
    size = path.stat().st_size
    if size == 0:
        raise DamagedCheckpoint(path, "the file is empty (0 bytes)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as err:
        raise DamagedCheckpoint(path, f"{size} bytes that are not a whole torch.save archive ({err}: truncated?)")
    except OSError as err:
        raise DamagedCheckpoint(path, f"it cannot be read ({describe_os_error(err)})") from err
    if bad is not None:
        raise DamagedCheckpoint(path, f"its record {bad!r} does not match its CRC-32 checksum")
    _VERIFIED[path.resolve()] = _identity(path)


_VERIFIED: dict[Path, tuple[int, int, int]] = {}
"""Files :func:`check_intact` read whole, by their :func:`_identity` then."""


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _refusal_reason(err: pickle.UnpicklingError) -> str:
    named = re.search(r"GLOBAL ([\w.]+)", str(err))
    if named:
        return f"its pickle calls {named.group(1)}, which is neither a tensor nor a plain value"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"its pickle needs more than tensors and plain values ({lines[-1] if lines else err!r})"


@contextlib.contextmanager
def safe_loading(path: PathLike) -> Iterator[None]:
    """Around a ``torch.load(weights_only=True)`` of ``path``: the package's option dataclasses are allowed
    (:data:`SPEC_CLASSES`) and a refusal becomes :class:`UnsafeCheckpoint` naming the file."""
    try:
        with torch.serialization.safe_globals(list(SPEC_CLASSES)):
            yield
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(path, _refusal_reason(err)) from None


def load_checkpoint_file(path: PathLike, map_location: Any = "cpu", mmap: bool = False,
                         verify: bool = True) -> dict[str, Any]:
    """The checkpoint at ``path``, checked whole (:func:`check_intact`; ``verify=False`` skips that for a file
    checked already) and read with ``weights_only=True``.

    Raises :class:`DamagedCheckpoint` or :class:`UnsafeCheckpoint`, each naming the file and the reason."""
    if verify:
        check_intact(path)
    with safe_loading(path):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def newest_intact(candidates: list[Path]) -> tuple[Optional[Path], dict[Path, str]]:
    """The newest (by modification time) of ``candidates`` that :func:`check_intact` accepts, and the reason each
    newer one was passed over."""
    passed: dict[Path, str] = {}
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime if p.exists() else 0.0, reverse=True):
        try:
            check_intact(path)
        except DamagedCheckpoint as err:
            passed[path] = err.reason
            continue
        return path, passed
    return None, passed


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's :class:`TorchCheckpointIO` whose local saves are atomic (:func:`save_checkpoint_file`) and whose
    loads check the file whole and never unpickle code (:func:`load_checkpoint_file`); remote (``scheme://``)
    paths keep Lightning's own handling.

    Example::

        trainer = Trainer(plugins=[SafeCheckpointIO()])
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path: PathLike, map_location: Optional[Any] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if "://" in str(path):
            with safe_loading(path):
                return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint_file(path, map_location=map_location)


def install(strategy) -> None:
    """Puts :class:`SafeCheckpointIO` into ``strategy`` when it uses Lightning's plain ``TorchCheckpointIO`` (a
    checkpoint IO the user configured is kept)."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = SafeCheckpointIO()


LAST_NAME = "last.ckpt"
IGNORED_ENTRIES = (".tempo-pl.lock",)


def checkpoint_folders(trainer) -> list[Path]:
    """The folders of the trainer's checkpoint callbacks: ``dirpath``, else Lightning's default
    ``<save_dir>/<name>/<version>/checkpoints`` of the first logger (``<default_root_dir>/checkpoints`` without one)."""
    folders: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if callback.dirpath is not None:
            folder = Path(callback.dirpath)
        elif trainer.loggers:
            logger = trainer.loggers[0]
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            folder = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version / "checkpoints"
        else:
            folder = Path(trainer.default_root_dir) / "checkpoints"
        if folder not in folders:
            folders.append(folder)
    return folders


def _numbered_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [entry for entry in folder.iterdir() if entry.name.endswith(".ckpt")
            and not entry.name.startswith((TEMP_PREFIX, "last"))]


def resolve_last(folders: list[Path], run_dir: Optional[Path]) -> tuple[str, Optional[str]]:
    """What ``--ckpt_path last`` resumes: ``("last", None)`` when a ``last.ckpt`` of ``folders`` is intact, or when
    neither it nor ``run_dir`` holds anything (a first start); else the newest intact numbered checkpoint and a line
    saying why. Raises :class:`DamagedCheckpoint` naming ``last.ckpt`` when ``run_dir`` holds a run but no intact
    checkpoint: that run is never restarted from step 0 in its own folder."""
    lasts = [folder / LAST_NAME for folder in folders]
    problems: dict[Path, str] = {}
    for last in lasts:
        try:
            check_intact(last)
            return "last", None
        except DamagedCheckpoint as err:
            problems[last] = err.reason
    numbered = [path for folder in folders for path in _numbered_checkpoints(folder)]
    chosen, passed = newest_intact(numbered)
    first_last = lasts[0] if lasts else Path(LAST_NAME)
    said = f"{str(first_last)!r} cannot be resumed ({problems.get(first_last, 'no checkpoint callback')})"
    if chosen is not None:
        others = "".join(f"; {p.name} passed over ({why})" for p, why in passed.items())
        return str(chosen), f"--ckpt_path last: {said}{others}; resuming from {str(chosen)!r}, the newest intact checkpoint"
    started = run_dir is not None and run_dir.is_dir() and any(e.name not in IGNORED_ENTRIES for e in run_dir.iterdir())
    if not started and not any(last.exists() for last in lasts) and not passed:
        return "last", None
    damaged = "".join(f"; {p.name}: {why}" for p, why in passed.items())
    raise DamagedCheckpoint(first_last, (
        f"{problems.get(first_last, 'missing')}{damaged}, and no intact step checkpoint is beside it: the run in "
        f"{str(run_dir)!r} cannot be resumed. Start a new run (another logger version), or remove that folder to "
        "start it over"))
