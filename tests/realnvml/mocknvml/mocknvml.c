/*
 * fatia's mock libnvidia-ml.so.1 for the real-NVML test tier.
 *
 * A shared library with the C ABI of NVIDIA's NVML, so that the real `pynvml`
 * module (ctypes) loads it in place of the driver's library. It is compiled
 * against the nvml.h that the Go module github.com/NVIDIA/go-nvml ships (pinned
 * in go.mod beside this file), so every struct and signature is the driver's.
 * Only the calls fatia makes are implemented; pynvml raises FunctionNotFound
 * for every other one, which is what an older driver does too.
 *
 * Configuration (plain text, one directive a line, '#' starts a comment):
 *
 *   $FATIA_MOCK_NVML_CONFIG   read once, at nvmlInit:
 *     driver 550.54.15
 *     cuda 12040
 *     gpu model=a100-40gb uuid=GPU-... bus=00000000:07:00.0 numa=0 mig=0
 *         [minor=N] [mig_reset=1] [nvlink=1]
 *   models: a100-40gb h100-80gb (MIG-capable), l40s t4 (not).
 *
 *   $FATIA_MOCK_NVML_FAULTS   re-read whenever it changes (append to it at run time):
 *     lost GPU                       every call about that GPU answers GPU_IS_LOST
 *     fail GPU|* FUNCTION ERROR      FUNCTION answers ERROR (NOT_SUPPORTED, UNKNOWN, 3, ...)
 *                                    for that GPU (and its MIG devices) or for every GPU
 *     xid GPU CODE [GI CI]           one XID critical-error event
 *     ecc GPU                        one double-bit ECC event
 *   Events are numbered by their order in the file; an event set sees those
 *   written after it was created, so only append.
 *
 *   $FATIA_MOCK_NVML_TRACE    if set, one line per call: "NAME GPU RC" (GPU -1: none).
 *
 *   $FATIA_MOCK_NVML_STATE    MIG mode, GPU and compute instances, kept across
 *                             processes as the hardware keeps them (until a reboot:
 *                             delete the file). A MIG device's UUID stays the same
 *                             for its life, in every process, and is new when an
 *                             instance is made again at the same placement.
 *
 * MIG facts (profile ids, placements, instance counts, SMs, engines) are those of
 * the project's reference notes (shared/reference/mig-hardware.md §1-§3). GPU
 * instance ids follow the placement like nodes of a binary tree of memory slices
 * (whole GPU 0, halves 1-2, quarters 3-6, eighths 7-14).
 */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include "nvml.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define MAX_GPUS 16
#define MAX_GI 8
#define MAX_CI 8
#define MAX_RULES 256
#define MAX_EVENTS 1024
#define MAX_SETS 64
#define UNATTRIBUTED 0xFFFFFFFFu

/* ------------------------------------------------------------------ models */

struct gi_profile {
    unsigned enumv, id, max, slots, sm, ce, dec, enc, jpeg, ofa;
    unsigned long long mem_mb;
    const char *name;
    unsigned nstarts;
    unsigned starts[8];
    unsigned slices; /* compute slices */
};

struct model {
    const char *key, *name;
    unsigned pci_device_id, arch, cc_major, cc_minor;
    unsigned long long mem_mb;
    unsigned mem_slots; /* 0: not MIG-capable */
    const struct gi_profile *profiles;
    unsigned nprofiles;
};

static const struct gi_profile a100_40[] = {
    {0, 19, 7, 1, 14, 1, 0, 0, 0, 0, 4864, "1g.5gb", 7, {0, 1, 2, 3, 4, 5, 6}, 1},
    {1, 14, 3, 2, 28, 2, 1, 0, 0, 0, 9856, "2g.10gb", 3, {0, 2, 4}, 2},
    {2, 9, 2, 4, 42, 3, 2, 0, 0, 0, 19968, "3g.20gb", 2, {0, 4}, 3},
    {3, 5, 1, 4, 56, 4, 2, 0, 0, 0, 19968, "4g.20gb", 1, {0}, 4},
    {4, 0, 1, 8, 98, 7, 5, 0, 1, 1, 40192, "7g.40gb", 1, {0}, 7},
    {7, 20, 1, 1, 14, 1, 1, 0, 1, 1, 4864, "1g.5gb+me", 7, {0, 1, 2, 3, 4, 5, 6}, 1},
    {9, 15, 4, 2, 14, 1, 1, 0, 0, 0, 9856, "1g.10gb", 4, {0, 2, 4, 6}, 1},
};

static const struct gi_profile h100_80[] = {
    {0, 19, 7, 1, 16, 1, 1, 0, 1, 0, 9984, "1g.10gb", 7, {0, 1, 2, 3, 4, 5, 6}, 1},
    {1, 14, 3, 2, 32, 2, 2, 0, 2, 0, 20096, "2g.20gb", 3, {0, 2, 4}, 2},
    {2, 9, 2, 4, 60, 3, 3, 0, 3, 0, 40448, "3g.40gb", 2, {0, 4}, 3},
    {3, 5, 1, 4, 64, 4, 4, 0, 4, 0, 40448, "4g.40gb", 1, {0}, 4},
    {4, 0, 1, 8, 132, 8, 7, 0, 7, 1, 81152, "7g.80gb", 1, {0}, 7},
    {7, 20, 1, 1, 16, 1, 1, 0, 1, 1, 9984, "1g.10gb+me", 7, {0, 1, 2, 3, 4, 5, 6}, 1},
    {9, 15, 4, 2, 26, 1, 1, 0, 1, 0, 20096, "1g.20gb", 4, {0, 2, 4, 6}, 1},
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const struct model models[] = {
    {"a100-40gb", "NVIDIA A100-SXM4-40GB", 0x20B010DE, NVML_DEVICE_ARCH_AMPERE, 8, 0, 40960, 8,
     a100_40, N(a100_40)},
    {"h100-80gb", "NVIDIA H100 80GB HBM3", 0x233010DE, NVML_DEVICE_ARCH_HOPPER, 9, 0, 81559, 8,
     h100_80, N(h100_80)},
    {"l40s", "NVIDIA L40S", 0x26B910DE, NVML_DEVICE_ARCH_ADA, 8, 9, 46068, 0, NULL, 0},
    {"t4", "Tesla T4", 0x1EB810DE, NVML_DEVICE_ARCH_TURING, 7, 5, 15360, 0, NULL, 0},
};

/* ------------------------------------------------------------------ state */

struct nvmlComputeInstance_st {
    int used;
    unsigned id, profile_enum, slices;
    struct nvmlGpuInstance_st *gi;
    unsigned serial; /* the node's count of compute instances made when this one was */
};

struct nvmlDevice_st; /* completed below */

struct nvmlGpuInstance_st {
    int used;
    unsigned id;
    const struct gi_profile *profile;
    unsigned start, size;
    struct nvmlDevice_st *gpu;
    struct nvmlComputeInstance_st ci[MAX_CI];
};

struct nvmlDevice_st {
    int used, is_mig;
    unsigned index, minor, numa_set, nvlink, mig_reset;
    int numa;
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    unsigned domain, bus, devno;
    const struct model *model;
    unsigned mig_current, mig_pending;
    struct nvmlGpuInstance_st gi[MAX_GI];
    /* MIG device handles: one per possible (gi slot, ci slot) */
    struct nvmlDevice_st *parent;
    struct nvmlComputeInstance_st *ci_of_mig;
};

static struct nvmlDevice_st gpus[MAX_GPUS];
static struct nvmlDevice_st migdevs[MAX_GPUS][MAX_GI][MAX_CI];
static unsigned ngpus;
static unsigned ci_serial; /* compute instances ever made on this node (kept in the state) */
static char driver_version[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE] = "550.54.15";
static int cuda_version = 12040;
static int init_count;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

struct rule {
    int kind; /* 'l' lost, 'f' fail */
    int gpu;  /* -1: every GPU */
    char fn[96];
    nvmlReturn_t err;
};
struct event {
    unsigned gpu, gi, ci;
    unsigned long long type, data;
};
static struct rule rules[MAX_RULES];
static unsigned nrules;
static struct event events[MAX_EVENTS];
static unsigned nevents;
static struct timespec faults_mtime;
static off_t faults_size = -1;

struct nvmlEventSet_st {
    int used;
    unsigned cursor;
    unsigned long long mask[MAX_GPUS];
};
static struct nvmlEventSet_st sets[MAX_SETS];

/* ------------------------------------------------------------------ helpers */

static const struct {
    const char *name;
    nvmlReturn_t code;
    const char *text;
} errors[] = {
    {"SUCCESS", NVML_SUCCESS, "Success"},
    {"UNINITIALIZED", NVML_ERROR_UNINITIALIZED, "Uninitialized"},
    {"INVALID_ARGUMENT", NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument"},
    {"NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED, "Not Supported"},
    {"NO_PERMISSION", NVML_ERROR_NO_PERMISSION, "Insufficient Permissions"},
    {"ALREADY_INITIALIZED", NVML_ERROR_ALREADY_INITIALIZED, "Already Initialized"},
    {"NOT_FOUND", NVML_ERROR_NOT_FOUND, "Not Found"},
    {"INSUFFICIENT_SIZE", NVML_ERROR_INSUFFICIENT_SIZE, "Insufficient Size"},
    {"DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"},
    {"TIMEOUT", NVML_ERROR_TIMEOUT, "Timeout"},
    {"FUNCTION_NOT_FOUND", NVML_ERROR_FUNCTION_NOT_FOUND, "Function Not Found"},
    {"GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST, "GPU is lost"},
    {"RESET_REQUIRED", NVML_ERROR_RESET_REQUIRED, "GPU requires restart"},
    {"IN_USE", NVML_ERROR_IN_USE, "In use by another client"},
    {"MEMORY", NVML_ERROR_MEMORY, "Insufficient Memory"},
    {"NO_DATA", NVML_ERROR_NO_DATA, "No data"},
    {"INSUFFICIENT_RESOURCES", NVML_ERROR_INSUFFICIENT_RESOURCES, "Insufficient resources"},
    {"ARGUMENT_VERSION_MISMATCH", NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
     "Version mismatch between argument and API"},
    {"UNKNOWN", NVML_ERROR_UNKNOWN, "Unknown Error"},
};

static nvmlReturn_t parse_error(const char *word) {
    for (unsigned i = 0; i < N(errors); i++)
        if (strcmp(word, errors[i].name) == 0 ||
            (strncmp(word, "NVML_ERROR_", 11) == 0 && strcmp(word + 11, errors[i].name) == 0))
            return errors[i].code;
    char *end;
    long v = strtol(word, &end, 0);
    return (*word && !*end) ? (nvmlReturn_t)v : NVML_ERROR_UNKNOWN;
}

static void complain(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("mocknvml: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Re-read the faults file when it changed. Called with the lock held. */
static void reload_faults(void) {
    const char *path = getenv("FATIA_MOCK_NVML_FAULTS");
    struct stat st;
    if (!path || !*path || stat(path, &st) != 0) {
        nrules = 0; /* no file: no faults (events already seen stay counted) */
        faults_size = -1;
        return;
    }
    if (st.st_size == faults_size && st.st_mtim.tv_sec == faults_mtime.tv_sec &&
        st.st_mtim.tv_nsec == faults_mtime.tv_nsec)
        return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    faults_size = st.st_size;
    faults_mtime = st.st_mtim;
    nrules = 0;
    nevents = 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char a[64] = "", b[96] = "", c[96] = "", d[32] = "", e[32] = "";
        int n = sscanf(line, "%63s %95s %95s %31s %31s", a, b, c, d, e);
        if (n < 1) continue;
        if (strcmp(a, "lost") == 0 && n >= 2 && nrules < MAX_RULES) {
            rules[nrules++] = (struct rule){'l', atoi(b), "", NVML_ERROR_GPU_IS_LOST};
        } else if (strcmp(a, "fail") == 0 && n >= 4 && nrules < MAX_RULES) {
            struct rule r = {'f', strcmp(b, "*") == 0 ? -1 : atoi(b), "", parse_error(d)};
            snprintf(r.fn, sizeof r.fn, "%s", c);
            rules[nrules++] = r;
        } else if (strcmp(a, "xid") == 0 && n >= 3 && nevents < MAX_EVENTS) {
            events[nevents++] = (struct event){
                (unsigned)atoi(b), n >= 5 ? (unsigned)atoi(d) : UNATTRIBUTED,
                n >= 5 ? (unsigned)atoi(e) : UNATTRIBUTED, nvmlEventTypeXidCriticalError,
                strtoull(c, NULL, 0)};
        } else if (strcmp(a, "ecc") == 0 && n >= 2 && nevents < MAX_EVENTS) {
            events[nevents++] = (struct event){(unsigned)atoi(b), UNATTRIBUTED, UNATTRIBUTED,
                                               nvmlEventTypeDoubleBitEccError, 0};
        } else {
            complain("%s: ignored line: %s", path, line);
        }
    }
    fclose(f);
}

/* The injected answer of FN about GPU (or -1 for a call about no GPU). Lock held. */
static nvmlReturn_t injected(const char *fn, int gpu) {
    reload_faults();
    for (unsigned i = 0; i < nrules; i++) {
        const struct rule *r = &rules[i];
        if (r->kind == 'l' && gpu >= 0 && r->gpu == gpu) return NVML_ERROR_GPU_IS_LOST;
        if (r->kind == 'f' && strcmp(r->fn, fn) == 0 && (r->gpu < 0 || r->gpu == gpu))
            return r->err;
    }
    return NVML_SUCCESS;
}

static struct nvmlDevice_st *as_dev(nvmlDevice_t h) {
    struct nvmlDevice_st *d = h.handle;
    if (d >= gpus && d < gpus + ngpus) return d;
    if ((void *)d >= (void *)migdevs && (void *)d < (void *)(migdevs + MAX_GPUS) && d->used) return d;
    return NULL;
}
static struct nvmlDevice_st *physical(struct nvmlDevice_st *d) { return d->is_mig ? d->parent : d; }

static struct nvmlGpuInstance_st *as_gi(nvmlGpuInstance_t h) {
    struct nvmlGpuInstance_st *g = h.handle;
    for (unsigned i = 0; i < ngpus; i++)
        if (g >= gpus[i].gi && g < gpus[i].gi + MAX_GI && g->used) return g;
    return NULL;
}
static struct nvmlComputeInstance_st *as_ci(nvmlComputeInstance_t h) {
    struct nvmlComputeInstance_st *c = h.handle;
    for (unsigned i = 0; i < ngpus; i++)
        for (unsigned j = 0; j < MAX_GI; j++)
            if (c >= gpus[i].gi[j].ci && c < gpus[i].gi[j].ci + MAX_CI && c->used) return c;
    return NULL;
}

static const struct gi_profile *profile_by_enum(const struct model *m, unsigned e) {
    for (unsigned i = 0; i < m->nprofiles; i++)
        if (m->profiles[i].enumv == e) return &m->profiles[i];
    return NULL;
}
static const struct gi_profile *profile_by_id(const struct model *m, unsigned id) {
    for (unsigned i = 0; i < m->nprofiles; i++)
        if (m->profiles[i].id == id) return &m->profiles[i];
    return NULL;
}

/* One line per NVML call ("nvmlDeviceGetUUID 3 0": call, GPU or -1, return code) to
 * $FATIA_MOCK_NVML_TRACE, so that tests see what fatia asked and when. Lock held. */
static void trace(const char *fn, int gpu, nvmlReturn_t rc) {
    const char *path = getenv("FATIA_MOCK_NVML_TRACE");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, "%s %d %d\n", fn, gpu, (int)rc);
    fclose(f);
}

/* Every call starts here, under the lock: what END traces (the call, its GPU, its return
 * code) and an initialised library. */
#define ENTER_CALL(name)                                            \
    pthread_mutex_lock(&lock);                                      \
    nvmlReturn_t rc_ = NVML_SUCCESS;                                \
    const char *fn_ = name;                                         \
    int gpu_ = -1;                                                  \
    if (!init_count) { rc_ = NVML_ERROR_UNINITIALIZED; goto out_; }

/* A call about a handle: `as` finds what it names (var, of type), `gpu` is that GPU's
 * index, and no fault is injected for the call on that GPU. */
#define ENTER_HANDLE(name, handle, type, var, as, gpu)                        \
    type *var = NULL;                                                         \
    ENTER_CALL(name)                                                          \
    if (!(var = as(handle))) { rc_ = NVML_ERROR_INVALID_ARGUMENT; goto out_; } \
    gpu_ = (int)(gpu);                                                        \
    if ((rc_ = injected(name, gpu_)) != NVML_SUCCESS) goto out_;

#define ENTER_DEV(name, handle, dvar) \
    ENTER_HANDLE(name, handle, struct nvmlDevice_st, dvar, as_dev, physical(dvar)->index)
#define ENTER_GI(name, handle, var) \
    ENTER_HANDLE(name, handle, struct nvmlGpuInstance_st, var, as_gi, var->gpu->index)
#define ENTER_CI(name, handle, var) \
    ENTER_HANDLE(name, handle, struct nvmlComputeInstance_st, var, as_ci, var->gi->gpu->index)

#define LEAVE(rc) { rc_ = (rc); goto out_; }
#define END              \
    out_:                \
    trace(fn_, gpu_, rc_); \
    pthread_mutex_unlock(&lock); \
    return rc_;

/* A call that answers one value about a device (d): NOT_SUPPORTED where `unsupported`,
 * else the value. */
#define DEVICE_GETTER(fn, type, unsupported, value)                \
    EXPORT nvmlReturn_t fn(nvmlDevice_t device, type *out) {      \
        ENTER_DEV(#fn, device, d)                                 \
        if (!out) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }          \
        if (unsupported) { LEAVE(NVML_ERROR_NOT_SUPPORTED) }      \
        *out = (value);                                           \
        LEAVE(NVML_SUCCESS)                                       \
        END                                                       \
    }

static void copy_str(char *dst, unsigned len, const char *src) {
    if (len) snprintf(dst, len, "%s", src);
}

/* ------------------------------------------------------------------ persistence */

static unsigned gi_id_for(unsigned start, unsigned size, unsigned slots) {
    /* a node of the binary tree over the memory slices: whole 0, halves 1-2, ... */
    unsigned level_first = 0, width = slots;
    while (width > size && width > 1) {
        level_first = level_first * 2 + 1;
        width /= 2;
    }
    return level_first + start / (width ? width : 1);
}

static void mig_devices_refresh(struct nvmlDevice_st *g) {
    unsigned gi_slot, ci_slot;
    for (gi_slot = 0; gi_slot < MAX_GI; gi_slot++)
        for (ci_slot = 0; ci_slot < MAX_CI; ci_slot++) {
            struct nvmlDevice_st *m = &migdevs[g->index][gi_slot][ci_slot];
            struct nvmlComputeInstance_st *ci = &g->gi[gi_slot].ci[ci_slot];
            memset(m, 0, sizeof *m);
            if (!g->gi[gi_slot].used || !ci->used) continue;
            m->used = 1;
            m->is_mig = 1;
            m->parent = g;
            m->index = g->index;
            m->model = g->model;
            m->ci_of_mig = ci;
            /* A MIG UUID from the GPU, the instance ids and the creation serial: the same
             * for the instance's whole life and in every process, a new one when an
             * instance is made again at the same place, as on real drivers. */
            unsigned h = 2166136261u;
            for (const char *p = g->uuid; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
            snprintf(m->uuid, sizeof m->uuid, "MIG-%08x-%04x-%04x-%04x-%08x%04x", h,
                     g->gi[gi_slot].id, ci->id, g->index, h ^ 0x5a5a5a5au, ci->serial & 0xffff);
        }
}

static void save_state(void) {
    const char *path = getenv("FATIA_MOCK_NVML_STATE");
    if (!path || !*path) return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f, "serial %u\n", ci_serial);
    for (unsigned i = 0; i < ngpus; i++) {
        struct nvmlDevice_st *g = &gpus[i];
        if (!g->model->mem_slots) continue;
        fprintf(f, "mode %u %u %u\n", i, g->mig_current, g->mig_pending);
        for (unsigned j = 0; j < MAX_GI; j++) {
            struct nvmlGpuInstance_st *gi = &g->gi[j];
            if (!gi->used) continue;
            fprintf(f, "gi %u %u %u %u\n", i, gi->profile->id, gi->start, gi->size);
            for (unsigned k = 0; k < MAX_CI; k++)
                if (gi->ci[k].used)
                    fprintf(f, "ci %u %u %u %u %u %u\n", i, gi->id, gi->ci[k].id,
                            gi->ci[k].profile_enum, gi->ci[k].slices, gi->ci[k].serial);
        }
    }
    fclose(f);
    rename(tmp, path);
}

static struct nvmlGpuInstance_st *new_gi(struct nvmlDevice_st *g, const struct gi_profile *p,
                                         unsigned start) {
    for (unsigned j = 0; j < MAX_GI; j++)
        if (!g->gi[j].used) {
            struct nvmlGpuInstance_st *gi = &g->gi[j];
            memset(gi, 0, sizeof *gi);
            gi->used = 1;
            gi->profile = p;
            gi->start = start;
            gi->size = p->slots;
            gi->gpu = g;
            gi->id = gi_id_for(start, p->slots, g->model->mem_slots);
            return gi;
        }
    return NULL;
}

static void load_state(void) {
    const char *path = getenv("FATIA_MOCK_NVML_STATE");
    FILE *f = path && *path ? fopen(path, "r") : NULL;
    if (!f) return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        unsigned a, b, c, d, e, n;
        if (sscanf(line, "serial %u", &a) == 1) {
            ci_serial = a;
        } else if (sscanf(line, "mode %u %u %u", &a, &b, &c) == 3 && a < ngpus) {
            gpus[a].mig_current = b;
            gpus[a].mig_pending = c;
        } else if (sscanf(line, "gi %u %u %u %u", &a, &b, &c, &d) == 4 && a < ngpus) {
            const struct gi_profile *p = profile_by_id(gpus[a].model, b);
            if (p) new_gi(&gpus[a], p, c);
        } else if (sscanf(line, "ci %u %u %u %u %u %u", &a, &b, &c, &d, &e, &n) == 6 && a < ngpus) {
            for (unsigned j = 0; j < MAX_GI; j++) {
                struct nvmlGpuInstance_st *gi = &gpus[a].gi[j];
                if (!gi->used || gi->id != b) continue;
                for (unsigned k = 0; k < MAX_CI; k++)
                    if (!gi->ci[k].used) {
                        gi->ci[k] = (struct nvmlComputeInstance_st){1, c, d, e, gi, n};
                        break;
                    }
            }
        }
    }
    fclose(f);
    for (unsigned i = 0; i < ngpus; i++) mig_devices_refresh(&gpus[i]);
}

/* ------------------------------------------------------------------ init */

static int load_config(void) {
    const char *path = getenv("FATIA_MOCK_NVML_CONFIG");
    memset(gpus, 0, sizeof gpus);
    ci_serial = 0;
    memset(migdevs, 0, sizeof migdevs);
    ngpus = 0;
    if (!path || !*path) {
        complain("FATIA_MOCK_NVML_CONFIG is not set");
        return -1;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        complain("%s: %s", path, strerror(errno));
        return -1;
    }
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char word[64];
        if (sscanf(line, "%63s", word) != 1) continue;
        if (strcmp(word, "driver") == 0) {
            sscanf(line, "%*s %79s", driver_version);
        } else if (strcmp(word, "cuda") == 0) {
            sscanf(line, "%*s %d", &cuda_version);
        } else if (strcmp(word, "gpu") == 0 && ngpus < MAX_GPUS) {
            struct nvmlDevice_st *g = &gpus[ngpus];
            g->used = 1;
            g->index = g->minor = ngpus;
            g->numa = -1;
            snprintf(g->uuid, sizeof g->uuid, "GPU-00000000-0000-0000-0000-%012x", ngpus);
            g->bus = 7 + ngpus;
            char *save = NULL;
            for (char *tok = strtok_r(line + 3, " \t\r\n", &save); tok;
                 tok = strtok_r(NULL, " \t\r\n", &save)) {
                char *eq = strchr(tok, '=');
                if (!eq) continue;
                *eq = 0;
                const char *k = tok, *v = eq + 1;
                if (strcmp(k, "model") == 0) {
                    for (unsigned i = 0; i < N(models); i++)
                        if (strcmp(models[i].key, v) == 0) g->model = &models[i];
                } else if (strcmp(k, "uuid") == 0) {
                    snprintf(g->uuid, sizeof g->uuid, "%s", v);
                } else if (strcmp(k, "bus") == 0) {
                    sscanf(v, "%x:%x:%x", &g->domain, &g->bus, &g->devno);
                } else if (strcmp(k, "numa") == 0) {
                    g->numa = atoi(v);
                    g->numa_set = 1;
                } else if (strcmp(k, "minor") == 0) {
                    g->minor = (unsigned)atoi(v);
                } else if (strcmp(k, "mig") == 0) {
                    g->mig_current = g->mig_pending = (unsigned)atoi(v);
                } else if (strcmp(k, "mig_reset") == 0) {
                    g->mig_reset = (unsigned)atoi(v);
                } else if (strcmp(k, "nvlink") == 0) {
                    g->nvlink = (unsigned)atoi(v);
                }
            }
            if (!g->model) {
                complain("%s: gpu %u has no known model=", path, ngpus);
                fclose(f);
                return -1;
            }
            if (!g->model->mem_slots) g->mig_current = g->mig_pending = 0;
            ngpus++;
        }
    }
    fclose(f);
    load_state();
    return 0;
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = injected("nvmlInit", -1);
    if (rc == NVML_SUCCESS && init_count == 0 && load_config() != 0)
        rc = NVML_ERROR_DRIVER_NOT_LOADED;
    if (rc == NVML_SUCCESS) init_count++;
    trace("nvmlInit", -1, rc);
    pthread_mutex_unlock(&lock);
    return rc;
}
EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

EXPORT nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = init_count ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
    if (init_count) init_count--;
    pthread_mutex_unlock(&lock);
    return rc;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result) {
    for (unsigned i = 0; i < N(errors); i++)
        if (errors[i].code == result) return errors[i].text;
    return "Unknown Error";
}

/* ------------------------------------------------------------------ system */

#define ENTER_SYS(name) \
    ENTER_CALL(name)    \
    if ((rc_ = injected(name, -1)) != NVML_SUCCESS) goto out_;

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    ENTER_SYS("nvmlSystemGetDriverVersion")
    if (!version) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if (length <= strlen(driver_version)) { LEAVE(NVML_ERROR_INSUFFICIENT_SIZE) }
    copy_str(version, length, driver_version);
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    ENTER_SYS("nvmlSystemGetNVMLVersion")
    char v[96];
    snprintf(v, sizeof v, "%d.%s", cuda_version / 1000, driver_version);
    if (!version || length <= strlen(v)) { LEAVE(NVML_ERROR_INSUFFICIENT_SIZE) }
    copy_str(version, length, v);
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    ENTER_SYS("nvmlSystemGetCudaDriverVersion")
    if (!v) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    *v = cuda_version;
    LEAVE(NVML_SUCCESS)
    END
}
EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) {
    return nvmlSystemGetCudaDriverVersion(v);
}

/* ------------------------------------------------------------------ devices */

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    ENTER_SYS("nvmlDeviceGetCount")
    if (!count) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    *count = ngpus;
    LEAVE(NVML_SUCCESS)
    END
}
EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    ENTER_SYS("nvmlDeviceGetHandleByIndex")
    if (!device || index >= ngpus) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    gpu_ = (int)index;
    if ((rc_ = injected("nvmlDeviceGetHandleByIndex", (int)index)) != NVML_SUCCESS) goto out_;
    device->handle = &gpus[index];
    LEAVE(NVML_SUCCESS)
    END
}
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    ENTER_SYS("nvmlDeviceGetHandleByUUID")
    if (!uuid || !device) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    for (unsigned i = 0; i < ngpus; i++) {
        if (strcmp(gpus[i].uuid, uuid) == 0) {
            gpu_ = (int)i;
            if ((rc_ = injected("nvmlDeviceGetHandleByUUID", (int)i)) != NVML_SUCCESS) goto out_;
            device->handle = &gpus[i];
            LEAVE(NVML_SUCCESS)
        }
        for (unsigned j = 0; j < MAX_GI; j++)
            for (unsigned k = 0; k < MAX_CI; k++)
                if (migdevs[i][j][k].used && strcmp(migdevs[i][j][k].uuid, uuid) == 0) {
                    gpu_ = (int)i;
                    if ((rc_ = injected("nvmlDeviceGetHandleByUUID", (int)i)) != NVML_SUCCESS)
                        goto out_;
                    device->handle = &migdevs[i][j][k];
                    LEAVE(NVML_SUCCESS)
                }
    }
    LEAVE(NVML_ERROR_NOT_FOUND)
    END
}

DEVICE_GETTER(nvmlDeviceGetIndex, unsigned int, 0, physical(d)->index)

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    ENTER_DEV("nvmlDeviceGetUUID", device, d)
    if (!uuid) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if (length <= strlen(d->uuid)) { LEAVE(NVML_ERROR_INSUFFICIENT_SIZE) }
    copy_str(uuid, length, d->uuid);
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    ENTER_DEV("nvmlDeviceGetName", device, d)
    char buf[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    if (d->is_mig)
        snprintf(buf, sizeof buf, "%s MIG %s", d->model->name, d->ci_of_mig->gi->profile->name);
    else
        snprintf(buf, sizeof buf, "%s", d->model->name);
    if (!name || length <= strlen(buf)) { LEAVE(NVML_ERROR_INSUFFICIENT_SIZE) }
    copy_str(name, length, buf);
    LEAVE(NVML_SUCCESS)
    END
}

static unsigned long long total_mb(struct nvmlDevice_st *d) {
    return d->is_mig ? d->ci_of_mig->gi->profile->mem_mb : d->model->mem_mb;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    ENTER_DEV("nvmlDeviceGetMemoryInfo", device, d)
    if (!memory) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if (memory->version != nvmlMemory_v2) { LEAVE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH) }
    memory->total = total_mb(d) << 20;
    memory->reserved = 0;
    memory->used = 0;
    memory->free = memory->total;
    LEAVE(NVML_SUCCESS)
    END
}

/* The unversioned call: the v2 answer without its version and reserved fields. */
EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    nvmlMemory_v2_t v2 = {.version = nvmlMemory_v2};
    nvmlReturn_t rc = nvmlDeviceGetMemoryInfo_v2(device, memory ? &v2 : NULL);
    if (rc == NVML_SUCCESS) {
        memory->total = v2.total;
        memory->free = v2.free;
        memory->used = v2.used;
    }
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    ENTER_DEV("nvmlDeviceGetPciInfo", device, d)
    if (!pci) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    struct nvmlDevice_st *g = physical(d);
    memset(pci, 0, sizeof *pci);
    pci->domain = g->domain;
    pci->bus = g->bus;
    pci->device = g->devno;
    pci->pciDeviceId = g->model->pci_device_id;
    pci->pciSubSystemId = 0x145F10DE;
    snprintf(pci->busId, sizeof pci->busId, NVML_DEVICE_PCI_BUS_ID_FMT, g->domain, g->bus, g->devno);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT,
             g->domain, g->bus, g->devno);
    LEAVE(NVML_SUCCESS)
    END
}

DEVICE_GETTER(nvmlDeviceGetNumaNodeId, unsigned int, !physical(d)->numa_set, (unsigned)physical(d)->numa)

DEVICE_GETTER(nvmlDeviceGetMinorNumber, unsigned int, 0, physical(d)->minor)

EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    ENTER_DEV("nvmlDeviceGetCudaComputeCapability", device, d)
    if (!major || !minor) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    *major = (int)d->model->cc_major;
    *minor = (int)d->model->cc_minor;
    LEAVE(NVML_SUCCESS)
    END
}

DEVICE_GETTER(nvmlDeviceGetArchitecture, nvmlDeviceArchitecture_t, 0, d->model->arch)

EXPORT nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t a, nvmlDevice_t b,
                                                         nvmlGpuTopologyLevel_t *level) {
    ENTER_DEV("nvmlDeviceGetTopologyCommonAncestor", a, da)
    struct nvmlDevice_st *db = as_dev(b);
    if (!db || !level) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if ((rc_ = injected("nvmlDeviceGetTopologyCommonAncestor", (int)physical(db)->index)))
        goto out_;
    da = physical(da);
    db = physical(db);
    if (da == db) *level = NVML_TOPOLOGY_INTERNAL;
    else if (da->numa_set && db->numa_set && da->numa == db->numa) *level = NVML_TOPOLOGY_NODE;
    else *level = NVML_TOPOLOGY_SYSTEM;
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlDeviceGetP2PStatus(nvmlDevice_t a, nvmlDevice_t b,
                                            nvmlGpuP2PCapsIndex_t index, nvmlGpuP2PStatus_t *status) {
    ENTER_DEV("nvmlDeviceGetP2PStatus", a, da)
    struct nvmlDevice_st *db = as_dev(b);
    if (!db || !status) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if ((rc_ = injected("nvmlDeviceGetP2PStatus", (int)physical(db)->index))) goto out_;
    if (index == NVML_P2P_CAPS_INDEX_NVLINK)
        *status = physical(da)->nvlink && physical(db)->nvlink ? NVML_P2P_STATUS_OK
                                                               : NVML_P2P_STATUS_NOT_SUPPORTED;
    else
        *status = NVML_P2P_STATUS_OK;
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                             nvmlProcessInfo_t *infos) {
    ENTER_DEV("nvmlDeviceGetComputeRunningProcesses", device, d)
    (void)infos;
    if (!count) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    *count = 0; /* the mock runs no processes */
    LEAVE(NVML_SUCCESS)
    END
}

/* ------------------------------------------------------------------ events */

EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    ENTER_DEV("nvmlDeviceGetSupportedEventTypes", device, d)
    if (!types) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    *types = nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError |
             nvmlEventTypeXidCriticalError | nvmlEventTypePState | nvmlEventTypeClock;
    if (d->model->mem_slots) *types |= nvmlEventMigConfigChange;
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    ENTER_SYS("nvmlEventSetCreate")
    if (!set) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    for (unsigned i = 0; i < MAX_SETS; i++)
        if (!sets[i].used) {
            memset(&sets[i], 0, sizeof sets[i]);
            sets[i].used = 1;
            sets[i].cursor = nevents; /* reload_faults ran in ENTER_SYS */
            set->handle = &sets[i];
            LEAVE(NVML_SUCCESS)
        }
    LEAVE(NVML_ERROR_MEMORY)
    END
}

static struct nvmlEventSet_st *as_set(nvmlEventSet_t s) {
    struct nvmlEventSet_st *p = s.handle;
    return p >= sets && p < sets + MAX_SETS && p->used ? p : NULL;
}

EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types,
                                              nvmlEventSet_t set) {
    ENTER_DEV("nvmlDeviceRegisterEvents", device, d)
    struct nvmlEventSet_st *s = as_set(set);
    if (!s || d->is_mig) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    s->mask[d->index] |= types;
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    ENTER_SYS("nvmlEventSetFree")
    struct nvmlEventSet_st *s = as_set(set);
    if (!s) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    s->used = 0;
    LEAVE(NVML_SUCCESS)
    END
}

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                         unsigned int timeoutms) {
    long long deadline = now_ms() + timeoutms;
    for (;;) {
        pthread_mutex_lock(&lock);
        nvmlReturn_t rc = init_count ? injected("nvmlEventSetWait", -1) : NVML_ERROR_UNINITIALIZED;
        struct nvmlEventSet_st *s = as_set(set);
        if (rc == NVML_SUCCESS && (!s || !data)) rc = NVML_ERROR_INVALID_ARGUMENT;
        if (rc != NVML_SUCCESS) {
            trace("nvmlEventSetWait", -1, rc);
            pthread_mutex_unlock(&lock);
            return rc;
        }
        if (s->cursor > nevents) s->cursor = nevents; /* the file was cut short */
        while (s->cursor < nevents) {
            const struct event *e = &events[s->cursor++];
            if (e->gpu >= ngpus || !(s->mask[e->gpu] & e->type)) continue;
            data->device.handle = &gpus[e->gpu];
            data->eventType = e->type;
            data->eventData = e->data;
            data->gpuInstanceId = e->gi;
            data->computeInstanceId = e->ci;
            trace("nvmlEventSetWait", (int)e->gpu, NVML_SUCCESS);
            pthread_mutex_unlock(&lock);
            return NVML_SUCCESS;
        }
        pthread_mutex_unlock(&lock);
        long long left = deadline - now_ms();
        if (left <= 0) {
            pthread_mutex_lock(&lock);
            trace("nvmlEventSetWait", -1, NVML_ERROR_TIMEOUT);
            pthread_mutex_unlock(&lock);
            return NVML_ERROR_TIMEOUT;
        }
        struct timespec nap = {0, (left < 250 ? left : 250) * 1000000L}; /* 4 wake-ups a second when idle */
        nanosleep(&nap, NULL);
    }
}
EXPORT nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int ms) {
    return nvmlEventSetWait_v2(set, data, ms);
}

/* ------------------------------------------------------------------ MIG: mode */

#define NEED_MIG(g)                                                       \
    if (g->is_mig) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }                 \
    if (!g->model->mem_slots) { LEAVE(NVML_ERROR_NOT_SUPPORTED) }

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
                                          unsigned int *pending) {
    ENTER_DEV("nvmlDeviceGetMigMode", device, g)
    NEED_MIG(g)
    if (!current || !pending) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    *current = g->mig_current;
    *pending = g->mig_pending;
    LEAVE(NVML_SUCCESS)
    END
}

/* Whether any of the `size` GPU or compute instances of `table` is in use. */
#define ANY_USED(table, size) \
    ({ int any_ = 0; for (unsigned i_ = 0; i_ < (size); i_++) any_ |= (table)[i_].used; any_; })

EXPORT nvmlReturn_t nvmlDeviceSetMigMode(nvmlDevice_t device, unsigned int mode,
                                          nvmlReturn_t *activation) {
    ENTER_DEV("nvmlDeviceSetMigMode", device, g)
    NEED_MIG(g)
    if (!activation || mode > 1) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if (mode == 0 && g->mig_current && ANY_USED(g->gi, MAX_GI)) { LEAVE(NVML_ERROR_IN_USE) }
    g->mig_pending = mode;
    if (g->mig_reset && g->mig_current != mode) {
        *activation = NVML_ERROR_RESET_REQUIRED;
    } else {
        g->mig_current = mode;
        *activation = NVML_SUCCESS;
    }
    save_state();
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    ENTER_DEV("nvmlDeviceGetMaxMigDeviceCount", device, g)
    if (!count || g->is_mig) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    *count = g->model->mem_slots ? 7 : 0;
    LEAVE(NVML_SUCCESS)
    END
}

/* ------------------------------------------------------------------ MIG: GPU instances */

/* The answers to the calls that look GPU or compute instances up in a table of `size`
 * (`e` is each used one): every one that `matches`, as handles into `out` and their
 * number into `*count` (INSUFFICIENT_SIZE where that is too small); or the first one. */
#define LIST_INSTANCES(table, size, e, matches, out, count)                    \
    {                                                                          \
        unsigned n_ = 0;                                                       \
        for (unsigned i_ = 0; i_ < (size); i_++) {                             \
            __typeof__(&(table)[0]) e = &(table)[i_];                          \
            if (!e->used || !(matches)) continue;                              \
            if (n_ >= *(count)) { LEAVE(NVML_ERROR_INSUFFICIENT_SIZE) }        \
            (out)[n_++].handle = e;                                            \
        }                                                                      \
        *(count) = n_;                                                         \
        LEAVE(NVML_SUCCESS)                                                    \
    }
#define FIND_INSTANCE(table, size, e, matches, out)                            \
    for (unsigned i_ = 0; i_ < (size); i_++) {                                 \
        __typeof__(&(table)[0]) e = &(table)[i_];                              \
        if (e->used && (matches)) { (out)->handle = e; LEAVE(NVML_SUCCESS) }    \
    }                                                                          \
    LEAVE(NVML_ERROR_NOT_FOUND)

/* The fields of the v2 profile structs that their unversioned structs have too, and how
 * an unversioned call answers from its v2 call's answer (`v2`) into `info`. */
#define GI_PROFILE_INFO_FIELDS(X)                                                       \
    X(id) X(isP2pSupported) X(sliceCount) X(instanceCount) X(multiprocessorCount)       \
    X(copyEngineCount) X(decoderCount) X(encoderCount) X(jpegCount) X(ofaCount) X(memorySizeMB)
#define CI_PROFILE_INFO_FIELDS(X)                                                       \
    X(id) X(sliceCount) X(instanceCount) X(multiprocessorCount) X(sharedCopyEngineCount) \
    X(sharedDecoderCount) X(sharedEncoderCount) X(sharedJpegCount) X(sharedOfaCount)
#define FROM_V2(field) info->field = v2.field;

static void fill_gi_info(const struct gi_profile *p, nvmlGpuInstanceProfileInfo_v2_t *o) {
    o->id = p->id;
    o->isP2pSupported = 0;
    o->sliceCount = p->slices;
    o->instanceCount = p->max;
    o->multiprocessorCount = p->sm;
    o->copyEngineCount = p->ce;
    o->decoderCount = p->dec;
    o->encoderCount = p->enc;
    o->jpegCount = p->jpeg;
    o->ofaCount = p->ofa;
    o->memorySizeMB = p->mem_mb;
    snprintf(o->name, sizeof o->name, "MIG %s", p->name);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfoV(nvmlDevice_t device, unsigned int profile,
                                                          nvmlGpuInstanceProfileInfo_v2_t *info) {
    ENTER_DEV("nvmlDeviceGetGpuInstanceProfileInfo", device, g)
    NEED_MIG(g)
    if (!info || profile >= NVML_GPU_INSTANCE_PROFILE_COUNT) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if (info->version != nvmlGpuInstanceProfileInfo_v2) { LEAVE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH) }
    const struct gi_profile *p = profile_by_enum(g->model, profile);
    if (!p) { LEAVE(NVML_ERROR_NOT_SUPPORTED) }
    fill_gi_info(p, info);
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfo(nvmlDevice_t device, unsigned int profile,
                                                         nvmlGpuInstanceProfileInfo_t *info) {
    nvmlGpuInstanceProfileInfo_v2_t v2 = {.version = nvmlGpuInstanceProfileInfo_v2};
    nvmlReturn_t rc = nvmlDeviceGetGpuInstanceProfileInfoV(device, profile, info ? &v2 : NULL);
    if (rc == NVML_SUCCESS) { GI_PROFILE_INFO_FIELDS(FROM_V2) }
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfoByIdV(nvmlDevice_t device, unsigned int profileId,
                                                              nvmlGpuInstanceProfileInfo_v2_t *info) {
    unsigned e;
    pthread_mutex_lock(&lock);
    struct nvmlDevice_st *g = init_count ? as_dev(device) : NULL;
    const struct gi_profile *p = g && !g->is_mig && g->model->mem_slots
                                     ? profile_by_id(g->model, profileId) : NULL;
    e = p ? p->enumv : NVML_GPU_INSTANCE_PROFILE_COUNT;
    pthread_mutex_unlock(&lock);
    if (!init_count) return NVML_ERROR_UNINITIALIZED;
    if (g && g->model->mem_slots && !p) return NVML_ERROR_NOT_SUPPORTED;
    return nvmlDeviceGetGpuInstanceProfileInfoV(device, e, info);
}

static int overlaps(struct nvmlDevice_st *g, unsigned start, unsigned size) {
    for (unsigned j = 0; j < MAX_GI; j++) {
        struct nvmlGpuInstance_st *gi = &g->gi[j];
        if (gi->used && start < gi->start + gi->size && gi->start < start + size) return 1;
    }
    return 0;
}

static int count_of(struct nvmlDevice_st *g, const struct gi_profile *p) {
    int n = 0;
    for (unsigned j = 0; j < MAX_GI; j++) n += g->gi[j].used && g->gi[j].profile == p;
    return n;
}

static int legal_start(const struct gi_profile *p, unsigned start) {
    for (unsigned i = 0; i < p->nstarts; i++)
        if (p->starts[i] == start) return 1;
    return 0;
}

static int me_taken(struct nvmlDevice_st *g, const struct gi_profile *p) {
    /* a +me profile: at most one per GPU */
    return p->enumv == NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1 && count_of(g, p) > 0;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstancePossiblePlacements_v2(
    nvmlDevice_t device, unsigned int profileId, nvmlGpuInstancePlacement_t *placements,
    unsigned int *count) {
    ENTER_DEV("nvmlDeviceGetGpuInstancePossiblePlacements", device, g)
    NEED_MIG(g)
    if (!count) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    const struct gi_profile *p = profile_by_id(g->model, profileId);
    if (!p) { LEAVE(NVML_ERROR_NOT_SUPPORTED) }
    if (!placements) {
        *count = p->nstarts;
        LEAVE(NVML_SUCCESS)
    }
    if (*count < p->nstarts) { LEAVE(NVML_ERROR_INSUFFICIENT_SIZE) }
    for (unsigned i = 0; i < p->nstarts; i++) {
        placements[i].start = p->starts[i];
        placements[i].size = p->slots;
    }
    *count = p->nstarts;
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceRemainingCapacity(nvmlDevice_t device,
                                                               unsigned int profileId,
                                                               unsigned int *count) {
    ENTER_DEV("nvmlDeviceGetGpuInstanceRemainingCapacity", device, g)
    NEED_MIG(g)
    if (!count) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if (!g->mig_current) { LEAVE(NVML_ERROR_NOT_SUPPORTED) }
    const struct gi_profile *p = profile_by_id(g->model, profileId);
    if (!p) { LEAVE(NVML_ERROR_NOT_SUPPORTED) }
    unsigned n = 0;
    for (unsigned i = 0; i < p->nstarts; i++) n += !overlaps(g, p->starts[i], p->slots);
    unsigned left = p->max - (unsigned)count_of(g, p);
    *count = me_taken(g, p) ? 0 : (n < left ? n : left);
    LEAVE(NVML_SUCCESS)
    END
}

static nvmlReturn_t create_gi(struct nvmlDevice_st *g, const struct gi_profile *p, unsigned start,
                              nvmlGpuInstance_t *out) {
    if (!g->mig_current) return NVML_ERROR_NOT_SUPPORTED;
    if (!legal_start(p, start)) return NVML_ERROR_INVALID_ARGUMENT;
    if (overlaps(g, start, p->slots) || (unsigned)count_of(g, p) >= p->max || me_taken(g, p))
        return NVML_ERROR_INSUFFICIENT_RESOURCES;
    struct nvmlGpuInstance_st *gi = new_gi(g, p, start);
    if (!gi) return NVML_ERROR_INSUFFICIENT_RESOURCES;
    out->handle = gi;
    save_state();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceCreateGpuInstance(nvmlDevice_t device, unsigned int profileId,
                                                 nvmlGpuInstance_t *gpuInstance) {
    ENTER_DEV("nvmlDeviceCreateGpuInstance", device, g)
    NEED_MIG(g)
    if (!gpuInstance) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    const struct gi_profile *p = profile_by_id(g->model, profileId);
    if (!p) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    for (unsigned i = 0; i < p->nstarts; i++)
        if (!overlaps(g, p->starts[i], p->slots)) { LEAVE(create_gi(g, p, p->starts[i], gpuInstance)) }
    LEAVE(g->mig_current ? NVML_ERROR_INSUFFICIENT_RESOURCES : NVML_ERROR_NOT_SUPPORTED)
    END
}

EXPORT nvmlReturn_t nvmlDeviceCreateGpuInstanceWithPlacement(
    nvmlDevice_t device, unsigned int profileId, const nvmlGpuInstancePlacement_t *placement,
    nvmlGpuInstance_t *gpuInstance) {
    ENTER_DEV("nvmlDeviceCreateGpuInstanceWithPlacement", device, g)
    NEED_MIG(g)
    if (!gpuInstance || !placement) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    const struct gi_profile *p = profile_by_id(g->model, profileId);
    if (!p || placement->size != p->slots) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    LEAVE(create_gi(g, p, placement->start, gpuInstance))
    END
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstances(nvmlDevice_t device, unsigned int profileId,
                                               nvmlGpuInstance_t *gpuInstances, unsigned int *count) {
    ENTER_DEV("nvmlDeviceGetGpuInstances", device, g)
    NEED_MIG(g)
    if (!count || !gpuInstances) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if (!g->mig_current) { LEAVE(NVML_ERROR_NOT_SUPPORTED) }
    const struct gi_profile *p = profile_by_id(g->model, profileId);
    if (!p) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    LIST_INSTANCES(g->gi, MAX_GI, gi, gi->profile == p, gpuInstances, count)
    END
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceById(nvmlDevice_t device, unsigned int id,
                                                  nvmlGpuInstance_t *gpuInstance) {
    ENTER_DEV("nvmlDeviceGetGpuInstanceById", device, g)
    NEED_MIG(g)
    if (!gpuInstance) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if (!g->mig_current) { LEAVE(NVML_ERROR_NOT_SUPPORTED) }
    FIND_INSTANCE(g->gi, MAX_GI, gi, gi->id == id, gpuInstance)
    END
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetInfo(nvmlGpuInstance_t gpuInstance, nvmlGpuInstanceInfo_t *info) {
    ENTER_GI("nvmlGpuInstanceGetInfo", gpuInstance, gi)
    if (!info) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    info->device.handle = gi->gpu;
    info->id = gi->id;
    info->profileId = gi->profile->id;
    info->placement.start = gi->start;
    info->placement.size = gi->size;
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlGpuInstanceDestroy(nvmlGpuInstance_t gpuInstance) {
    ENTER_GI("nvmlGpuInstanceDestroy", gpuInstance, gi)
    if (ANY_USED(gi->ci, MAX_CI)) { LEAVE(NVML_ERROR_IN_USE) }
    struct nvmlDevice_st *g = gi->gpu;
    memset(gi, 0, sizeof *gi);
    mig_devices_refresh(g);
    save_state();
    LEAVE(NVML_SUCCESS)
    END
}

/* ------------------------------------------------------------------ MIG: compute instances */

static const unsigned ci_slices_by_enum[NVML_COMPUTE_INSTANCE_PROFILE_COUNT] = {1, 2, 3, 4, 7, 8, 6, 0, 0};

static nvmlReturn_t ci_profile(struct nvmlGpuInstance_st *gi, unsigned e, unsigned *slices,
                               unsigned *max) {
    if (e >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned s = ci_slices_by_enum[e];
    if (!s || s > gi->profile->slices) return NVML_ERROR_NOT_SUPPORTED;
    *slices = s;
    *max = gi->profile->slices / s;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstanceProfileInfoV(
    nvmlGpuInstance_t gpuInstance, unsigned int profile, unsigned int engProfile,
    nvmlComputeInstanceProfileInfo_v2_t *info) {
    ENTER_GI("nvmlGpuInstanceGetComputeInstanceProfileInfo", gpuInstance, gi)
    if (!info || engProfile >= NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if (info->version != nvmlComputeInstanceProfileInfo_v2) { LEAVE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH) }
    unsigned s, max;
    if ((rc_ = ci_profile(gi, profile, &s, &max))) goto out_;
    const struct gi_profile *p = gi->profile;
    info->id = profile;
    info->sliceCount = s;
    info->instanceCount = max;
    info->multiprocessorCount = p->sm / p->slices * s;
    info->sharedCopyEngineCount = p->ce;
    info->sharedDecoderCount = p->dec;
    info->sharedEncoderCount = p->enc;
    info->sharedJpegCount = p->jpeg;
    info->sharedOfaCount = p->ofa;
    if (s == p->slices)
        snprintf(info->name, sizeof info->name, "MIG %s", p->name);
    else
        snprintf(info->name, sizeof info->name, "MIG %uc.%s", s, p->name);
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstanceProfileInfo(
    nvmlGpuInstance_t gpuInstance, unsigned int profile, unsigned int engProfile,
    nvmlComputeInstanceProfileInfo_t *info) {
    nvmlComputeInstanceProfileInfo_v2_t v2;
    memset(&v2, 0, sizeof v2);
    v2.version = nvmlComputeInstanceProfileInfo_v2;
    if (!info) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = nvmlGpuInstanceGetComputeInstanceProfileInfoV(gpuInstance, profile, engProfile, &v2);
    if (rc == NVML_SUCCESS) { CI_PROFILE_INFO_FIELDS(FROM_V2) }
    return rc;
}

static unsigned ci_used_slices(struct nvmlGpuInstance_st *gi) {
    unsigned n = 0;
    for (unsigned k = 0; k < MAX_CI; k++)
        if (gi->ci[k].used) n += gi->ci[k].slices;
    return n;
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstanceRemainingCapacity(
    nvmlGpuInstance_t gpuInstance, unsigned int profileId, unsigned int *count) {
    ENTER_GI("nvmlGpuInstanceGetComputeInstanceRemainingCapacity", gpuInstance, gi)
    if (!count) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    unsigned s, max;
    if ((rc_ = ci_profile(gi, profileId, &s, &max))) goto out_;
    *count = (gi->profile->slices - ci_used_slices(gi)) / s;
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlGpuInstanceCreateComputeInstance(nvmlGpuInstance_t gpuInstance,
                                                          unsigned int profileId,
                                                          nvmlComputeInstance_t *computeInstance) {
    ENTER_GI("nvmlGpuInstanceCreateComputeInstance", gpuInstance, gi)
    if (!computeInstance) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    unsigned s, max;
    if ((rc_ = ci_profile(gi, profileId, &s, &max))) goto out_;
    if (ci_used_slices(gi) + s > gi->profile->slices) { LEAVE(NVML_ERROR_INSUFFICIENT_RESOURCES) }
    unsigned id = 0;
    for (int clash = 1; clash;) { /* the lowest free compute-instance id */
        clash = 0;
        for (unsigned k = 0; k < MAX_CI; k++)
            if (gi->ci[k].used && gi->ci[k].id == id) { id++; clash = 1; }
    }
    for (unsigned k = 0; k < MAX_CI; k++)
        if (!gi->ci[k].used) {
            gi->ci[k] = (struct nvmlComputeInstance_st){1, id, profileId, s, gi, ++ci_serial};
            computeInstance->handle = &gi->ci[k];
            mig_devices_refresh(gi->gpu);
            save_state();
            LEAVE(NVML_SUCCESS)
        }
    LEAVE(NVML_ERROR_INSUFFICIENT_RESOURCES)
    END
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstances(nvmlGpuInstance_t gpuInstance,
                                                        unsigned int profileId,
                                                        nvmlComputeInstance_t *cis,
                                                        unsigned int *count) {
    ENTER_GI("nvmlGpuInstanceGetComputeInstances", gpuInstance, gi)
    if (!count || !cis) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    unsigned s, max;
    if ((rc_ = ci_profile(gi, profileId, &s, &max))) goto out_;
    LIST_INSTANCES(gi->ci, MAX_CI, c, c->profile_enum == profileId, cis, count)
    END
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstanceById(nvmlGpuInstance_t gpuInstance,
                                                           unsigned int id,
                                                           nvmlComputeInstance_t *ci) {
    ENTER_GI("nvmlGpuInstanceGetComputeInstanceById", gpuInstance, gi)
    if (!ci) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    FIND_INSTANCE(gi->ci, MAX_CI, c, c->id == id, ci)
    END
}

EXPORT nvmlReturn_t nvmlComputeInstanceGetInfo_v2(nvmlComputeInstance_t computeInstance,
                                                   nvmlComputeInstanceInfo_t *info) {
    ENTER_CI("nvmlComputeInstanceGetInfo", computeInstance, ci)
    if (!info) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    info->device.handle = ci->gi->gpu;
    info->gpuInstance.handle = ci->gi;
    info->id = ci->id;
    info->profileId = ci->profile_enum;
    info->placement.start = 0;
    info->placement.size = ci->slices;
    LEAVE(NVML_SUCCESS)
    END
}

EXPORT nvmlReturn_t nvmlComputeInstanceDestroy(nvmlComputeInstance_t computeInstance) {
    ENTER_CI("nvmlComputeInstanceDestroy", computeInstance, ci)
    struct nvmlDevice_st *g = ci->gi->gpu;
    memset(ci, 0, sizeof *ci);
    mig_devices_refresh(g);
    save_state();
    LEAVE(NVML_SUCCESS)
    END
}

/* ------------------------------------------------------------------ MIG devices */

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                         nvmlDevice_t *migDevice) {
    ENTER_DEV("nvmlDeviceGetMigDeviceHandleByIndex", device, g)
    NEED_MIG(g)
    if (!migDevice || index >= 7) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    if (!g->mig_current) { LEAVE(NVML_ERROR_NOT_SUPPORTED) }
    unsigned n = 0;
    for (unsigned j = 0; j < MAX_GI; j++)
        for (unsigned k = 0; k < MAX_CI; k++)
            if (migdevs[g->index][j][k].used && n++ == index) {
                migDevice->handle = &migdevs[g->index][j][k];
                LEAVE(NVML_SUCCESS)
            }
    LEAVE(NVML_ERROR_NOT_FOUND)
    END
}

DEVICE_GETTER(nvmlDeviceIsMigDeviceHandle, unsigned int, 0, (unsigned)d->is_mig)

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice,
                                                                  nvmlDevice_t *device) {
    ENTER_DEV("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice, d)
    if (!device || !d->is_mig) { LEAVE(NVML_ERROR_INVALID_ARGUMENT) }
    device->handle = d->parent;
    LEAVE(NVML_SUCCESS)
    END
}

DEVICE_GETTER(nvmlDeviceGetGpuInstanceId, unsigned int, !d->is_mig, d->ci_of_mig->gi->id)

DEVICE_GETTER(nvmlDeviceGetComputeInstanceId, unsigned int, !d->is_mig, d->ci_of_mig->id)
