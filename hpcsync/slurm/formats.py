"""The exact output formats hpcsync asks of squeue and sacct (Slurm 22.05 and later).

`Comment` comes last in both: it is the only free-text field, so a `|` inside it is
recovered by splitting the other fields off the left.
"""

from __future__ import annotations

SQUEUE_FIELDS: tuple[str, ...] = (
    "JobArrayID",
    "JobID",
    "ArrayJobID",
    "ArrayTaskID",
    "Name",
    "State",
    "Reason",
    "UserName",
    "Account",
    "Partition",
    "NodeList",
    "NumNodes",
    "NumCPUs",
    "MinMemory",
    "tres-alloc",
    "tres-per-node",
    "SubmitTime",
    "StartTime",
    "EndTime",
    "WorkDir",
    "STDOUT",
    "STDERR",
    "RestartCnt",
    "Comment",
)
"""Fields for `squeue -a -r -t all -h -O`, each suffixed `:|` so none is cut to 20 characters."""

SACCT_FIELDS: tuple[str, ...] = (
    "JobID",
    "JobIDRaw",
    "JobName",
    "State",
    "ExitCode",
    "User",
    "Account",
    "Partition",
    "NodeList",
    "NNodes",
    "NCPUS",
    "ReqMem",
    "AllocTRES",
    "Submit",
    "Start",
    "End",
    "ElapsedRaw",
    "TotalCPU",
    "MaxRSS",
    "WorkDir",
    "Comment",
)
"""Fields for `sacct --parsable2 --noheader --format=`; step lines (`12.batch`) are folded into their job."""


def squeue_format() -> str:
    """Return the `-O` argument for squeue."""
    return ",".join(f"{name}:|" for name in SQUEUE_FIELDS)


def sacct_format() -> str:
    """Return the `--format` argument for sacct."""
    return ",".join(SACCT_FIELDS)
