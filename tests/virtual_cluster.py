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
    for tool in ("ip", "nsenter", "/usr/sbin/sshd", "ssh", "ssh-keygen", "pdsh", "/usr/sbin/slurmctld",
                 "/usr/sbin/slurmd", "/usr/sbin/munged", "sbatch"):
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
        # The network namespace only: `ip netns exec` would also give the command a fresh
        # /sys without the machine's cgroup mounts, which slurmd needs.
        return ["nsenter", f"--net=/run/netns/{self.namespaces[host]}", "--"]

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


@dataclass
class SlurmCluster:
    """slurmctld on the first host, one slurmd per host, one munged; clients run on host 0."""

    hosts: VirtualCluster
    conf: Path
    env: dict[str, str]

    def cmd(self, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
        return self.hosts.run(0, list(args), timeout=timeout, env=env or self.env)

    def sbatch(self, *args: str, env: dict | None = None, cwd: Path | None = None) -> int:
        r = self.hosts.run(0, ["sbatch", "--parsable", *args], timeout=60, env=env or self.env, cwd=cwd)
        if r.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)}: {r.stderr}")
        return int(r.stdout.strip().split(";")[0])

    def state(self, job: int) -> str:
        """The job's state, '' once slurmctld has forgotten it."""
        return self.cmd("squeue", "-h", "-j", str(job), "-o", "%T").stdout.strip()

    def wait(self, job: int, timeout: float) -> None:
        import time

        deadline = time.monotonic() + timeout
        while self.state(job):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} still {self.state(job)} after {timeout} s")
            time.sleep(0.2)


def _start_munge() -> tuple[subprocess.Popen, Path]:
    """munged as the munge user, in a folder of its own directly under /tmp (the munge user
    must reach the socket; test folders are private to root)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="pirl-munge-"))
    key = d / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    shutil.chown(d, "munge", "munge")
    shutil.chown(key, "munge", "munge")
    d.chmod(0o711)  # munged: clients need to reach the socket, nobody may list or write
    key.chmod(0o400)
    sock = d / "munge.sock"
    proc = subprocess.Popen(["/usr/sbin/munged", "--foreground",
                             f"--socket={sock}", f"--key-file={key}", f"--log-file={d}/munged.log",
                             f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed"],
                            user="munge", group="munge", extra_groups=[], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, sock


def _slurm_conf(c: VirtualCluster, sock: Path, d: Path, cpus: int) -> Path:
    nodes = "".join(f"NodeName={h} NodeAddr={a} CPUs={cpus} State=UNKNOWN\n" for h, a in zip(c.hosts, c.addrs))
    conf = d / "slurm.conf"
    conf.write_text(
        f"ClusterName=pirl{c.run_id}\n"
        # slurmctld checks its hostname; every namespace shares the machine's
        f"SlurmctldHost={os.uname().nodename}({c.addrs[0]})\n"
        "SlurmUser=root\nSlurmdUser=root\nAuthType=auth/munge\nCredType=cred/munge\n"
        f"AuthInfo=socket={sock}\n"
        "SlurmctldPort=6817\nSlurmdPort=6818\n"
        f"StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool/%n\n"
        f"SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.%n.pid\n"
        f"SlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.%n.log\n"
        # no systemd or cgroups in a container: plain process tracking
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
        "AccountingStorageType=accounting_storage/none\nSelectType=select/cons_tres\n"
        "SelectTypeParameters=CR_CPU\nMpiDefault=none\nReturnToService=2\n"
        # the nodes' CPUs as written here, not as counted (they are all this machine's)
        "SlurmdParameters=config_overrides\n"
        "KillWait=5\nMinJobAge=2\nInactiveLimit=0\nSlurmdTimeout=60\nSlurmctldTimeout=60\n"
        f"{nodes}PartitionName=main Nodes={','.join(c.hosts)} Default=YES MaxTime=INFINITE State=UP\n")
    return conf


@contextlib.contextmanager
def slurm_cluster(c: VirtualCluster, cpus_per_node: int = 4) -> Iterator[SlurmCluster]:
    import time

    d = c.folder / "slurm"
    (d / "state").mkdir(parents=True)
    for h in c.hosts:
        (d / "spool" / h).mkdir(parents=True)
    munged, sock = _start_munge()
    try:
        conf = _slurm_conf(c, sock, d, cpus_per_node)
        env = dict(c.env, SLURM_CONF=str(conf))
        c.daemons.append(c.popen(0, ["/usr/sbin/slurmctld", "-D", "-f", str(conf)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=open(d / "slurmctld.err", "w")))
        for i, h in enumerate(c.hosts):
            c.daemons.append(c.popen(i, ["/usr/sbin/slurmd", "-D", "-N", h, "-f", str(conf)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(d / f"slurmd.{h}.err", "w")))
        s = SlurmCluster(c, conf, env)
        deadline = time.monotonic() + 60
        while True:  # every node idle
            states = s.cmd("sinfo", "-h", "-N", "-o", "%N %t").stdout.split("\n")
            idle = [x for x in states if x.strip().endswith("idle")]
            if len(idle) == len(c.hosts):
                break
            if time.monotonic() > deadline:
                logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(d.glob("*.log")) + sorted(d.glob("*.err")))
                raise RuntimeError(f"slurm nodes not idle: {states}\n{logs}")
            time.sleep(0.2)
        yield s
    finally:
        _teardown(c)  # slurmd and slurmctld live in the hosts' namespaces
        munged.kill()
        munged.wait(timeout=30)
        shutil.rmtree(sock.parent, ignore_errors=True)
