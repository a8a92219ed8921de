"""Where a model or tokenizer comes from: a local folder or a Hub repo id, checked before transformers is asked.

transformers' own errors for a wrong path are about something else: a missing folder is reported as "Repo id must
be in the form 'repo_name' or 'namespace/repo_name'", a folder without ``config.json`` as "install sentencepiece or
tiktoken". :func:`check_pretrained_source` says what is wrong, naming the option that holds the path.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from tempo_pl.models.tiny import BUILTIN_CHAR

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""Any of these in a folder makes it a tokenizer folder."""


def check_pretrained_source(name: str, option: str, needs: tuple[str, ...] = ("config.json",)) -> bool:
    """Fail early and in words for a local model or tokenizer folder that cannot be loaded.

    A name that exists on disk must be a folder holding one of ``needs``; a name that cannot be a Hub repo id
    (``./x``, ``/abs/x``, ``a/b/c``) must exist. Returns whether ``name`` is a local folder (a Hub id otherwise).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / file).is_file() for file in needs):
            held = sorted(p.name for p in path.iterdir())
            shown = ", ".join(held[:12]) + (f", ... ({len(held)} entries)" if len(held) > 12 else "") or "nothing"
            what = needs[0] if len(needs) == 1 else f"tokenizer file ({' / '.join(needs)})"
            raise FileNotFoundError(f"{option}: the folder {name!r} has no {what}, so it is not a saved "
                                    f"{'model' if 'config.json' in needs else 'tokenizer'} (it holds: {shown}); "
                                    "point at the folder save_pretrained wrote")
        return True
    if path.exists():
        raise NotADirectoryError(f"{option}: {name!r} is a file; expected a model folder or a Hub repo id")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise FileNotFoundError(f"{option}: the path {name!r} does not exist (resolved from {os.getcwd()!r} to "
                                f"{str(path.resolve())!r})") from None
    return False


@contextlib.contextmanager
def loading(name: str, option: str, needs: tuple[str, ...] = ("config.json",)) -> Iterator[None]:
    """Check ``name`` (:func:`check_pretrained_source`) before the block that loads it; an OSError from the block for
    a Hub-id-shaped name that is no local folder then says that both places were tried."""
    local = check_pretrained_source(name, option, needs)
    try:
        yield
    except OSError as error:
        if local:
            raise
        raise OSError(f"{option}: {name!r} is no local folder (relative to {os.getcwd()!r}) and could not be loaded "
                      f"from the Hugging Face Hub: {error}") from error


def loading_tokenizer(spec_name: str, name: str, from_model_folder: bool) -> contextlib.AbstractContextManager:
    """:func:`loading` for a tokenizer. A model folder with neither tokenizer files nor ``config.json`` is reported
    as a folder without ``config.json`` (transformers would guess a tokenizer class and ask for sentencepiece)."""
    if name == BUILTIN_CHAR:
        return contextlib.nullcontext()
    option = f"{spec_name}.{'name_or_path' if from_model_folder else 'tokenizer'}"
    path = Path(name).expanduser()
    if from_model_folder and path.is_dir() and not any((path / file).is_file() for file in TOKENIZER_FILES):
        check_pretrained_source(name, option)
    return loading(name, option, TOKENIZER_FILES)
