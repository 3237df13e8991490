"""The processes the front-door bench runs and watches: the mock, LiteLLM's proxy,
Tessera's gateway and agent, pinned to their cores; their CPU and memory from /proc."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from front_door_common import (
    CACHE,
    LITELLM_SPEC,
    LITELLM_VENV,
    LOAD_CORE,
    MOCK_SCRIPT,
    MODEL,
    SERVER_CORE,
)

# ================================================================ processes


def pinned_child(core: int) -> Callable[[], None]:
    """A preexec_fn: run on ``core`` and get SIGTERM when this process dies."""

    def setup() -> None:
        os.sched_setaffinity(0, {core})
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return setup


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(tree.get(current, []))
    return out


def pin(pid: int, core: int) -> None:
    """Move every thread of ``pid`` and of its children to ``core``."""
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{proc}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), {core})


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children, MiB."""
    total = 0
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        for proc in process_tree(pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_quiet(pids: list[int], limit_s: float = 30.0, busy: float = 0.15) -> float:
    """Wait until ``pids`` use under ``busy`` of a core over half a second; the wait, s."""
    started = time.monotonic()
    if not pids:
        return 0.0
    before = cpu_seconds(pids)
    while time.monotonic() - started < limit_s:
        time.sleep(0.5)
        now = cpu_seconds(pids)
        if now - before < busy * 0.5:
            break
        before = now
    return time.monotonic() - started


def busy_per_core_s() -> dict[int, float]:
    """CPU time each core has spent busy since boot, s."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            fields = [int(x) for x in values]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
            guest = sum(fields[8:10])  # already counted in user and nice
            busy[int(name[3:])] = (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")
    return busy


def _own_s() -> float:
    """CPU time of this process and of its finished children (wrk, the generators), s:
    all of it on the load core."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime


class OthersMeter:
    """How busy processes outside this run kept each of its two cores while a point was
    measured: the noise in a figure, on a machine other people use too. Every process of
    the run is pinned to one core, so the rest of a core's busy time is someone else's.

    It also keeps each server's own CPU time over the point: what an answer costs it,
    which is what says why a throughput or latency target is out of reach."""

    def __init__(self, servers: Callable[[], dict[str, int]]) -> None:
        self.servers = servers  # name -> pid of every process this run started

    def _used(self) -> dict[str, float]:
        used = {}
        for name, pid in self.servers().items():
            with contextlib.suppress(OSError):
                used[name] = cpu_seconds([pid])
        return used

    def _ours(self, used: dict[str, float]) -> dict[int, float]:
        ours = {LOAD_CORE: _own_s(), SERVER_CORE: 0.0}
        for name, pid in self.servers().items():
            with contextlib.suppress(OSError):
                core = min(os.sched_getaffinity(pid))
                ours[core] = ours.get(core, 0.0) + used.get(name, 0.0)
        return ours

    @contextlib.contextmanager
    def measuring(self, result: dict[str, Any]) -> Iterator[None]:
        """Sets ``result["others_pct"]``: {core: percent of that core}, and
        ``result["cpu_s"]``: {server: CPU seconds it used}, over the block."""
        started, busy = time.monotonic(), busy_per_core_s()
        used = self._used()
        ours = self._ours(used)
        yield
        elapsed = time.monotonic() - started
        busy_now = busy_per_core_s()
        used_now = self._used()
        ours_now = self._ours(used_now)
        result["others_pct"] = {
            core: 100
            * max(0.0, busy_now[core] - busy[core] - ours_now[core] + ours[core])
            / elapsed
            for core in (LOAD_CORE, SERVER_CORE)
        }
        result["wall_s"] = elapsed
        result["cpu_s"] = {name: used_now[name] - used[name] for name in used_now if name in used}


def others_cpu(result: dict[str, Any]) -> str:
    """Others' share of the load core / the servers' core, percent."""
    shares = result.get("others_pct")
    if not shares:
        return "n/a"
    return " / ".join(f"{shares[core]:.0f}" for core in (LOAD_CORE, SERVER_CORE))


@dataclass
class Started:
    """A process this run started (in its own session, so its whole group can be ended)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_mock(port: int, log: Path, *options: str) -> Started:
    """The mock on ``port`` (0: a free one) on the load core, once it prints READY."""
    cmd = [sys.executable, str(MOCK_SCRIPT), "--port", str(port), "--model", MODEL, *options]
    with log.open("ab") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=pinned_child(LOAD_CORE),
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().decode()
            if line.startswith("READY "):
                return Started("mock", proc, int(line.split()[1]))
    Started("mock", proc, port).stop()
    raise RuntimeError(f"the mock did not start; see {log}")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} in {timeout_s:.0f} s")


# ---------------------------------------------------------------- setup: wrk, LiteLLM


def _logged(cmd: list[str], log: Path, timeout_s: float, **kw: Any) -> bool:
    log.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no .cache/bench yet
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        try:
            return (
                subprocess.run(cmd, stdout=out, stderr=out, timeout=timeout_s, **kw).returncode == 0
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.write(f"failed: {exc!r}\n".encode())
            return False


def ensure_wrk() -> str | None:
    """wrk's path, installing Debian's package when missing; None if that fails."""
    if found := shutil.which("wrk"):
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    log = CACHE / "wrk-install.log"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "wrk"]
    if not _logged(install, log, 300, env=env):
        _logged([*sudo, "apt-get", "update", "-q"], log, 300, env=env)
        _logged(install, log, 300, env=env)
    return shutil.which("wrk")


def ensure_litellm() -> tuple[Path | None, str]:
    """(the litellm command, its version), installing it in its own venv once; or
    (None, why not)."""
    exe, python = LITELLM_VENV / "bin" / "litellm", LITELLM_VENV / "bin" / "python"
    stamp, log = LITELLM_VENV / ".bench-installed", CACHE / "litellm-install.log"
    if not (exe.exists() and stamp.exists() and stamp.read_text() == LITELLM_SPEC):
        base = Path(sys.base_prefix) / "bin" / "python3"
        if not python.exists() and not _logged(
            [str(base), "-m", "venv", str(LITELLM_VENV)], log, 300
        ):
            return None, f"could not create {LITELLM_VENV} (see {log})"
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if not _logged([*pip, LITELLM_SPEC], log, 1200):
            return None, f"pip install {LITELLM_SPEC} failed (see {log})"
        stamp.write_text(LITELLM_SPEC)
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    got = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    if got.returncode != 0 or not exe.exists():
        return None, f"litellm is not importable from {LITELLM_VENV}: {got.stderr[-300:]}"
    return exe, got.stdout.strip()


def start_litellm(exe: Path, mock_port: int, workdir: Path) -> tuple[Started, str]:
    """The proxy on core 1 with the mock as model ``mock``; returns it and its master key."""
    from tessera.demo import free_port

    master = "sk-bench-" + os.urandom(16).hex()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n"
        "      api_key: unused\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  turn_off_message_logging: true\n"
        "  drop_params: true\n"
        "  num_retries: 0\n"
        "  request_timeout: 60\n"
        "general_settings:\n"
        f"  master_key: {master}\n"
        "  disable_spend_logs: true\n"
        "  disable_error_logs: true\n"
        "  background_health_checks: false\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "LITELLM_MASTER_KEY")
    }
    env |= {
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "DISABLE_ADMIN_UI": "True",
    }
    port = free_port()
    cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", "1"]
    with (workdir / "litellm.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
            start_new_session=True,
            preexec_fn=pinned_child(SERVER_CORE),
        )
    started = Started("litellm", proc, port)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, 180, "LiteLLM")
    except BaseException:
        started.stop()
        raise
    return started, master


# ---------------------------------------------------------------- Tessera


@dataclass
class Tessera:
    network: Any  # tessera.demo.Network
    port: int
    key: str
    gateway_pid: int
    agent_pid: int


def start_tessera(mock_port: int, data_dir: Path) -> Tessera:
    """A dev gateway and one staked, priced provider whose upstream is the mock; the bench
    key is funded and its and its account's limits raised far above what the bench sends."""
    from tessera.demo import Network, free_port, wait_for_network
    from tessera.dev_money import fund_account, stake_provider

    from support.live_network import create_key

    high = "100000000"
    os.environ.update(
        {
            "TESSERA_GATEWAY_ACCOUNT_REQUESTS_PER_MINUTE": high,
            "TESSERA_GATEWAY_ACCOUNT_MAX_CONCURRENT_REQUESTS": "100000",
            "TESSERA_GATEWAY_KEY_REQUESTS_PER_MINUTE": high,
            "TESSERA_GATEWAY_KEY_MAX_CONCURRENT_REQUESTS": "100000",
        }
    )
    network = Network(data_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        gateway = network.spawn(
            "gateway", ["gateway", "--port", str(port), "--data-dir", str(data_dir), "--dev"]
        )
        pin(gateway.pid, SERVER_CORE)
        key = create_key(
            data_dir, "--rpm", high, "--tpm", "1000000000000", "--max-concurrency", "100000"
        )
        wait_for_network(base, 0, network, timeout_s=60)
        fund_account(base, key, units=1_000 * 10**9)
        key_file = data_dir / "provider.key"
        stake_provider(base, key_file)
        agent = network.spawn(
            "provider",
            [
                "provider", "--gateway", base,
                "--upstream", f"http://127.0.0.1:{mock_port}/v1",
                "--upstream-model", MODEL, "--served-name", MODEL,
                "--weights-sha256", "be" * 32,
                "--key-file", str(key_file),
                "--price-in", "100", "--price-out", "300",
                "--max-concurrent-jobs", "1024",
                "--label", "front-door-bench",
            ],
        )  # fmt: skip
        pin(agent.pid, SERVER_CORE)
        wait_for_network(base, 1, network, timeout_s=120)
    except BaseException:
        network.stop()
        raise
    return Tessera(network, port, key, gateway.pid, agent.pid)


def loop_wait_s(pid: int) -> float:
    """How long ``pid``'s main thread (a server's event loop) has waited on a run queue for
    a CPU since it started, s: the kernel's schedstat, which ``wait_quiet``'s CPU
    figures cannot show. 0 where the kernel keeps no schedstat."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    return 0.0
