/*
 * A fake libnvidia-ml.so.1 for tests: the real pynvml loads it with ctypes, so pynvml's own
 * code path runs against devices whose NVML index differs from their minor number.
 * See README.md in this directory for the environment variables it reads.
 *
 * Optional functions are left out at compile time (-DFAKE_NVML_OMIT_<NAME>), because pynvml
 * reports a missing symbol as NVMLError_FunctionNotFound, which is what an old driver does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NO_PERMISSION 4
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_UNKNOWN 999

#define MAX_DEVICES 16
#define TEXT_SIZE 96

typedef int nvmlReturn_t;

typedef struct {
    unsigned int minor;
    char uuid[TEXT_SIZE];
    char name[TEXT_SIZE];
    unsigned int util_gpu;
    unsigned long long mem_used_mb;
    unsigned long long mem_total_mb;
    unsigned int power_mw;
    unsigned int temp_c;
    int no_permission;
} fake_device;

typedef fake_device *nvmlDevice_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

/* NVML index 0 is minor 1 and index 1 is minor 0, on purpose. */
static const char *DEFAULT_DEVICES =
    "1:GPU-11111111-1111-4111-8111-111111111111:Fake GPU minor1:71:7100:40000:271000:61;"
    "0:GPU-00000000-0000-4000-8000-000000000000:Fake GPU minor0:30:3000:40000:150000:50";

static fake_device devices[MAX_DEVICES];
static unsigned int device_count = 0;
static int initialized = 0;

static int env_list_has(const char *variable, const char *word) {
    const char *value = getenv(variable);
    char buffer[256];
    char *item;
    char *saveptr = NULL;
    if (value == NULL) {
        return 0;
    }
    snprintf(buffer, sizeof buffer, "%s", value);
    for (item = strtok_r(buffer, ",", &saveptr); item != NULL; item = strtok_r(NULL, ",", &saveptr)) {
        if (strcmp(item, word) == 0) {
            return 1;
        }
    }
    return 0;
}

static int unsupported(const char *field) {
    return env_list_has("FAKE_NVML_NOT_SUPPORTED", field);
}

static void parse_device(char *spec, fake_device *device) {
    char *fields[8] = {0};
    char *saveptr = NULL;
    int count = 0;
    char *field;
    for (field = strtok_r(spec, ":", &saveptr); field != NULL && count < 8;
         field = strtok_r(NULL, ":", &saveptr)) {
        fields[count++] = field;
    }
    memset(device, 0, sizeof *device);
    device->minor = fields[0] ? (unsigned int)strtoul(fields[0], NULL, 10) : 0;
    snprintf(device->uuid, TEXT_SIZE, "%s", fields[1] ? fields[1] : "GPU-fake");
    snprintf(device->name, TEXT_SIZE, "%s", fields[2] ? fields[2] : "Fake GPU");
    device->util_gpu = fields[3] ? (unsigned int)strtoul(fields[3], NULL, 10) : 0;
    device->mem_used_mb = fields[4] ? strtoull(fields[4], NULL, 10) : 0;
    device->mem_total_mb = fields[5] ? strtoull(fields[5], NULL, 10) : 40000;
    device->power_mw = fields[6] ? (unsigned int)strtoul(fields[6], NULL, 10) : 0;
    device->temp_c = fields[7] ? (unsigned int)strtoul(fields[7], NULL, 10) : 0;
}

static void load_devices(void) {
    const char *spec = getenv("FAKE_NVML_DEVICES");
    char buffer[4096];
    char index_text[16];
    char *item;
    char *saveptr = NULL;
    snprintf(buffer, sizeof buffer, "%s", spec != NULL ? spec : DEFAULT_DEVICES);
    device_count = 0;
    for (item = strtok_r(buffer, ";", &saveptr); item != NULL && device_count < MAX_DEVICES;
         item = strtok_r(NULL, ";", &saveptr)) {
        if (item[0] == '\0') {
            continue;
        }
        parse_device(item, &devices[device_count]);
        snprintf(index_text, sizeof index_text, "%u", device_count);
        devices[device_count].no_permission = env_list_has("FAKE_NVML_NO_PERMISSION", index_text);
        device_count++;
    }
}

static nvmlReturn_t copy_text(const char *text, char *out, unsigned int length) {
    if (out == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (strlen(text) + 1 > length) {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    memcpy(out, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

static nvmlReturn_t check_device(nvmlDevice_t device) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (device == NULL || device < devices || device >= devices + device_count) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    const char *forced = getenv("FAKE_NVML_INIT_RESULT");
    (void)flags;
    if (forced != NULL && forced[0] != '\0' && atoi(forced) != NVML_SUCCESS) {
        return atoi(forced);
    }
    load_devices();
    initialized = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    initialized = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS:
        return "Success";
    case NVML_ERROR_UNINITIALIZED:
        return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
        return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED:
        return "Not Supported";
    case NVML_ERROR_NO_PERMISSION:
        return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND:
        return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE:
        return "Insufficient Size";
    default:
        return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    return copy_text("999.99-fake", version, length);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (count == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *count = device_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (device == NULL || index >= device_count) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    /* Under cgroup device constraints NVML refuses handles to GPUs outside the job. */
    if (devices[index].no_permission) {
        return NVML_ERROR_NO_PERMISSION;
    }
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    unsigned int index;
    if (!initialized) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (uuid == NULL || device == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    for (index = 0; index < device_count; index++) {
        if (strcmp(devices[index].uuid, uuid) == 0) {
            if (devices[index].no_permission) {
                return NVML_ERROR_NO_PERMISSION;
            }
            *device = &devices[index];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    nvmlReturn_t status = check_device(device);
    if (status != NVML_SUCCESS) {
        return status;
    }
    *index = (unsigned int)(device - devices);
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_OMIT_MINOR
nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minor) {
    nvmlReturn_t status = check_device(device);
    if (status != NVML_SUCCESS) {
        return status;
    }
    if (unsupported("minor")) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    *minor = device->minor;
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    nvmlReturn_t status = check_device(device);
    if (status != NVML_SUCCESS) {
        return status;
    }
    return copy_text(device->uuid, uuid, length);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    nvmlReturn_t status = check_device(device);
    if (status != NVML_SUCCESS) {
        return status;
    }
    return copy_text(device->name, name, length);
}

#ifndef FAKE_NVML_OMIT_UTILIZATION
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    nvmlReturn_t status = check_device(device);
    if (status != NVML_SUCCESS) {
        return status;
    }
    if (unsupported("utilization")) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    utilization->gpu = device->util_gpu;
    utilization->memory = device->util_gpu / 2;
    return NVML_SUCCESS;
}
#endif

#ifndef FAKE_NVML_OMIT_MEMORY
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    nvmlReturn_t status = check_device(device);
    if (status != NVML_SUCCESS) {
        return status;
    }
    if (unsupported("memory")) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    /* Megabytes here are 10^6 bytes, as in MLflow's gpu_{i}_memory_usage_megabytes. */
    memory->total = device->mem_total_mb * 1000000ULL;
    memory->used = device->mem_used_mb * 1000000ULL;
    memory->free = memory->total > memory->used ? memory->total - memory->used : 0;
    return NVML_SUCCESS;
}
#endif

#ifndef FAKE_NVML_OMIT_POWER
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    nvmlReturn_t status = check_device(device);
    if (status != NVML_SUCCESS) {
        return status;
    }
    if (unsupported("power")) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    *power = device->power_mw;
    return NVML_SUCCESS;
}
#endif

#ifndef FAKE_NVML_OMIT_TEMPERATURE
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, unsigned int sensor, unsigned int *temp) {
    nvmlReturn_t status = check_device(device);
    if (status != NVML_SUCCESS) {
        return status;
    }
    if (sensor != 0 || unsupported("temperature")) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    *temp = device->temp_c;
    return NVML_SUCCESS;
}
#endif
