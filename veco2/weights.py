"""Loading pre-trained weights with ``from_pretrained``, checked: a checkpoint that does not fit is an
error, not a randomly initialised encoder.

``transformers``' ``from_pretrained`` loads by tensor name and initialises every weight it does not
find at random; it only *reports* what it missed (``output_loading_info=True``: ``missing_keys``,
``unexpected_keys``, ``mismatched_keys``; see the ``PreTrainedModel.from_pretrained`` reference at
https://huggingface.co/docs/transformers/main_classes/model).  Fine-tuning or scoring such a model
gives a number that looks like a result.  :func:`load_checked` turns each way a checkpoint can fail to
fit into a one-line :class:`~veco2.errors.Veco2Error` naming the weights file:

* an encoder weight missing from the checkpoint (other weights than the task head, which is new by
  design) -- another model's weights, or a checkpoint of another depth;
* an encoder weight in the checkpoint that the model has no place for (more layers than the config);
  weights of *other heads* (the pre-training ``lm_head`` when fine-tuning) are expected and allowed;
* a weight that is NaN or infinite;
* a file that cannot be read: truncated or corrupt safetensors (``SafetensorError``), a truncated
  ``pytorch_model.bin`` (``EOFError``, ``OSError``), a pickle that ``torch.load(weights_only=True)``
  refuses (``UnpicklingError``: it would run code), tensors of the wrong shape, no weights at all.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import Veco2Error

#: Weight files ``from_pretrained`` looks for in a local directory, in its order of preference.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: How many tensor names an error message lists.
NAMES_SHOWN = 3


def weights_file(name_or_dir: str | Path) -> str:
    """The file ``from_pretrained`` reads the weights of ``name_or_dir`` from (for messages): the first
    of :data:`WEIGHT_FILES` in a local directory, else the name itself (a hub model)."""
    path = Path(name_or_dir)
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).exists():
                return str(path / name)
    return str(name_or_dir)


def _unreadable_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    # RuntimeError: tensors of another shape (transformers raises it after its load report);
    # ValueError: a config.json or index that does not parse.
    return (SafetensorError, EOFError, pickle.UnpicklingError, OSError, RuntimeError, ValueError)


def _why(err: BaseException, load: Callable, name_or_dir, kwargs: dict) -> str:
    """What went wrong, in a few words (the libraries' own messages are long or point elsewhere)."""
    if isinstance(err, pickle.UnpicklingError):
        return ("UnpicklingError: a pickle that torch.load(weights_only=True) refuses: it holds objects "
                "other than tensors, and loading it could run code")
    if isinstance(err, RuntimeError) and "ignore_mismatched_sizes" in str(err) and not kwargs.get("ignore_mismatched_sizes"):
        try:  # transformers names the tensors only in its log: load once more to get their names
            _, info = load(name_or_dir, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
            names = [entry[0] if isinstance(entry, (tuple, list)) else entry for entry in info.get("mismatched_keys", [])]
        except Exception:  # noqa: BLE001 -- the first error is the one reported
            names = []
        if names:
            return f"{len(names)} weights have another shape than config.json gives them: {_names(names)}"
    return f"{type(err).__name__}: {_first_line(err)}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def _names(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:NAMES_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > NAMES_SHOWN else "")


def load_checked(loader: Any, name_or_dir: str | Path, *, new_head_prefixes: Iterable[str] | None = None,
                 **kwargs) -> Any:
    """``loader.from_pretrained(name_or_dir, **kwargs)``, refusing weights that do not fit the model.

    Args:
        loader: a ``transformers`` model or Auto class (anything with ``from_pretrained``), or a callable
            taking ``(name_or_dir, output_loading_info=True, **kwargs)`` and returning ``(model, info)``
            as ``from_pretrained`` does.
        new_head_prefixes: names (as ``from_pretrained`` reports them, or relative to the base model)
            of the weights that are new by design and may be missing: the task head.  ``None`` (default):
            every weight outside the base model (``model.base_model``), which for a ``...For<Task>``
            class is exactly its task head; a base model (``AutoModel``) then has none, so a pooler the
            checkpoint lacks must be named (``("pooler.",)``).
        kwargs: passed to ``from_pretrained``.

    Returns the model.  Raises :class:`~veco2.errors.Veco2Error` (one line, naming the weights file)
    for missing or unexpected encoder weights, mismatched shapes, non-finite weights and unreadable
    files (module docstring).
    """
    source = weights_file(name_or_dir)
    load: Callable = getattr(loader, "from_pretrained", loader)
    try:
        model, info = load(name_or_dir, output_loading_info=True, **kwargs)
    except Veco2Error:
        raise
    except _unreadable_errors() as err:
        raise Veco2Error(f"{source}: cannot load the model weights ({_why(err, load, name_or_dir, kwargs)})") from None

    base = model.base_model
    prefix = f"{model.base_model_prefix}." if base is not model else ""
    heads = None if new_head_prefixes is None else tuple(new_head_prefixes)

    def relative(key: str) -> str:
        return key[len(prefix):] if prefix and key.startswith(prefix) else key

    def is_new_head(key: str) -> bool:
        if heads is None:
            return base is not model and not key.startswith(prefix)
        return key.startswith(heads) or relative(key).startswith(heads)

    missing = [key for key in info.get("missing_keys", []) if not is_new_head(key)]
    if missing:
        raise Veco2Error(f"{source}: {len(missing)} weights of the model are not in this file ({_names(missing)}); "
                         f"these are not weights of the {type(model).__name__} that config.json describes "
                         "(another model's file?), and the model would run with random values there")
    encoder_roots = {name.split(".", 1)[0] for name in base.state_dict()}
    unexpected = [key for key in info.get("unexpected_keys", []) if relative(key).split(".", 1)[0] in encoder_roots]
    if unexpected:
        raise Veco2Error(f"{source}: {len(unexpected)} encoder weights in this file have no place in the "
                         f"{type(model).__name__} that config.json describes ({_names(unexpected)}); "
                         "does config.json belong to these weights?")
    mismatched = info.get("mismatched_keys", [])
    if mismatched:  # only with ignore_mismatched_sizes=True; otherwise from_pretrained raised above
        names = [entry[0] if isinstance(entry, (tuple, list)) else entry for entry in mismatched]
        raise Veco2Error(f"{source}: {len(names)} weights have another shape than the model's ({_names(names)})")
    check_finite(model, source, skip=set(info.get("missing_keys", [])))
    return model


def check_finite(model: Any, source: str, skip: Iterable[str] = ()) -> None:
    """Raise a one-line :class:`~veco2.errors.Veco2Error` naming the first parameter of ``model`` (in
    ``named_parameters`` order) that holds a NaN or an infinity; ``skip``: names not to check."""
    import torch

    skip = set(skip)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in skip or not param.is_floating_point():
                continue
            finite = torch.isfinite(param)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise Veco2Error(f"{source}: weight {name} holds {bad} non-finite value(s) (NaN or inf) "
                                 f"of {param.numel()}; the checkpoint is corrupt")
