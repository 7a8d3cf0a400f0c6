// The libcuda stand-in, part 2 of 4: device memory (through sim::alloc, poisoned so that
// unwritten memory reads as NaN), pinned host memory, memsets and copies. Every device range is
// checked against the live allocations when the operation executes (at capture time too, since the
// real driver validates arguments then); a range outside one allocation fails with
// CUDA_ERROR_INVALID_VALUE and a message naming the call, the address and where it falls.
// Stream-ordered calls run at submission (or are recorded while the stream captures).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "driver_internal.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

using namespace simdrv;

namespace simdrv {

namespace {
// What the process asked the device for: copies each way and allocations, counted when the call
// is accepted (bitune_sim_counters; tests assert that a decode or train step copies nothing to
// the host that was not asked for).
std::atomic<unsigned long long> n_dtoh{0}, n_htod{0}, n_allocs{0};

std::mutex& owned_mutex() {
    static std::mutex m;
    return m;
}
std::set<void*>& owned_set() {
    static std::set<void*> s;
    return s;
}
}  // namespace

void graph_owned_add(void* p) {
    std::lock_guard<std::mutex> g(owned_mutex());
    owned_set().insert(p);
}
bool graph_owned_forget(void* p) {
    std::lock_guard<std::mutex> g(owned_mutex());
    return owned_set().erase(p) > 0;
}
bool graph_owned_contains(void* p) {
    std::lock_guard<std::mutex> g(owned_mutex());
    return owned_set().count(p) > 0;
}

// Memory allocated and freed within a capture is the graph's scratch: it exists from the capture
// until the graph is gone (a real driver keeps the virtual address reserved for the graph's
// lifetime too), and the graph's free of it does nothing, so a use after that free within the
// graph is not detected. Memory allocated but not freed within the capture is handed to the caller
// when the capture ends (see hand_over) and is freed like any other allocation; replaying the graph
// after that free touches freed memory, which the runtime reports.
GraphData::~GraphData() {
    for (void* p : owned) {
        graph_owned_forget(p);
        sim::release(p);
    }
}

void hand_over(GraphData& g) {
    std::vector<void*> keep;
    for (void* p : g.owned) {
        if (g.freed_in_graph.count(p))
            keep.push_back(p);
        else
            graph_owned_forget(p);
    }
    g.owned.swap(keep);
}

}  // namespace simdrv

namespace {

void* ptr(CUdeviceptr d) { return reinterpret_cast<void*>(static_cast<uintptr_t>(d)); }

std::string mib(size_t b) {
    std::ostringstream s;
    s << b << " bytes (" << (static_cast<double>(b) / (1 << 20)) << " MiB)";
    return s.str();
}

CUresult do_alloc(const char* call, CUdeviceptr* dptr, size_t bytes, void** out) {
    if (!dptr) return fail(CUDA_ERROR_INVALID_VALUE, std::string(call) + ": dptr is null");
    if (bytes == 0)
        return fail(CUDA_ERROR_INVALID_VALUE, std::string(call) + ": 0 bytes requested (the driver refuses zero-size allocations)");
    void* p = sim::alloc(bytes, /*poison=*/true);
    if (!p)
        return fail(CUDA_ERROR_OUT_OF_MEMORY,
                    std::string(call) + ": out of simulated device memory allocating " + mib(bytes) + "; " +
                        mib(sim::bytes_in_use()) + " of " + mib(sim::capacity()) +
                        " in use (capacity: BITUNE_CUDA_SIM_MEM)");
    *dptr = static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p));
    if (out) *out = p;
    n_allocs.fetch_add(1, std::memory_order_relaxed);
    return CUDA_SUCCESS;
}

CUresult do_release(const char* call, void* p) {
    if (graph_owned_contains(p))
        return fail(CUDA_ERROR_INVALID_VALUE, std::string(call) + ": " + hex(p) +
                                                  " belongs to a graph (allocated and freed during its capture)");
    if (!sim::release(p))
        return fail(CUDA_ERROR_INVALID_VALUE, std::string(call) + ": " + hex(p) +
                                                  " is not the start of a live device allocation: " +
                                                  sim::describe_address(p));
    return CUDA_SUCCESS;
}

// ---- memset ----------------------------------------------------------------------------------------
CUresult memset_op(const char* call, CUdeviceptr dst, unsigned value, size_t elem, size_t n) {
    void* p = ptr(dst);
    if (elem > 1 && (dst % elem) != 0)
        return fail(CUDA_ERROR_INVALID_VALUE, std::string(call) + ": destination " + hex(p) + " is not " +
                                                  std::to_string(elem) + "-byte aligned");
    if (n > SIZE_MAX / elem) return fail(CUDA_ERROR_INVALID_VALUE, std::string(call) + ": element count overflows");
    if (CUresult r = check_range(call, "destination", p, n * elem)) return r;
    auto* b = static_cast<unsigned char*>(p);
    if (elem == 1) {
        std::memset(b, static_cast<int>(value & 0xFF), n);
    } else if (elem == 2) {
        uint16_t v = static_cast<uint16_t>(value);
        for (size_t i = 0; i < n; ++i) std::memcpy(b + 2 * i, &v, 2);
    } else {
        uint32_t v = value;
        for (size_t i = 0; i < n; ++i) std::memcpy(b + 4 * i, &v, 4);
    }
    return CUDA_SUCCESS;
}

CUresult memset_async(const char* call, CUdeviceptr dst, unsigned value, size_t elem, size_t n, CUstream s) {
    // Argument errors surface at the call, as with the real driver, and again at replay.
    if (CUresult r = check_range(call, "destination", ptr(dst), n * elem)) return r;
    std::string what = std::string(call) + " of " + std::to_string(n * elem) + " bytes at " + hex(dst);
    return submit(s, call, [=] { return memset_op(call, dst, value, elem, n); }, what);
}

CUresult memset_sync(const char* call, CUdeviceptr dst, unsigned value, size_t elem, size_t n) {
    if (CUresult r = forbid_during_capture(call)) return r;
    std::lock_guard<std::recursive_mutex> g(exec_mutex());
    return memset_op(call, dst, value, elem, n);
}

// ---- copies ----------------------------------------------------------------------------------------
enum Kind { HtoD, DtoH, DtoD, Any };

void count_copy(Kind k) {
    if (k == DtoH) n_dtoh.fetch_add(1, std::memory_order_relaxed);
    if (k == HtoD) n_htod.fetch_add(1, std::memory_order_relaxed);
}

// For cuMemcpy/cuMemcpyAsync (unified addressing): a pointer inside a live allocation is device
// memory and must fit it; anything else is taken as host memory.
CUresult check_unified(const char* call, const char* role, const void* p, size_t n) {
    if (n == 0 || !sim::in_allocation(p, 1)) return CUDA_SUCCESS;
    return check_range(call, role, p, n);
}

CUresult copy_check(const char* call, Kind k, void* dst, const void* src, size_t n) {
    if (n == 0) return CUDA_SUCCESS;
    if (!dst || !src) return fail(CUDA_ERROR_INVALID_VALUE, std::string(call) + ": null pointer");
    if (k == HtoD || k == DtoD)
        if (CUresult r = check_range(call, "destination", dst, n)) return r;
    if (k == DtoH || k == DtoD)
        if (CUresult r = check_range(call, "source", src, n)) return r;
    if (k == Any) {
        if (CUresult r = check_unified(call, "destination", dst, n)) return r;
        if (CUresult r = check_unified(call, "source", src, n)) return r;
    }
    return CUDA_SUCCESS;
}

CUresult copy_op(const char* call, Kind k, void* dst, const void* src, size_t n) {
    if (CUresult r = copy_check(call, k, dst, src, n)) return r;
    if (n) std::memmove(dst, src, n);
    return CUDA_SUCCESS;
}

CUresult copy_async(const char* call, Kind k, void* dst, const void* src, size_t n, CUstream s) {
    if (CUresult r = copy_check(call, k, dst, src, n)) return r;
    count_copy(k);
    std::string what = std::string(call) + " of " + std::to_string(n) + " bytes " + hex(src) + " -> " + hex(dst);
    return submit(s, call, [=] { return copy_op(call, k, dst, src, n); }, what);
}

CUresult copy_sync(const char* call, Kind k, void* dst, const void* src, size_t n) {
    if (CUresult r = forbid_during_capture(call)) return r;
    std::lock_guard<std::recursive_mutex> g(exec_mutex());
    CUresult r = copy_op(call, k, dst, src, n);
    if (r == CUDA_SUCCESS) count_copy(k);
    return r;
}

std::mutex& host_mutex() {
    static std::mutex m;
    return m;
}
std::set<void*>& host_allocs() {
    static std::set<void*> s;
    return s;
}

}  // namespace

// ---- allocation ----------------------------------------------------------------------------------
EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* dptr, size_t bytesize) {
    if (CUresult r = forbid_during_capture("cuMemAlloc")) return r;
    return do_alloc("cuMemAlloc", dptr, bytesize, nullptr);
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytesize, CUstream hStream) {
    std::shared_ptr<Capture> cap;
    {
        std::lock_guard<std::mutex> g(table_mutex());
        if (CUresult r = stream_capture(hStream, "cuMemAllocAsync", &cap)) return r;
    }
    void* p = nullptr;
    if (CUresult r = do_alloc("cuMemAllocAsync", dptr, bytesize, &p)) return r;
    if (cap) {
        // An allocation node: the memory exists from now until the graph is destroyed.
        std::lock_guard<std::mutex> g(table_mutex());
        cap->graph->owned.push_back(p);
        cap->graph->nodes.push_back([] { return CUDA_SUCCESS; });
        cap->graph->what.push_back("cuMemAllocAsync of " + std::to_string(bytesize) + " bytes at " + hex(p));
        graph_owned_add(p);
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    if (dptr == 0) return CUDA_SUCCESS;
    if (CUresult r = forbid_during_capture("cuMemFree")) return r;
    std::lock_guard<std::recursive_mutex> g(exec_mutex());
    return do_release("cuMemFree", ptr(dptr));
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
    void* p = ptr(dptr);
    if (dptr == 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemFreeAsync: null pointer");
    {
        // A free node for the capture's own allocation: nothing to do at replay (see GraphData).
        std::lock_guard<std::mutex> g(table_mutex());
        std::shared_ptr<Capture> cap;
        if (CUresult r = stream_capture(hStream, "cuMemFreeAsync", &cap)) return r;
        if (cap && !cap->invalidated) {
            auto& owned = cap->graph->owned;
            if (std::find(owned.begin(), owned.end(), p) != owned.end()) {
                if (!cap->graph->freed_in_graph.insert(p).second)
                    return fail(CUDA_ERROR_INVALID_VALUE, "cuMemFreeAsync: " + hex(p) + " was already freed in this capture");
                cap->graph->nodes.push_back([] { return CUDA_SUCCESS; });
                cap->graph->what.push_back("cuMemFreeAsync of graph allocation " + hex(p));
                return CUDA_SUCCESS;
            }
        }
    }
    if (!graph_owned_contains(p) && !sim::in_allocation(p, 1))
        return fail(CUDA_ERROR_INVALID_VALUE, "cuMemFreeAsync: " + hex(p) +
                                                  " is not a live device allocation: " + sim::describe_address(p));
    return submit(hStream, "cuMemFreeAsync", [p] { return do_release("cuMemFreeAsync", p); },
                  "cuMemFreeAsync of " + hex(p));
}

EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    if (!free_bytes || !total) return CUDA_ERROR_INVALID_VALUE;
    size_t cap = sim::capacity(), used = sim::bytes_in_use();
    *total = cap;
    *free_bytes = used < cap ? cap - used : 0;
    return CUDA_SUCCESS;
}

// Pinned host memory is plain page-aligned host memory here.
EXPORT CUresult cuMemHostAlloc(void** pp, size_t bytesize, unsigned int /*flags*/) {
    if (!pp || bytesize == 0) return fail(CUDA_ERROR_INVALID_VALUE, "cuMemHostAlloc: null pointer or 0 bytes");
    void* p = nullptr;
    if (posix_memalign(&p, 4096, bytesize) != 0)
        return fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemHostAlloc: host refused " + mib(bytesize));
    std::lock_guard<std::mutex> g(host_mutex());
    host_allocs().insert(p);
    *pp = p;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAllocHost_v2(void** pp, size_t bytesize) { return cuMemHostAlloc(pp, bytesize, 0); }

EXPORT CUresult cuMemFreeHost(void* p) {
    std::lock_guard<std::mutex> g(host_mutex());
    if (!host_allocs().erase(p))
        return fail(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost: " + hex(p) + " was not allocated by cuMemHostAlloc");
    std::free(p);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemHostRegister_v2(void* p, size_t bytesize, unsigned int /*flags*/) {
    if (!p || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemHostUnregister(void* p) { return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }

// ---- memset ------------------------------------------------------------------------------------------
EXPORT CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return memset_sync("cuMemsetD8", d, v, 1, n); }
EXPORT CUresult cuMemsetD16_v2(CUdeviceptr d, unsigned short v, size_t n) { return memset_sync("cuMemsetD16", d, v, 2, n); }
EXPORT CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned int v, size_t n) { return memset_sync("cuMemsetD32", d, v, 4, n); }
EXPORT CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, CUstream s) {
    return memset_async("cuMemsetD8Async", d, v, 1, n, s);
}
EXPORT CUresult cuMemsetD16Async(CUdeviceptr d, unsigned short v, size_t n, CUstream s) {
    return memset_async("cuMemsetD16Async", d, v, 2, n, s);
}
EXPORT CUresult cuMemsetD32Async(CUdeviceptr d, unsigned int v, size_t n, CUstream s) {
    return memset_async("cuMemsetD32Async", d, v, 4, n, s);
}

// ---- copies ------------------------------------------------------------------------------------------
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    return copy_sync("cuMemcpyHtoD", HtoD, ptr(dst), src, n);
}
EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    return copy_sync("cuMemcpyDtoH", DtoH, dst, ptr(src), n);
}
EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    return copy_sync("cuMemcpyDtoD", DtoD, ptr(dst), ptr(src), n);
}
EXPORT CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    return copy_sync("cuMemcpy", Any, ptr(dst), ptr(src), n);
}
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    return copy_async("cuMemcpyHtoDAsync", HtoD, ptr(dst), src, n, s);
}
EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy_async("cuMemcpyDtoHAsync", DtoH, dst, ptr(src), n, s);
}
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy_async("cuMemcpyDtoDAsync", DtoD, ptr(dst), ptr(src), n, s);
}
EXPORT CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    return copy_async("cuMemcpyAsync", Any, ptr(dst), ptr(src), n, s);
}
// One device: peer copies are device-to-device copies.
EXPORT CUresult cuMemcpyPeerAsync(CUdeviceptr dst, CUcontext, CUdeviceptr src, CUcontext, size_t n, CUstream s) {
    return copy_async("cuMemcpyPeerAsync", DtoD, ptr(dst), ptr(src), n, s);
}
EXPORT CUresult cuMemcpyPeer(CUdeviceptr dst, CUcontext, CUdeviceptr src, CUcontext, size_t n) {
    return copy_sync("cuMemcpyPeer", DtoD, ptr(dst), ptr(src), n);
}

// Copies device-to-host and host-to-device, and device allocations, since the process started
// (any pointer may be null).
EXPORT void bitune_sim_counters(unsigned long long* dtoh_copies, unsigned long long* htod_copies,
                                unsigned long long* allocs) {
    if (dtoh_copies) *dtoh_copies = n_dtoh.load();
    if (htod_copies) *htod_copies = n_htod.load();
    if (allocs) *allocs = n_allocs.load();
}
