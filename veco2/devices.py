"""Pin a GPU job to its own device on a multi-GPU machine: ``python -m veco2.devices -- COMMAND ...``.

Snakemake counts GPUs but does not say which device a job gets (snakemake/snakemake#281), so this
wrapper takes a ``flock`` on a free device of the pool (``$CUDA_VISIBLE_DEVICES``, else the GPUs of
``nvidia-smi -L``) and replaces itself with the command, ``CUDA_VISIBLE_DEVICES`` set to that device;
the lock ends with the command.  Without a GPU the command runs unchanged.  Options and detail:
``docs/workflow.md#gpu-pinning-veco2devices``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .fileio import try_lock

log = logging.getLogger("veco2.devices")


def device_pool() -> list[str]:
    """The devices this job may use: ``$CUDA_VISIBLE_DEVICES`` if set, else the GPUs nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError) as err:
        log.warning("nvidia-smi -L failed (%s); running without pinning", err)
        return []
    return [str(i) for i, line in enumerate(l for l in listing.splitlines() if l.startswith("GPU "))]


def lock_dir() -> Path:
    return Path(os.environ.get("VECO2_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / f"veco2-gpu-locks-{os.getuid()}")


def acquire(pool: list[str], count: int, poll: float, directory: Path | None = None) -> tuple[list[str], list]:
    """Lock ``count`` devices of ``pool`` (waiting while they are busy); returns (devices, open lock files)."""
    if count > len(pool):
        raise SystemExit(f"veco2.devices: error: {count} device(s) wanted, only {len(pool)} in the pool {pool}")
    directory = directory or lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        held: list[tuple[str, object]] = []
        for device in pool:
            handle = try_lock(directory / f"gpu{device}.lock", block=False, mode="a+")
            if handle is None:
                continue
            held.append((device, handle))
            if len(held) == count:
                return [d for d, _ in held], [h for _, h in held]
        for _, handle in held:  # not enough free devices: let go and try again later
            handle.close()
        if not waited:
            log.info("all of %s busy; waiting for a free device", pool)
            waited = True
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m veco2.devices", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1, help="devices per job (default 1)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between tries while all are busy")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (usage: python -m veco2.devices -- COMMAND ...)")
    logging.basicConfig(level=os.environ.get("VECO2_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool = device_pool()
    env = dict(os.environ)
    if pool and args.count > 0:
        devices, handles = acquire(pool, args.count, args.poll)
        for handle in handles:
            os.set_inheritable(handle.fileno(), True)  # the command keeps the locks after exec
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        log.info("CUDA_VISIBLE_DEVICES=%s for %s", env["CUDA_VISIBLE_DEVICES"], " ".join(command[:3]))
    try:
        os.execvpe(command[0], command, env)
    except OSError as err:
        raise SystemExit(f"veco2.devices: error: cannot run {command[0]!r}: {err.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
