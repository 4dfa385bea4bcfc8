"""What the benchmark (load.py) and the soak run (soak.py) read from /proc: of a running Envoy,
and of the machine."""

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    """Resident set size in MB (VmRSS), 0.0 if the process reports none."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid):
    """User + system CPU seconds the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5) (utime, stime); index shifted by the two fields before ")".
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_model():
    """The first "model name" of /proc/cpuinfo (what the benchmark's table names the machine by)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def loadavg():
    """The 1-minute load average: how busy the machine was around a run."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])
