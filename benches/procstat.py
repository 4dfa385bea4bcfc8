"""What the benchmark (load.py) and the soak run (soak.py) read of a running Envoy from /proc."""

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
