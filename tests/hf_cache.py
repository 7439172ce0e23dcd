"""A real Hugging Face hub cache in a test directory, for resolving models by name offline.

The layout is the one ``huggingface_hub`` writes (https://huggingface.co/docs/huggingface_hub/guides/manage-cache):
``HF_HUB_CACHE/models--ORG--NAME/refs/main`` holds the commit hash of the snapshot that
``models--ORG--NAME/snapshots/<commit>/`` holds.  (The real cache keeps the files once under
``blobs/`` and links them from the snapshot; a snapshot of plain files reads the same.)
"""

from __future__ import annotations

import shutil
from pathlib import Path


def cache_snapshot(cache: Path, repo_id: str, source: Path, commit: str, *, skip: tuple[str, ...] = ()) -> Path:
    """Copy the files of ``source`` (a ``save_pretrained`` directory) into ``cache`` as the snapshot
    ``commit`` of ``repo_id`` (``refs/main`` points at it); returns the snapshot directory.
    Files whose name ends with one of ``skip`` are left out."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(skip):
            shutil.copy(path, snapshot / path.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def use_cache(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub at ``cache``, offline.  The environment variables are what a user sets;
    ``huggingface_hub.constants`` read them when it was imported, so its copies are set too."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
