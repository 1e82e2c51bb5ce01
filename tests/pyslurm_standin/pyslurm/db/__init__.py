"""pyslurm.db: the slurmdbd side."""

from pyslurm.db.job import Job, JobFilter, Jobs, JobSearchFilter, JobStatistics, JobStep, JobSteps
from pyslurm.db.tres import GPU, TrackableResource, TrackableResources

__all__ = [
    "GPU",
    "Job",
    "JobFilter",
    "JobSearchFilter",
    "JobStatistics",
    "JobStep",
    "JobSteps",
    "Jobs",
    "TrackableResource",
    "TrackableResources",
]
