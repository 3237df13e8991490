"""A local anvil node as a child process: for development (`tessera chain up`) and tests.

anvil comes from npm (``make node-tools`` runs ``npm ci``), pinned in package-lock.json.
We run the platform binary itself, not the ``node_modules/.bin`` wrapper, so the pid we
hold is anvil's and killing it leaves no orphan; on Linux the child also gets SIGKILL if
this process dies first. ``--slots-in-an-epoch 2`` makes the ``safe`` and ``finalized``
tags trail ``latest`` by a few blocks, as they do on a real chain.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tessera.chain.artifacts import REPO_ROOT
from tessera.chain.errors import ChainUnavailable
from tessera.errors import ConfigError

ANVIL_ENV = "TESSERA_ANVIL"
ANVIL_CHAIN_ID = 31337
# anvil's well-known first dev account (from the public test mnemonic): never use it
# anywhere but a local dev chain.
DEV_PRIVATE_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
_PR_SET_PDEATHSIG = 1


def find_anvil(repo_root: Path | None = None) -> Path:
    """The anvil binary: ``$TESSERA_ANVIL``, else the npm platform package under the
    repository's node_modules. ConfigError says how to install it when absent."""
    env = os.environ.get(ANVIL_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"${ANVIL_ENV}={env} is not an executable file")
        return path
    root = repo_root or REPO_ROOT
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    candidates = [
        root / "node_modules" / "@foundry-rs" / f"anvil-{sys.platform}-{machine}" / "bin" / "anvil",
        *sorted((root / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil")),
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ConfigError(
        f"anvil is not installed under {root / 'node_modules'}: run `make node-tools` "
        f"(npm ci) in the repository, or set ${ANVIL_ENV} to an anvil binary"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class AnvilNode:
    """A running anvil child process; ``stop()`` ends it (idempotent)."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    chain_id: int = ANVIL_CHAIN_ID
    _owned_log: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; waits, so no zombie is left."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._owned_log:
            self.log_path.unlink(missing_ok=True)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_anvil(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    block_time_s: float | None = None,
    mining: bool = True,
    state_file: Path | None = None,
    log_path: Path | None = None,
    extra_args: tuple[str, ...] = (),
    timeout_s: float = 30.0,
) -> AnvilNode:
    """Start anvil and return once its JSON-RPC answers. ``port=None`` picks a free one;
    ``block_time_s`` mines on an interval (default: a block per transaction);
    ``mining=False`` mines only on ``evm_mine``; ``state_file`` loads and dumps the chain
    so a restart resumes it."""
    binary = find_anvil()
    port = port if port is not None else free_port(host)
    args = [str(binary), "--host", host, "--port", str(port), "--slots-in-an-epoch", "2"]
    if block_time_s is not None:
        args += ["--block-time", str(block_time_s)]
    if not mining:
        args.append("--no-mining")
    if state_file is not None:
        args += ["--state", str(state_file)]
    args += list(extra_args)
    owned = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="anvil-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    node = AnvilNode(process, host, port, Path(log_path), _owned_log=owned)
    try:
        node.chain_id = _wait_for_rpc(node, timeout_s)
    except BaseException:
        node.stop()
        raise
    return node


@contextlib.contextmanager
def anvil(**kwargs: object) -> Iterator[AnvilNode]:
    """``with anvil() as node: ...`` starts a node (see :func:`start_anvil`) and always
    stops it."""
    node = start_anvil(**kwargs)  # type: ignore[arg-type]
    try:
        yield node
    finally:
        node.stop()


def rpc(
    url: str, method: str, params: list[object] | None = None, timeout_s: float = 5.0
) -> object:
    """One raw JSON-RPC call (for anvil_* and evm_* methods web3 does not wrap)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise ChainUnavailable(
            f"{url} did not answer {method}: {exc}; is the node running?"
        ) from exc
    if "error" in answer:
        raise ChainUnavailable(f"{url} refused {method}: {answer['error'].get('message')}")
    return answer.get("result")


def _wait_for_rpc(node: AnvilNode, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        if node.process.poll() is not None:
            raise ChainUnavailable(
                f"anvil exited with code {node.process.returncode} before answering "
                f"(port {node.port} taken?):\n{node.log_tail()}"
            )
        try:
            return int(str(rpc(node.url, "eth_chainId", timeout_s=1.0)), 16)
        except ChainUnavailable:
            if time.monotonic() > deadline:
                raise ChainUnavailable(
                    f"anvil did not answer on {node.url} within {timeout_s:.0f} s:\n{node.log_tail()}"
                ) from None
            time.sleep(0.05)


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGKILL when the thread that started
    it dies (start nodes from a long-lived thread, as the CLI and fixtures do)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
