"""NVML behind a small interface: the real pynvml backend and an in-package fake."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hpcsync.errors import HpcsyncError
from hpcsync.gpu.devices import DeviceInfo

logger = logging.getLogger(__name__)

T = TypeVar("T")

# NVML return codes (nvml.h); pynvml raises NVMLError with `.value` set to one of these.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
MISSING_FUNCTION_CODES = frozenset({NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND})
UNAVAILABLE_CODES = frozenset({NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED})
BYTES_PER_MEGABYTE = 1_000_000  # MLflow's gpu_{i}_memory_usage_megabytes divides by 1e6


class NvmlError(HpcsyncError):
    """NVML answered with an error we cannot work around."""


class NvmlUnavailable(NvmlError):
    """This node has no NVML: no libnvidia-ml.so.1, no driver, or no nvidia-ml-py."""


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One instantaneous reading of one GPU; a field the driver cannot give is None."""

    utilization_percentage: float | None = None
    memory_usage_megabytes: float | None = None
    memory_total_megabytes: float | None = None
    power_usage_watts: float | None = None
    temperature_celsius: float | None = None


class Nvml(Protocol):
    """The NVML operations the sampler needs; devices are addressed by UUID."""

    def init(self) -> None:
        """Load and initialise NVML; raises NvmlUnavailable or NvmlError."""

    def shutdown(self) -> None:
        """Release NVML; never raises."""

    def driver_version(self) -> str | None:
        """Return the driver version, or None when NVML cannot tell."""

    def list_devices(self) -> list[DeviceInfo]:
        """Return the devices NVML lets this process open; raises NvmlError."""

    def device_by_uuid(self, uuid: str) -> DeviceInfo | None:
        """Return the device (a GPU or MIG instance) with this UUID, or None."""

    def read(self, uuid: str) -> GpuReading:
        """Return one reading of a listed device; fields it lacks are None; raises NvmlError."""


class PynvmlBackend:
    """Nvml over the real pynvml, which loads libnvidia-ml.so.1 with ctypes."""

    def __init__(self) -> None:
        """Create an uninitialised backend; pynvml is imported in init()."""
        self._nv: Any = None
        self._handles: dict[str, Any] = {}
        self._skipped: set[tuple[str, str]] = set()
        self._warned: set[tuple[str, str, int]] = set()

    def init(self) -> None:
        """Load and initialise NVML; raises NvmlUnavailable or NvmlError."""
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailable("the nvidia-ml-py package is not installed") from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise _translate(exc, "initialising NVML") from exc
        self._nv = pynvml

    def shutdown(self) -> None:
        """Release NVML; never raises."""
        if self._nv is None:
            return
        try:
            self._nv.nvmlShutdown()
        except self._nv.NVMLError as exc:
            logger.debug("nvmlShutdown failed: %s", exc)
        self._nv = None
        self._handles.clear()

    def driver_version(self) -> str | None:
        """Return the driver version, or None when NVML cannot tell."""
        nv = self._require()
        try:
            return _text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError as exc:
            logger.debug("no driver version: %s", exc)
            return None

    def list_devices(self) -> list[DeviceInfo]:
        """Return the devices NVML lets this process open; raises NvmlError."""
        nv = self._require()
        try:
            count = int(nv.nvmlDeviceGetCount())
        except nv.NVMLError as exc:
            raise _translate(exc, "counting devices") from exc
        devices: list[DeviceInfo] = []
        for index in range(count):
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
            except nv.NVMLError as exc:
                if exc.value == NVML_ERROR_NO_PERMISSION:
                    # Normal under cgroup device constraints: the GPU belongs to another job.
                    logger.debug("NVML device %d is outside this job's cgroup; skipping it", index)
                else:
                    logger.warning("cannot open NVML device %d (%s); skipping it", index, exc)
                continue
            device = self._describe(handle, index)
            if device is not None:
                devices.append(device)
        return devices

    def device_by_uuid(self, uuid: str) -> DeviceInfo | None:
        """Return the device (a GPU or MIG instance) with this UUID, or None."""
        nv = self._require()
        try:
            handle = nv.nvmlDeviceGetHandleByUUID(uuid)
        except nv.NVMLError as exc:
            logger.debug("NVML has no device %s it will open: %s", uuid, exc)
            return None
        try:
            index: int | None = int(nv.nvmlDeviceGetIndex(handle))
        except nv.NVMLError:
            index = None
        return self._describe(handle, index)

    def read(self, uuid: str) -> GpuReading:
        """Return one reading of a listed device; fields it lacks are None; raises NvmlError."""
        nv = self._require()
        handle = self._handles.get(uuid)
        if handle is None:
            raise NvmlError(f"device {uuid} was not listed before reading")
        utilization = self._field(
            uuid, "utilization", lambda: float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        )
        memory = self._field(uuid, "memory", lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        power = self._field(uuid, "power", lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000)
        temperature = self._field(
            uuid,
            "temperature",
            lambda: float(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)),
        )
        return GpuReading(
            utilization_percentage=utilization,
            memory_usage_megabytes=None if memory is None else memory.used / BYTES_PER_MEGABYTE,
            memory_total_megabytes=None if memory is None else memory.total / BYTES_PER_MEGABYTE,
            power_usage_watts=power,
            temperature_celsius=temperature,
        )

    def _require(self) -> Any:
        """Return the pynvml module; raises NvmlError before init()."""
        if self._nv is None:
            raise NvmlError("NVML is not initialised")
        return self._nv

    def _describe(self, handle: Any, index: int | None) -> DeviceInfo | None:
        """Return the identity of a device handle and remember the handle, or None if unreadable."""
        nv = self._nv
        try:
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
        except nv.NVMLError as exc:
            logger.warning("cannot read the UUID of NVML device %s (%s); skipping it", index, exc)
            return None
        try:
            name = _text(nv.nvmlDeviceGetName(handle))
        except nv.NVMLError:
            name = ""
        try:
            minor: int | None = int(nv.nvmlDeviceGetMinorNumber(handle))
        except nv.NVMLError as exc:
            logger.info("no minor number for %s (%s); it can be matched by UUID only", uuid, exc)
            minor = None
        self._handles[uuid] = handle
        return DeviceInfo(index=index, minor=minor, uuid=uuid, name=name)

    def _field(self, uuid: str, what: str, call: Callable[[], T]) -> T | None:
        """Return call(), or None when NVML cannot give this field; logs each cause once."""
        if (uuid, what) in self._skipped:
            return None
        nv = self._nv
        try:
            return call()
        except nv.NVMLError as exc:
            if exc.value in MISSING_FUNCTION_CODES:
                self._skipped.add((uuid, what))
                logger.info("GPU %s: the driver gives no %s (%s); skipping it", uuid, what, exc)
            elif (uuid, what, exc.value) not in self._warned:
                self._warned.add((uuid, what, exc.value))
                logger.warning("GPU %s: reading %s failed: %s", uuid, what, exc)
            return None


@dataclass
class FakeGpu:
    """A device of FakeNvml; `readings` are returned in turn, cycling."""

    index: int | None
    minor: int | None
    uuid: str
    name: str = "Fake GPU"
    readings: Sequence[GpuReading] = (GpuReading(),)
    refused: bool = False
    """NVML refuses its handle by index, as under cgroup device constraints."""
    reads: int = 0


@dataclass
class FakeNvml:
    """An in-memory Nvml for unit tests; `by_uuid_only` devices (MIG) are not listed."""

    gpus: Sequence[FakeGpu] = ()
    by_uuid_only: Sequence[FakeGpu] = ()
    unavailable: str | None = None
    """When set, init() raises NvmlUnavailable with this message."""
    driver: str | None = "999.99-fake"
    initialized: bool = False
    shut_down: bool = False
    listed: set[str] = field(default_factory=set)

    def init(self) -> None:
        """Initialise, or raise NvmlUnavailable when `unavailable` is set."""
        if self.unavailable is not None:
            raise NvmlUnavailable(self.unavailable)
        self.initialized = True

    def shutdown(self) -> None:
        """Record the shutdown."""
        self.initialized = False
        self.shut_down = True

    def driver_version(self) -> str | None:
        """Return the configured driver version."""
        return self.driver

    def list_devices(self) -> list[DeviceInfo]:
        """Return the devices not refused, in NVML index order."""
        self._check()
        visible = [gpu for gpu in self.gpus if not gpu.refused]
        self.listed.update(gpu.uuid for gpu in visible)
        return [_info(gpu) for gpu in visible]

    def device_by_uuid(self, uuid: str) -> DeviceInfo | None:
        """Return the device with this UUID among all fake devices, or None."""
        self._check()
        for gpu in (*self.gpus, *self.by_uuid_only):
            if gpu.uuid == uuid and not gpu.refused:
                self.listed.add(gpu.uuid)
                return _info(gpu)
        return None

    def read(self, uuid: str) -> GpuReading:
        """Return the device's next reading; raises NvmlError for a device not listed."""
        self._check()
        for gpu in (*self.gpus, *self.by_uuid_only):
            if gpu.uuid == uuid and uuid in self.listed:
                reading = gpu.readings[gpu.reads % len(gpu.readings)]
                gpu.reads += 1
                return reading
        raise NvmlError(f"device {uuid} was not listed before reading")

    def _check(self) -> None:
        """Raise NvmlError when not initialised."""
        if not self.initialized:
            raise NvmlError("NVML is not initialised")


def _info(gpu: FakeGpu) -> DeviceInfo:
    """Return the DeviceInfo of a fake device."""
    return DeviceInfo(index=gpu.index, minor=gpu.minor, uuid=gpu.uuid, name=gpu.name)


def _translate(exc: Any, action: str) -> NvmlError:
    """Return the hpcsync error for a pynvml NVMLError."""
    code = getattr(exc, "value", None)
    if code in UNAVAILABLE_CODES:
        return NvmlUnavailable(str(exc))
    return NvmlError(f"NVML failed {action}: {exc}")


def _text(value: str | bytes) -> str:
    """Return pynvml's string result as str (older versions return bytes)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
