"""Load encoder weights from local files without unpickling untrusted data.

Two formats are accepted:

* ``.safetensors`` (read with :mod:`safetensors`, no code execution possible);
* PyTorch checkpoints (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) read with
  ``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain containers.
  A checkpoint that needs anything else (a pickled model object, a custom class) is refused.

A weight set is identified by the sha256 of its file; the features file records it.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from slide2expr.errors import InputError

log = logging.getLogger(__name__)

#: Keys under which training frameworks nest the state dict.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "teacher", "student")
#: Prefixes that wrappers (DataParallel, Lightning, HF ``*ForX`` heads) add to every key.
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "vit.", "trunk.")





def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a tensors-only torch checkpoint.

    Parameters
    ----------
    path
        The weights file.

    Returns
    -------
    dict
        Parameter name -> tensor, in file order, on the CPU. A checkpoint that nests its
        state dict (``{"state_dict": {...}}``, ``{"model": {...}}``) is unwrapped.

    Raises
    ------
    InputError
        When the file is missing, is not a weights file, or contains pickled objects other
        than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "the weights file does not exist",
                         "give the path of a .safetensors or .pt/.pth/.bin file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(path, f"is not a readable safetensors file ({exc})",
                             "re-download or re-export the weights") from exc
    with path.open("rb") as fh:
        magic = fh.read(4)
    if not (zipfile.is_zipfile(path) or magic[:1] == b"\x80"):  # torch zip or legacy pickle
        raise InputError(path, "is not a PyTorch checkpoint or a safetensors file",
                         "give a .safetensors file or a state dict saved with torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"e.g. {found.group(1)}" if found else "not only tensors"
        raise InputError(
            path,
            f"the checkpoint contains pickled Python objects ({what}); it is not loaded "
            "because unpickling can run arbitrary code",
            "export the weights as a plain state dict, e.g. "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')",
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise InputError(path, f"is not a PyTorch checkpoint ({exc})",
                         "give a .safetensors file or a state dict saved with torch.save") from exc
    return _find_state_dict(obj, path)


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return {str(k): v for k, v in tensors.items()}
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _find_state_dict(obj[key], path)
    raise InputError(path, "the checkpoint holds no state dict (no mapping of names to tensors)",
                     "save model.state_dict(), not the model or the optimizer")


def strip_wrapper_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix (``module.``, ``model.``...) shared by all keys, if that helps."""
    for _ in range(3):
        if not state or set(state) & expected:
            return state
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                break
        else:
            return state
    return state


def load_into(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str | Path,
    ignore_prefixes: tuple[str, ...] = (),
    in_order: bool = False,
) -> None:
    """Load ``state`` into ``module``, strictly.

    Parameters
    ----------
    module
        The architecture to fill.
    state
        Parameter name -> tensor.
    source
        The weights' origin, named in errors.
    ignore_prefixes
        Checkpoint keys starting with these (e.g. a classifier ``fc.``) are dropped when the
        module has no such parameters.
    in_order
        When names differ but the checkpoint has exactly the module's tensors in the same
        order with the same shapes (a port of the same network with other names), load them
        by position.

    Raises
    ------
    InputError
        When the tensors do not fit the architecture.
    """
    own = module.state_dict()
    state = strip_wrapper_prefix(state, set(own))
    state = {k: v for k, v in state.items()
             if k in own or not k.startswith(ignore_prefixes)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if (missing or unexpected) and in_order and len(state) == len(own):
        pairs = list(zip(own.items(), state.values(), strict=True))
        if all(tuple(o.shape) == tuple(v.shape) for (_, o), v in pairs):
            log.debug("%s: loading %d tensors by position", source, len(pairs))
            state = {name: v for (name, _), v in pairs}
            missing, unexpected = [], []
    if missing or unexpected:
        raise InputError(
            source,
            f"the weights do not fit the architecture ({len(missing)} missing, e.g. "
            f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})",
            "check that --weights belongs to the chosen --encoder",
        )
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise InputError(
            source,
            f"{len(bad)} tensors have the wrong shape, e.g. {k}: {tuple(state[k].shape)} in the "
            f"file, {tuple(own[k].shape)} in the architecture",
            "check that --weights belongs to the chosen --encoder",
        )
    module.load_state_dict(state, strict=True)
