"""A real single-node SLURM cluster (slurmctld + slurmd + munged) started for the tests.

Needs root and Debian's slurmctld, slurmd, slurm-client and munge packages (.ci/run installs
them). The node declares a stand-in GPU (gres on /dev/null) so that `gpu: 1` rules schedule.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo")


def unavailable_reason() -> str | None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (f"SLURM not installed here (missing {', '.join(missing)}); `make test` "
                "installs it where it runs as root with apt-get")
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    return None


def _node_line() -> tuple[str, str]:
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    line = next(t for t in out.splitlines() if t.startswith("NodeName="))
    name = line.split()[0].split("=", 1)[1]
    fields = [f for f in line.split() if not f.startswith("RealMemory=")]
    mem = int(next(f for f in line.split() if f.startswith("RealMemory=")).split("=")[1])
    fields.append(f"RealMemory={max(1000, mem - 1000)}")
    return name, " ".join(fields) + " Gres=gpu:1 NodeAddr=127.0.0.1 State=UNKNOWN"


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = os.environ | {"SLURM_CONF": str(self.conf)}
        self._pids: list[Path] = []
        self._links: list[Path] = []

    def start(self) -> None:
        r = self.root
        for d in ("state", "slurmd", "munge-run", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        node, node_line = _node_line()
        self.conf.write_text(f"""ClusterName=tpwngci
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
ReturnToService=2
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmdSpoolDir={r}/slurmd
StateSaveLocation={r}/state
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
{node_line}
PartitionName=ci Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
        (r / "gres.conf").write_text("Name=gpu Count=1 File=/dev/null\n")
        # job steps (srun inside a batch job) read the default location; point it at ours
        default = Path("/etc/slurm/slurm.conf")
        if default.is_symlink() and not default.exists():
            default.unlink()  # left behind by a run that was killed
        if not default.exists():
            default.parent.mkdir(parents=True, exist_ok=True)
            default.symlink_to(self.conf)
            self._links.append(default)
        self._start_munge()
        subprocess.run(["slurmctld", "-f", str(self.conf)], env=self.env, check=True)
        self._pids.append(r / "slurmctld.pid")
        subprocess.run(["slurmd", "-f", str(self.conf)], env=self.env, check=True)
        self._pids.append(r / "slurmd.pid")
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True,
                                 text=True)
            if out.stdout.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(1)
        raise RuntimeError(f"SLURM node never became idle: {out.stdout} {out.stderr}\n"
                           + (r / "log" / "slurmctld.log").read_text()[-2000:])

    def _start_munge(self) -> None:
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(os.urandom(1024))
        run = Path("/run/munge")
        run.mkdir(parents=True, exist_ok=True)
        for p in (key, key.parent, run, Path("/var/log/munge"), Path("/var/lib/munge")):
            if p.exists():
                shutil.chown(p, "munge", "munge")
        os.chmod(key, 0o400)
        pid_file = run / "munged.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), 0)
                return  # already running
            except (OSError, ValueError):
                pid_file.unlink()
        subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True)
        self._pids.append(run / "munged.pid")

    def stop(self) -> None:
        for pid_file in reversed(self._pids):
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        for link in self._links:
            link.unlink(missing_ok=True)
        time.sleep(1)

    def sbatch_job_ids(self) -> list[str]:
        """Ids of every job the controller has seen (kept MinJobAge seconds after they end)."""
        out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], env=self.env,
                             capture_output=True, text=True, check=True)
        return out.stdout.split()
