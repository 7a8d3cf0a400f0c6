// Internals shared by the libcuda stand-in's source files (driver.cpp, driver_mem.cpp,
// driver_stream.cpp, driver_exec.cpp) and, through the extern "C" hooks at the end, by the libcublas stand-in.
// The CUDA types below mirror CUDA 13.0's cuda.h as cudarc 0.19 (feature cuda-13000) binds them;
// no CUDA header is included anywhere in the simulator.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "runtime.h"

// ---- ABI types ------------------------------------------------------------------------------------
typedef int CUresult;               // enum cudaError_enum
typedef int CUdevice;               // CUdevice_v1
typedef unsigned long long CUdeviceptr;
typedef struct SimCtx* CUcontext;
typedef struct SimModule* CUmodule;
typedef struct SimFunc* CUfunction;
typedef struct SimStream* CUstream;
typedef struct SimEvent* CUevent;
typedef struct SimGraph* CUgraph;
typedef struct SimGraphExec* CUgraphExec;
typedef void (*CUhostFn)(void* userData);
struct CUuuid {
    char bytes[16];
};

// CUresult codes used by the stand-in (values from cudaError_enum).
enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_FILE_NOT_FOUND = 301,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_MERGE = 902,
    CUDA_ERROR_STREAM_CAPTURE_UNMATCHED = 903,
    CUDA_ERROR_STREAM_CAPTURE_ISOLATION = 905,
    CUDA_ERROR_CAPTURED_EVENT = 907,
    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908,
    CUDA_ERROR_UNKNOWN = 999,
};

// ---- driver state ---------------------------------------------------------------------------------
namespace simdrv {
struct Capture;
}

struct SimStream {
    unsigned flags = 0;
    int priority = 0;
    std::shared_ptr<simdrv::Capture> capture;   // non-null while capturing (or joined to a capture)
};

namespace simdrv {

using Clock = std::chrono::steady_clock;

// One recorded operation of a graph: runs it (a kernel launch with its copied parameters, a
// copy, a memset, a host function, a cuBLAS call). Returns a CUresult; on failure the message has
// been given to sim::set_last_error.
using Op = std::function<CUresult()>;

struct GraphData;

// An ongoing stream capture. Several streams may capture into it (fork/join through events).
struct Capture {
    std::shared_ptr<GraphData> graph;
    bool invalidated = false;
    bool active = true;
    int mode = 0;                  // CUstreamCaptureMode: 0 global, 1 thread-local, 2 relaxed
    uint64_t id = 0;
    CUstream origin = nullptr;     // the stream that began it (only it may end it)
    std::thread::id thread;        // the thread that began it
};

struct GraphData {
    std::vector<Op> nodes;
    std::vector<std::string> what;   // description of each node (for debugging)
    // Device memory allocated by cuMemAllocAsync during the capture (see driver_mem.cpp). When the
    // capture ends, what the capture also freed stays here and lives as long as the graph (any
    // exec of it); the rest is handed to the caller, who frees it like any allocation.
    std::vector<void*> owned;
    std::set<void*> freed_in_graph;
    ~GraphData();
};

// Table lock: guards every handle table and stream/event/capture state. Never held while work runs.
std::mutex& table_mutex();
// Device lock: serialises all executing work (kernels, copies, memsets, cuBLAS, host functions)
// across threads. Recursive so that a host function may call back into the driver.
std::recursive_mutex& exec_mutex();

// The stream object behind a handle (null, CU_STREAM_LEGACY (0x1) and CU_STREAM_PER_THREAD (0x2)
// are the default stream), or nullptr for an unknown handle. Caller holds table_mutex().
SimStream* stream_of(CUstream h);
bool is_default_stream(CUstream h);

// Validates the handle (failing with CUDA_ERROR_INVALID_HANDLE naming `call`) and gives the
// stream's capture, null when it is not capturing. Caller holds table_mutex().
CUresult stream_capture(CUstream h, const char* call, std::shared_ptr<Capture>* cap);

// Runs `op` now (under the device lock) unless `stream` is capturing, in which case it is appended
// to the capture's graph. `what` names the operation for error messages. Checks the handle.
CUresult submit(CUstream stream, const char* call, Op op, std::string what);

// Sets the last error (printed by the runtime) and returns `code`.
CUresult fail(CUresult code, const std::string& msg);

std::string hex(const void* p);
std::string hex(CUdeviceptr p);

// Ensures [p, p+n) lies in one live allocation; else fails with a message naming `call`, `role`
// ("destination", "source"...) and sim::describe_address. n == 0 always passes.
CUresult check_range(const char* call, const char* role, const void* p, size_t n);

// Allocations made by cuMemAllocAsync while capturing belong to the graph (see driver_mem.cpp).
// They take their own leaf lock (callable with table_mutex() held).
void graph_owned_add(void* p);
bool graph_owned_forget(void* p);
bool graph_owned_contains(void* p);
// At the end of a capture: hands the allocations the capture did not free to the caller.
void hand_over(GraphData& g);

// Refuses a call that a real driver prohibits while a global (any thread) or thread-local (this
// thread) capture is active, invalidating those captures: returns CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED.
CUresult forbid_during_capture(const char* call);

}  // namespace simdrv

// ---- hooks for the cuBLAS stand-in (exported from libcuda stand-in) ----------------------------
extern "C" {
// Runs run(arg) on `stream` now, or records it into the stream's capture (then run() is called at
// each graph launch). drop(arg) is called once the operation can no longer run (immediately after
// an immediate run; when the graph is destroyed for a recorded one). `what` is copied.
// Returns a CUresult.
int bitune_sim_submit(void* stream, int (*run)(void* arg), void* arg, void (*drop)(void* arg),
                      const char* what);
}
