"""Debian packages a test needs and installs itself when missing (as root, or with sudo
without a password), as ../shared/services.md asks of fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def ensure_program(program: str, package: str) -> str:
    """``program``'s path, installing ``package`` with apt-get when it is missing;
    RuntimeError saying what to run if that fails."""

    def found() -> str | None:
        for path in (shutil.which(program), f"/usr/sbin/{program}", f"/usr/bin/{program}"):
            if path and Path(path).exists():
                return path
        return None

    if path := found():
        return path
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", package]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True, timeout=600)
    if path := found():
        return path
    raise RuntimeError(
        f"{program} is missing and could not be installed: apt-get install {package}"
    )
