// The libcuda stand-in (BITUNE_CUDA_SIM=1), part 1 of 4: initialisation, the device and its
// attributes, contexts, error strings, the shared helpers and the simulator's own exports.
// driver_mem.cpp has memory and copies, driver_stream.cpp streams, events, capture and graphs,
// driver_exec.cpp modules, function attributes, occupancy and launches. The whole stand-in presents one device, an H100-like part whose limits come from
// sim/runtime.h, to cudarc's unmodified code path. ABI: CUDA 13.0's cuda.h (see driver_internal.h).
//
// Error model: every failing call returns the CUresult a real driver would and leaves an
// explanation in sim::set_last_error (printed on stderr, readable through bitune_sim_last_error()).
// Unlike a real GPU, no error is sticky: a failed launch leaves the context usable, so tests can
// plant failures and carry on in the same process.
#include <atomic>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "driver_internal.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace simdrv {

std::mutex& table_mutex() {
    static std::mutex m;
    return m;
}
std::recursive_mutex& exec_mutex() {
    static std::recursive_mutex m;
    return m;
}

CUresult fail(CUresult code, const std::string& msg) {
    sim::set_last_error(msg);
    return code;
}

std::string hex(const void* p) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%p", p);
    return buf;
}
std::string hex(CUdeviceptr p) { return hex(reinterpret_cast<const void*>(static_cast<uintptr_t>(p))); }

CUresult check_range(const char* call, const char* role, const void* p, size_t n) {
    if (n == 0 || sim::in_allocation(p, n)) return CUDA_SUCCESS;
    std::ostringstream s;
    s << call << ": " << role << " range [" << hex(p) << ", +" << n
      << " bytes) is not inside one live device allocation: " << sim::describe_address(p);
    if (sim::in_allocation(p, 1))
        s << " (the range runs " << "past the end of its allocation; last byte: "
          << sim::describe_address(static_cast<const char*>(p) + n - 1) << ")";
    return fail(CUDA_ERROR_INVALID_VALUE, s.str());
}

}  // namespace simdrv

using namespace simdrv;

// ---- contexts -------------------------------------------------------------------------------------
// The simulator has one address space: contexts only exist so that cudarc's bookkeeping works.
struct SimCtx {
    bool primary = false;
    unsigned flags = 0;
};

namespace {

std::atomic<bool> g_initialised{false};
SimCtx g_primary{true, 0};
int g_primary_refs = 0;
std::set<SimCtx*> g_contexts{&g_primary};   // live context handles
thread_local std::vector<CUcontext> tl_ctx_stack;

constexpr CUdevice kDevice = 0;

CUresult check_device(CUdevice dev, const char* call) {
    if (!g_initialised) return fail(CUDA_ERROR_NOT_INITIALIZED, std::string(call) + ": cuInit was not called");
    if (dev != kDevice)
        return fail(CUDA_ERROR_INVALID_DEVICE,
                    std::string(call) + ": device " + std::to_string(dev) + " does not exist (the simulator has one device, 0)");
    return CUDA_SUCCESS;
}

// H100 SXM-like attribute values; limits the stand-in enforces come from sim/runtime.h.
int attribute_value(int a) {
    switch (a) {
        case 1: return sim::kMaxThreadsPerBlock;
        case 2: return sim::kMaxBlockDimX;
        case 3: return sim::kMaxBlockDimY;
        case 4: return sim::kMaxBlockDimZ;
        case 5: return static_cast<int>(sim::kMaxGridDimX);
        case 6: return sim::kMaxGridDimY;
        case 7: return sim::kMaxGridDimZ;
        case 8: return static_cast<int>(sim::kSmemPerBlockDefault);   // MAX_SHARED_MEMORY_PER_BLOCK
        case 9: return 65536;          // TOTAL_CONSTANT_MEMORY
        case 10: return sim::kWarpSize;
        case 11: return 2147483647;    // MAX_PITCH
        case 12: return 65536;         // MAX_REGISTERS_PER_BLOCK
        case 13: return 1980000;       // CLOCK_RATE (kHz)
        case 14: return 512;           // TEXTURE_ALIGNMENT
        case 15: return 1;             // GPU_OVERLAP
        case 16: return sim::kNumSMs;  // MULTIPROCESSOR_COUNT
        case 17: return 0;             // KERNEL_EXEC_TIMEOUT
        case 18: return 0;             // INTEGRATED
        case 19: return 1;             // CAN_MAP_HOST_MEMORY
        case 20: return 0;             // COMPUTE_MODE default
        case 21: return 131072;
        case 22: return 131072;
        case 23: return 65536;
        case 24: case 25: case 26: return 16384;
        case 30: return 512;           // SURFACE_ALIGNMENT
        case 31: return 1;             // CONCURRENT_KERNELS
        case 32: return 1;             // ECC_ENABLED
        case 33: return 1;             // PCI_BUS_ID
        case 34: return 0;             // PCI_DEVICE_ID
        case 35: return 0;             // TCC_DRIVER
        case 36: return 2619000;       // MEMORY_CLOCK_RATE (kHz)
        case 37: return 5120;          // GLOBAL_MEMORY_BUS_WIDTH
        case 38: return 50 * 1024 * 1024;   // L2_CACHE_SIZE
        case 39: return 2048;          // MAX_THREADS_PER_MULTIPROCESSOR
        case 40: return 3;             // ASYNC_ENGINE_COUNT
        case 41: return 1;             // UNIFIED_ADDRESSING
        case 50: return 0;             // PCI_DOMAIN_ID
        case 51: return 32;            // TEXTURE_PITCH_ALIGNMENT
        case 75: return 9;             // COMPUTE_CAPABILITY_MAJOR
        case 76: return 0;             // COMPUTE_CAPABILITY_MINOR
        case 78: return 1;             // STREAM_PRIORITIES_SUPPORTED
        case 79: return 1;             // GLOBAL_L1_CACHE_SUPPORTED
        case 80: return 1;             // LOCAL_L1_CACHE_SUPPORTED
        case 81: return 233472;        // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR (228 KiB)
        case 82: return 65536;         // MAX_REGISTERS_PER_MULTIPROCESSOR
        case 83: return 0;             // MANAGED_MEMORY: cuMemAllocManaged is not simulated
        case 87: return 2;             // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
        case 90: return 1;             // COMPUTE_PREEMPTION_SUPPORTED
        case 95: return 0;             // COOPERATIVE_LAUNCH: grid sync is not simulated
        case 97: return static_cast<int>(sim::kSmemPerBlockOptin);   // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 99: return 1;             // HOST_REGISTER_SUPPORTED
        case 106: return 32;           // MAX_BLOCKS_PER_MULTIPROCESSOR
        case 111: return 1024;         // RESERVED_SHARED_MEMORY_PER_BLOCK
        case 115: return 1;            // MEMORY_POOLS_SUPPORTED: cudarc then uses cuMemAllocAsync/FreeAsync
        case 126: return 1;            // MEM_SYNC_DOMAIN_COUNT
        case 131: return -1;           // NUMA_ID
        case 134: return -1;           // HOST_NUMA_ID
        default: return 0;
    }
}

const struct ErrorInfo {
    int code;
    const char* name;
    const char* text;
} kErrors[] = {
    {0, "CUDA_SUCCESS", "no error"},
    {1, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {2, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {3, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {4, "CUDA_ERROR_DEINITIALIZED", "driver shutting down"},
    {5, "CUDA_ERROR_PROFILER_DISABLED", "profiler disabled while using external profiling tool"},
    {6, "CUDA_ERROR_PROFILER_NOT_INITIALIZED", "profiler not initialized: call cudaProfilerInitialize()"},
    {7, "CUDA_ERROR_PROFILER_ALREADY_STARTED", "profiler already started"},
    {8, "CUDA_ERROR_PROFILER_ALREADY_STOPPED", "profiler already stopped"},
    {34, "CUDA_ERROR_STUB_LIBRARY", "CUDA driver is a stub library"},
    {36, "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER", "operation not supported due to requiring a newer driver"},
    {46, "CUDA_ERROR_DEVICE_UNAVAILABLE", "CUDA-capable device(s) is/are busy or unavailable"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {101, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {102, "CUDA_ERROR_DEVICE_NOT_LICENSED", "device doesn't have valid Grid license"},
    {200, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {201, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {202, "CUDA_ERROR_CONTEXT_ALREADY_CURRENT", "context already current"},
    {205, "CUDA_ERROR_MAP_FAILED", "mapping of buffer object failed"},
    {206, "CUDA_ERROR_UNMAP_FAILED", "unmapping of buffer object failed"},
    {207, "CUDA_ERROR_ARRAY_IS_MAPPED", "array is mapped"},
    {208, "CUDA_ERROR_ALREADY_MAPPED", "resource already mapped"},
    {209, "CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device"},
    {210, "CUDA_ERROR_ALREADY_ACQUIRED", "resource already acquired"},
    {211, "CUDA_ERROR_NOT_MAPPED", "resource not mapped"},
    {212, "CUDA_ERROR_NOT_MAPPED_AS_ARRAY", "resource not mapped as array"},
    {213, "CUDA_ERROR_NOT_MAPPED_AS_POINTER", "resource not mapped as pointer"},
    {214, "CUDA_ERROR_ECC_UNCORRECTABLE", "uncorrectable ECC error encountered"},
    {215, "CUDA_ERROR_UNSUPPORTED_LIMIT", "limit is not supported on this architecture"},
    {216, "CUDA_ERROR_CONTEXT_ALREADY_IN_USE", "exclusive-thread device already in use by a different thread"},
    {217, "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED", "peer access is not supported between these two devices"},
    {218, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {219, "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT", "invalid OpenGL or DirectX context"},
    {220, "CUDA_ERROR_NVLINK_UNCORRECTABLE", "uncorrectable NVLink error detected during the execution"},
    {221, "CUDA_ERROR_JIT_COMPILER_NOT_FOUND", "PTX JIT compiler library not found"},
    {222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "the provided PTX was compiled with an unsupported toolchain."},
    {223, "CUDA_ERROR_JIT_COMPILATION_DISABLED", "PTX JIT compilation was disabled"},
    {224, "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY", "the provided execution affinity is not supported by the device"},
    {225, "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC", "the provided PTX contains unsupported call to cudaDeviceSynchronize"},
    {226, "CUDA_ERROR_CONTAINED", "Invalid access of peer GPU memory over nvlink or a hardware error"},
    {300, "CUDA_ERROR_INVALID_SOURCE", "device kernel image is invalid"},
    {301, "CUDA_ERROR_FILE_NOT_FOUND", "file not found"},
    {302, "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND", "shared object symbol not found"},
    {303, "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED", "shared object initialization failed"},
    {304, "CUDA_ERROR_OPERATING_SYSTEM", "OS call failed or operation not supported on this OS"},
    {400, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {401, "CUDA_ERROR_ILLEGAL_STATE", "the operation cannot be performed in the present state"},
    {402, "CUDA_ERROR_LOSSY_QUERY", "attempted introspection would be semantically lossy"},
    {500, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {600, "CUDA_ERROR_NOT_READY", "device not ready"},
    {700, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {702, "CUDA_ERROR_LAUNCH_TIMEOUT", "the launch timed out and was terminated"},
    {703, "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING", "launch uses incompatible texturing mode"},
    {704, "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED", "peer access is already enabled"},
    {705, "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED", "peer access has not been enabled"},
    {708, "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE", "cannot set while device is active in this process"},
    {709, "CUDA_ERROR_CONTEXT_IS_DESTROYED", "context is destroyed"},
    {710, "CUDA_ERROR_ASSERT", "device-side assert triggered"},
    {711, "CUDA_ERROR_TOO_MANY_PEERS", "peer mapping resources exhausted"},
    {712, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", "part or all of the requested memory range is already mapped"},
    {713, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", "pointer does not correspond to a registered memory region"},
    {714, "CUDA_ERROR_HARDWARE_STACK_ERROR", "hardware stack error"},
    {715, "CUDA_ERROR_ILLEGAL_INSTRUCTION", "an illegal instruction was encountered"},
    {716, "CUDA_ERROR_MISALIGNED_ADDRESS", "misaligned address"},
    {717, "CUDA_ERROR_INVALID_ADDRESS_SPACE", "operation not supported on global/shared address space"},
    {718, "CUDA_ERROR_INVALID_PC", "invalid program counter"},
    {719, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
    {720, "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE", "too many blocks in cooperative launch"},
    {721, "CUDA_ERROR_TENSOR_MEMORY_LEAK", "tensor memory not completely freed"},
    {800, "CUDA_ERROR_NOT_PERMITTED", "operation not permitted"},
    {801, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {802, "CUDA_ERROR_SYSTEM_NOT_READY", "system not yet initialized"},
    {803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH", "system has unsupported display driver / cuda driver combination"},
    {804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", "forward compatibility was attempted on non supported HW"},
    {805, "CUDA_ERROR_MPS_CONNECTION_FAILED", "MPS client failed to connect to the MPS control daemon or the MPS server"},
    {806, "CUDA_ERROR_MPS_RPC_FAILURE", "the remote procedural call between the MPS server and the MPS client failed"},
    {807, "CUDA_ERROR_MPS_SERVER_NOT_READY", "MPS server is not ready to accept new MPS client requests"},
    {808, "CUDA_ERROR_MPS_MAX_CLIENTS_REACHED", "the hardware resources required to create MPS client have been exhausted"},
    {809, "CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED", "the hardware resources required to support device connections have been exhausted"},
    {810, "CUDA_ERROR_MPS_CLIENT_TERMINATED", "the MPS client has been terminated by the server"},
    {811, "CUDA_ERROR_CDP_NOT_SUPPORTED", "is using CUDA Dynamic Parallelism, but the current configuration, like MPS, does not support it"},
    {812, "CUDA_ERROR_CDP_VERSION_MISMATCH", "CUDA Dynamic Parallelism is not supported by the launched kernel due to mismatch of CUDA Dynamic Parallelism APIs"},
    {900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", "operation not permitted when stream is capturing"},
    {901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", "operation failed due to a previous error during capture"},
    {902, "CUDA_ERROR_STREAM_CAPTURE_MERGE", "operation would result in a merge of separate capture sequences"},
    {903, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED", "capture was not ended in the same stream as it began"},
    {904, "CUDA_ERROR_STREAM_CAPTURE_UNJOINED", "capturing stream has unjoined work"},
    {905, "CUDA_ERROR_STREAM_CAPTURE_ISOLATION", "dependency created on uncaptured work in another stream"},
    {906, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT", "operation would make the legacy stream depend on a capturing blocking stream"},
    {907, "CUDA_ERROR_CAPTURED_EVENT", "operation not permitted on an event last recorded in a capturing stream"},
    {908, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", "attempt to terminate a thread-local capture sequence from another thread"},
    {909, "CUDA_ERROR_TIMEOUT", "wait operation timed out"},
    {910, "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE", "the graph update was not performed because it included changes which violated constraints specific to instantiated graph update"},
    {911, "CUDA_ERROR_EXTERNAL_DEVICE", "an async error has occured in external entity outside of CUDA"},
    {912, "CUDA_ERROR_INVALID_CLUSTER_SIZE", "a kernel launch error has occurred due to cluster misconfiguration"},
    {913, "CUDA_ERROR_FUNCTION_NOT_LOADED", "the function handle is not loaded when calling an API that requires a loaded function"},
    {914, "CUDA_ERROR_INVALID_RESOURCE_TYPE", "one or more resources passed in are not valid resource types for the operation"},
    {915, "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION", "one or more resources are insufficient or non-applicable for the operation"},
    {916, "CUDA_ERROR_KEY_ROTATION", "an error occurred during the key rotation sequence"},
    {999, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

const ErrorInfo* error_info(CUresult e) {
    for (const auto& i : kErrors)
        if (i.code == e) return &i;
    return nullptr;
}

}  // namespace

// ---- errors -----------------------------------------------------------------------------------------
EXPORT CUresult cuGetErrorString(CUresult error, const char** pStr) {
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    const ErrorInfo* i = error_info(error);
    *pStr = i ? i->text : nullptr;
    return i ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

EXPORT CUresult cuGetErrorName(CUresult error, const char** pStr) {
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    const ErrorInfo* i = error_info(error);
    *pStr = i ? i->name : nullptr;
    return i ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// The simulator's own entry points (not CUDA API).
EXPORT const char* bitune_sim_last_error() {
    thread_local std::string keep;
    keep = sim::last_error();
    return keep.c_str();
}

EXPORT int bitune_sim_is_simulator() { return 1; }

// ---- initialisation and device ------------------------------------------------------------------------
EXPORT CUresult cuInit(unsigned int flags) {
    if (flags != 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuInit: flags must be 0");
    std::lock_guard<std::mutex> g(table_mutex());
    g_initialised = true;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuProfilerStart() { return CUDA_SUCCESS; }
EXPORT CUresult cuProfilerStop() { return CUDA_SUCCESS; }

EXPORT CUresult cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = 13000;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int* count) {
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    if (!g_initialised) return fail(CUDA_ERROR_NOT_INITIALIZED, "cuDeviceGetCount: cuInit was not called");
    *count = 1;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_device(ordinal, "cuDeviceGet")) return r;
    *dev = kDevice;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_device(dev, "cuDeviceGetName")) return r;
    std::snprintf(name, static_cast<size_t>(len), "%s", "NVIDIA H100 (bitune-rt CUDA simulator)");
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_device(dev, "cuDeviceTotalMem")) return r;
    *bytes = sim::capacity();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetAttribute(int* pi, int attrib, CUdevice dev) {
    if (!pi) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_device(dev, "cuDeviceGetAttribute")) return r;
    if (attrib < 1 || attrib >= 148)
        return fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: unknown attribute " + std::to_string(attrib));
    *pi = attribute_value(attrib);
    return CUDA_SUCCESS;
}

static CUresult device_uuid(CUuuid* uuid, CUdevice dev) {
    if (!uuid) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_device(dev, "cuDeviceGetUuid")) return r;
    static const char kUuid[16] = {'b', 'i', 't', 'u', 'n', 'e', '-', 's', 'i', 'm', '-', 'g', 'p', 'u', '0', '0'};
    std::memcpy(uuid->bytes, kUuid, 16);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice dev) { return device_uuid(uuid, dev); }
EXPORT CUresult cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice dev) { return device_uuid(uuid, dev); }

// ---- contexts -----------------------------------------------------------------------------------------
EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* pctx, CUdevice dev) {
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_device(dev, "cuDevicePrimaryCtxRetain")) return r;
    std::lock_guard<std::mutex> g(table_mutex());
    ++g_primary_refs;
    *pctx = &g_primary;
    return CUDA_SUCCESS;
}

// Releasing the last reference does not free anything: allocations, modules and streams stay valid
// (a real driver would destroy them; cudarc drops them before the context anyway).
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    if (CUresult r = check_device(dev, "cuDevicePrimaryCtxRelease")) return r;
    std::lock_guard<std::mutex> g(table_mutex());
    if (g_primary_refs <= 0)
        return fail(CUDA_ERROR_INVALID_CONTEXT, "cuDevicePrimaryCtxRelease: primary context is not retained");
    --g_primary_refs;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) { return cuDevicePrimaryCtxRelease_v2(dev); }

EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) { return check_device(dev, "cuDevicePrimaryCtxReset"); }
EXPORT CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags) {
    if (CUresult r = check_device(dev, "cuDevicePrimaryCtxSetFlags")) return r;
    std::lock_guard<std::mutex> g(table_mutex());
    g_primary.flags = flags;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int* flags, int* active) {
    if (!flags || !active) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_device(dev, "cuDevicePrimaryCtxGetState")) return r;
    std::lock_guard<std::mutex> g(table_mutex());
    *flags = g_primary.flags;
    *active = g_primary_refs > 0;
    return CUDA_SUCCESS;
}

static CUresult ctx_create(CUcontext* pctx, unsigned int flags, CUdevice dev) {
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_device(dev, "cuCtxCreate")) return r;
    auto* c = new SimCtx{false, flags};
    {
        std::lock_guard<std::mutex> g(table_mutex());
        g_contexts.insert(c);
    }
    tl_ctx_stack.push_back(c);   // cuCtxCreate makes the new context current
    *pctx = c;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxCreate_v4(CUcontext* pctx, void* /*ctxCreateParams*/, unsigned int flags, CUdevice dev) {
    return ctx_create(pctx, flags, dev);
}
EXPORT CUresult cuCtxCreate_v2(CUcontext* pctx, unsigned int flags, CUdevice dev) { return ctx_create(pctx, flags, dev); }

EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    std::lock_guard<std::mutex> g(table_mutex());
    if (!ctx || ctx->primary || !g_contexts.count(ctx))
        return fail(CUDA_ERROR_INVALID_CONTEXT, "cuCtxDestroy: " + hex(static_cast<void*>(ctx)) + " is not a live non-primary context");
    g_contexts.erase(ctx);
    for (auto& c : tl_ctx_stack)
        if (c == ctx) c = nullptr;
    delete ctx;
    return CUDA_SUCCESS;
}

static bool live_ctx(CUcontext c) {
    std::lock_guard<std::mutex> g(table_mutex());
    return g_contexts.count(c) > 0;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    if (ctx && !live_ctx(ctx))
        return fail(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent: " + hex(static_cast<void*>(ctx)) + " is not a live context");
    if (tl_ctx_stack.empty()) {
        if (ctx) tl_ctx_stack.push_back(ctx);
    } else if (ctx) {
        tl_ctx_stack.back() = ctx;
    } else {
        tl_ctx_stack.pop_back();
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext* pctx) {
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    *pctx = tl_ctx_stack.empty() ? nullptr : tl_ctx_stack.back();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
    if (!ctx || !live_ctx(ctx)) return fail(CUDA_ERROR_INVALID_CONTEXT, "cuCtxPushCurrent: not a live context");
    tl_ctx_stack.push_back(ctx);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxPopCurrent_v2(CUcontext* pctx) {
    if (tl_ctx_stack.empty()) return fail(CUDA_ERROR_INVALID_CONTEXT, "cuCtxPopCurrent: no current context");
    if (pctx) *pctx = tl_ctx_stack.back();
    tl_ctx_stack.pop_back();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice* dev) {
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    if (tl_ctx_stack.empty() || !tl_ctx_stack.back())
        return fail(CUDA_ERROR_INVALID_CONTEXT, "cuCtxGetDevice: no current context");
    *dev = kDevice;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetFlags(unsigned int flags) {
    if (tl_ctx_stack.empty() || !tl_ctx_stack.back()) return fail(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetFlags: no current context");
    tl_ctx_stack.back()->flags = flags;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCacheConfig(int* config) {
    if (!config) return CUDA_ERROR_INVALID_VALUE;
    *config = 0;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSetCacheConfig(int /*config*/) { return CUDA_SUCCESS; }

// Limits: accepted and remembered, not enforced (stack size, printf FIFO, malloc heap...).
static std::map<int, size_t>& limits() {
    static std::map<int, size_t> m{{0, 1024}, {1, 1 << 20}, {2, 8 << 20}};
    return m;
}
EXPORT CUresult cuCtxGetLimit(size_t* value, int limit) {
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    auto it = limits().find(limit);
    *value = it == limits().end() ? 0 : it->second;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSetLimit(int limit, size_t value) {
    std::lock_guard<std::mutex> g(table_mutex());
    limits()[limit] = value;
    return CUDA_SUCCESS;
}
