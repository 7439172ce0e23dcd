"""A pre-trained model by Hugging Face hub name or by local directory, as ``from_pretrained`` takes it.

:func:`resolve_pretrained` turns ``xlm-roberta-base``, ``FacebookAI/xlm-roberta-base`` or a local
directory into a local directory.  A hub name goes through ``huggingface_hub.snapshot_download``
(https://huggingface.co/docs/huggingface_hub/guides/download), limited to what ``from_pretrained``
reads: configuration and tokenizer files, the SentencePiece model, and the ``*.safetensors`` weights
(the PyTorch ``*.bin`` weights only when the repository has no safetensors).  Online it downloads into
the Hugging Face cache (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``); offline
(``HF_HUB_OFFLINE=1``, a compute node without network) it resolves the name from that cache.

The directory returned for a hub name is the cache snapshot ``models--ORG--NAME/snapshots/<commit>``,
so :func:`hub_origin` reads the repository and its commit back from the path; results record both
(``veco2.xtreme.finetune.model_identity``).
"""

from __future__ import annotations

from pathlib import Path

from .errors import Veco2Error

#: Files ``from_pretrained`` needs besides the weights: config.json, tokenizer.json, tokenizer_config.json,
#: special_tokens_map.json, weight index files (*.json); sentencepiece.bpe.model (*.model); vocab/merges (*.txt).
SUPPORT_PATTERNS = ("*.json", "*.model", "*.txt")
WEIGHT_PATTERNS = ("*.safetensors",)
FALLBACK_WEIGHT_PATTERNS = ("*.bin",)  # only when the repository has no safetensors


def _looks_like_path(name: str) -> bool:
    """A name the hub cannot hold (absolute, relative with ./ or ../, ~, or more than ORG/NAME)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name in (".", "..")


def resolve_pretrained(name_or_path: str | Path, *, revision: str | None = None) -> Path:
    """A local directory holding the model ``name_or_path`` (a directory as is; a hub name downloaded
    or found in the cache).  Raises a one-line :class:`~veco2.errors.Veco2Error` naming it otherwise."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise Veco2Error(f"{name}: a pre-trained model is a directory (Hugging Face format) or a hub name, not a file")
    if _looks_like_path(name):
        raise Veco2Error(f"{name}: no such model directory")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(name, revision=revision,
                                        allow_patterns=[*SUPPORT_PATTERNS, *WEIGHT_PATTERNS]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(name, revision=revision,
                                            allow_patterns=[*SUPPORT_PATTERNS, *FALLBACK_WEIGHT_PATTERNS]))
    except (OSError, ValueError) as err:  # the hub's errors: not found, gated, offline and not cached, bad id
        raise Veco2Error(f"{name}: neither a local model directory nor a model on the Hugging Face hub or in its "
                         f"cache ({type(err).__name__}: {first_line(err)})") from None
    if not (folder / "config.json").exists():
        raise Veco2Error(f"{name}: the hub snapshot {folder} has no config.json (not a transformers model)")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise Veco2Error(f"{name}: the hub snapshot {folder} has no *.safetensors or *.bin weights")
    return folder


def hub_origin(model_dir: str | Path) -> dict | None:
    """``{"name": "ORG/NAME", "revision": COMMIT}`` when ``model_dir`` is a Hugging Face cache snapshot
    (``.../models--ORG--NAME/snapshots/COMMIT``), else None."""
    path = Path(model_dir).absolute()
    repo_folder = path.parent.parent.name
    if path.parent.name != "snapshots" or not repo_folder.startswith("models--"):
        return None
    # the cache folder is "models--" + the repository id with "/" written "--" (ids cannot contain "--")
    return {"name": repo_folder[len("models--"):].replace("--", "/"), "revision": path.name}


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (one-line user errors wrap multi-line library messages)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"
