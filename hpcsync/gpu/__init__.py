"""GPU samples: the NVML sampler that runs inside the job, and the reader of its files.

The sampler itself is `hpcsync.gpu.sampler.run_sampler`, imported from there so that
`python -m hpcsync.gpu.sampler` runs cleanly.
"""

from hpcsync.gpu.devices import (
    DeviceInfo,
    GpuSelector,
    MatchedGpu,
    expand_hostlist,
    gpu_selectors_from_env,
    match_devices,
)
from hpcsync.gpu.nvml import (
    FakeGpu,
    FakeNvml,
    GpuReading,
    Nvml,
    NvmlError,
    NvmlUnavailable,
    PynvmlBackend,
)
from hpcsync.gpu.samples import GpuInfo, SampleRecord, parse_sample_line, sample_metrics

__all__ = [
    "DeviceInfo",
    "FakeGpu",
    "FakeNvml",
    "GpuInfo",
    "GpuReading",
    "GpuSelector",
    "MatchedGpu",
    "Nvml",
    "NvmlError",
    "NvmlUnavailable",
    "PynvmlBackend",
    "SampleRecord",
    "expand_hostlist",
    "gpu_selectors_from_env",
    "match_devices",
    "parse_sample_line",
    "sample_metrics",
]
