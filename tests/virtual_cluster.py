"""Hosts for the `cluster` tests, made on this machine from network namespaces.

Each host is a namespace with its own address on a private /24 (a bridge in a namespace
of its own joins them; no namespace has a default route, so nothing leaves the machine)
and its own sshd (root, key only), like nodes of a cluster that share a filesystem. The
names of everything are unique to the run, so concurrent runs do not collide, and
`virtual_hosts` removes all of it (processes, namespaces) when the block ends, also on
failure. Needs root, iproute2 and openssh-server (scripts/install_cluster_deps.sh).

    with virtual_hosts(2, tmp_path) as cluster:
        cluster.run(0, ["launcher/run.sh", ...])        # a command on host 0, its env
        cluster.env                                     # PATH with an `ssh` that knows the hosts
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0"  # private; per-run namespaces keep runs with the same subnet apart
IFNAME = "eth0"  # the same name in every host: GLOO_SOCKET_IFNAME=eth0 fits them all


def have_tools() -> str | None:
    """Why the cluster tier cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, daemons)"
    for tool in ("ip", "/usr/sbin/sshd", "ssh", "ssh-keygen", "pdsh"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/install_cluster_deps.sh)"
    return None


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


@dataclass
class VirtualCluster:
    run_id: str
    folder: Path
    hosts: list[str]  # ssh names: node1, node2, ...
    addrs: list[str]
    namespaces: list[str]
    switch: str
    env: dict[str, str] = field(default_factory=dict)
    daemons: list[subprocess.Popen] = field(default_factory=list)

    def exec_prefix(self, host: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[host]]

    def popen(self, host: int, cmd: Sequence[str], **kw) -> subprocess.Popen:
        return subprocess.Popen([*self.exec_prefix(host), *cmd], env=kw.pop("env", self.env), **kw)

    def run(self, host: int, cmd: Sequence[str], timeout: float, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self.exec_prefix(host), *cmd], env=kw.pop("env", self.env), timeout=timeout,
                              capture_output=True, text=True, check=False, **kw)

    def hostfile(self, slots: int) -> Path:
        path = self.folder / "hosts"
        path.write_text("".join(f"{h} slots={slots}\n" for h in self.hosts))
        return path


def _start_sshd(c: VirtualCluster, i: int) -> None:
    key = c.folder / f"ssh_host_key_{i}"
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    conf = c.folder / f"sshd_config_{i}"
    conf.write_text(
        f"ListenAddress {c.addrs[i]}\nPort 22\nHostKey {key}\nPidFile {c.folder}/sshd_{i}.pid\n"
        f"AuthorizedKeysFile {c.folder}/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        # the keys live in a temp folder whose parents are world-writable
        "StrictModes no\nUseDNS no\nPrintMotd no\nMaxStartups 64\nMaxSessions 64\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    c.daemons.append(subprocess.Popen([*c.exec_prefix(i), "/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=open(c.folder / f"sshd_{i}.log", "w")))


def _ssh_client(c: VirtualCluster) -> None:
    key = c.folder / "id_ed25519"
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    (c.folder / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    conf = c.folder / "ssh_config"
    conf.write_text("".join(
        f"Host {h}\n  HostName {a}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 10\n"
        for h, a in zip(c.hosts, c.addrs)))
    # DeepSpeed's check and pdsh both run plain `ssh HOST ...`: a wrapper first on PATH gives
    # them this config without touching root's ~/.ssh (what docs/multinode.md puts there).
    bin_dir = c.folder / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {conf} "$@"\n')
    wrapper.chmod(0o755)
    c.env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", GLOO_SOCKET_IFNAME=IFNAME)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        c.env.pop(k, None)


def _wait_for_ssh(c: VirtualCluster) -> None:
    import time

    for i, h in enumerate(c.hosts):
        deadline = time.monotonic() + 30
        while True:
            r = c.run(0, ["ssh", "-o", "BatchMode=yes", h, "true"], timeout=30)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {h} ({c.addrs[i]}) does not answer: {r.stderr}\n"
                                   f"{(c.folder / f'sshd_{i}.log').read_text()}")
            time.sleep(0.1)


def _teardown(c: VirtualCluster) -> None:
    for ns in c.namespaces + [c.switch]:
        pids = _sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    for d in c.daemons:
        with contextlib.suppress(ProcessLookupError):
            d.kill()
        d.wait(timeout=30)
    for ns in c.namespaces + [c.switch]:
        _sh("ip", "netns", "del", ns, check=False)


@contextlib.contextmanager
def virtual_hosts(n: int, folder: Path) -> Iterator[VirtualCluster]:
    run_id = secrets.token_hex(3)
    c = VirtualCluster(run_id=run_id, folder=folder, hosts=[f"node{i + 1}" for i in range(n)],
                       addrs=[f"{SUBNET}.{i + 1}" for i in range(n)],
                       namespaces=[f"pirl-{run_id}-h{i + 1}" for i in range(n)], switch=f"pirl-{run_id}-sw")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _sh("ip", "netns", "add", c.switch)
        _sh("ip", "-n", c.switch, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", c.switch, "link", "set", "br0", "up")
        for i, ns in enumerate(c.namespaces):
            _sh("ip", "netns", "add", ns)
            # created inside the namespaces: no name is ever taken in the machine's own
            _sh("ip", "link", "add", IFNAME, "netns", ns, "type", "veth", "peer", "name", f"p{i}",
                "netns", c.switch)
            _sh("ip", "-n", c.switch, "link", "set", f"p{i}", "master", "br0", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{c.addrs[i]}/24", "dev", IFNAME)
            _sh("ip", "-n", ns, "link", "set", IFNAME, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _ssh_client(c)
        for i in range(n):
            _start_sshd(c, i)
        _wait_for_ssh(c)
        yield c
    finally:
        _teardown(c)
