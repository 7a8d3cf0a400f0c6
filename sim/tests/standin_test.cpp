// Smoke test of the libcuda / libcublas stand-ins (sim/driver*.cpp, sim/cublas.cpp) on the real
// simulator runtime: calls the C entry points the way cudarc does, with kernels registered here by
// hand (a fake fatbin whose size and hash identify module "testmod"). Built and run by
// sim/tests/run_standin_test.sh. No CUDA header: the prototypes below mirror CUDA 13.0's.
#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../runtime.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void* CUcontext;
typedef void* CUmodule;
typedef void* CUfunction;
typedef void* CUstream;
typedef void* CUevent;
typedef void* CUgraph;
typedef void* CUgraphExec;
typedef void* cublasHandle_t;

extern "C" {
CUresult cuInit(unsigned);
CUresult cuDriverGetVersion(int*);
CUresult cuDeviceGetCount(int*);
CUresult cuDeviceGet(int*, int);
CUresult cuDeviceGetName(char*, int, int);
CUresult cuDeviceTotalMem_v2(size_t*, int);
CUresult cuDeviceGetAttribute(int*, int, int);
CUresult cuDeviceGetUuid_v2(void*, int);
CUresult cuDevicePrimaryCtxRetain(CUcontext*, int);
CUresult cuDevicePrimaryCtxRelease_v2(int);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuCtxGetCurrent(CUcontext*);
CUresult cuCtxGetDevice(int*);
CUresult cuCtxSynchronize();
CUresult cuGetErrorName(CUresult, const char**);
CUresult cuGetErrorString(CUresult, const char**);
CUresult cuMemAlloc_v2(CUdeviceptr*, size_t);
CUresult cuMemAllocAsync(CUdeviceptr*, size_t, CUstream);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
CUresult cuMemGetInfo_v2(size_t*, size_t*);
CUresult cuMemsetD8Async(CUdeviceptr, unsigned char, size_t, CUstream);
CUresult cuMemsetD16Async(CUdeviceptr, unsigned short, size_t, CUstream);
CUresult cuMemsetD32Async(CUdeviceptr, unsigned, size_t, CUstream);
CUresult cuMemsetD32_v2(CUdeviceptr, unsigned, size_t);
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr, const void*, size_t, CUstream);
CUresult cuMemcpyDtoHAsync_v2(void*, CUdeviceptr, size_t, CUstream);
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr, CUdeviceptr, size_t, CUstream);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void*, size_t);
CUresult cuMemHostAlloc(void**, size_t, unsigned);
CUresult cuMemFreeHost(void*);
CUresult cuStreamCreate(CUstream*, unsigned);
CUresult cuStreamDestroy_v2(CUstream);
CUresult cuStreamSynchronize(CUstream);
CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned);
CUresult cuEventCreate(CUevent*, unsigned);
CUresult cuEventRecord(CUevent, CUstream);
CUresult cuEventQuery(CUevent);
CUresult cuEventSynchronize(CUevent);
CUresult cuEventElapsedTime_v2(float*, CUevent, CUevent);
CUresult cuEventDestroy_v2(CUevent);
CUresult cuModuleLoadData(CUmodule*, const void*);
CUresult cuModuleGetFunction(CUfunction*, CUmodule, const char*);
CUresult cuModuleUnload(CUmodule);
CUresult cuFuncGetAttribute(int*, int, CUfunction);
CUresult cuFuncSetAttribute(CUfunction, int, int);
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int*, CUfunction, int, size_t);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void**, void**);
CUresult cuStreamBeginCapture_v2(CUstream, int);
CUresult cuStreamEndCapture(CUstream, CUgraph*);
CUresult cuStreamIsCapturing(CUstream, int*);
CUresult cuGraphInstantiateWithFlags(CUgraphExec*, CUgraph, unsigned long long);
CUresult cuGraphLaunch(CUgraphExec, CUstream);
CUresult cuGraphExecDestroy(CUgraphExec);
CUresult cuGraphDestroy(CUgraph);
const char* bitune_sim_last_error();
int bitune_sim_is_simulator();

int cublasCreate_v2(cublasHandle_t*);
int cublasDestroy_v2(cublasHandle_t);
int cublasSetStream_v2(cublasHandle_t, CUstream);
int cublasSetMathMode(cublasHandle_t, int);
int cublasSgemm_v2(cublasHandle_t, int, int, int, int, int, const float*, const float*, int, const float*, int, const float*,
                   float*, int);
int cublasSgemmStridedBatched(cublasHandle_t, int, int, int, int, int, const float*, const float*, int, long long,
                              const float*, int, long long, const float*, float*, int, long long, int);
int cublasGemmEx(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                 const void*, void*, int, int, int, int);
int cublasGemmStridedBatchedEx(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int, long long,
                               const void*, int, int, long long, const void*, void*, int, int, long long, int, int, int);
const char* cublasGetStatusName(int);
int cublasSgemv_v2(cublasHandle_t, int, int, int, const float*, const float*, int, const float*, int, const float*, float*, int);
}

// ---- test harness -----------------------------------------------------------------------------------
static int g_failures = 0, g_checks = 0;
#define CHECK(cond)                                                                  \
    do {                                                                             \
        ++g_checks;                                                                  \
        if (!(cond)) {                                                               \
            ++g_failures;                                                            \
            std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
        }                                                                            \
    } while (0)
#define CHECK_EQ(a, b)                                                                                         \
    do {                                                                                                       \
        ++g_checks;                                                                                            \
        long long va_ = (long long)(a), vb_ = (long long)(b);                                                  \
        if (va_ != vb_) {                                                                                      \
            ++g_failures;                                                                                      \
            std::fprintf(stderr, "FAILED %s:%d: %s == %s (%lld vs %lld)\n", __FILE__, __LINE__, #a, #b, va_, vb_); \
        }                                                                                                      \
    } while (0)
static bool last_error_has(const char* s) { return std::strstr(bitune_sim_last_error(), s) != nullptr; }
#define CHECK_MSG(s)                                                                                              \
    do {                                                                                                          \
        ++g_checks;                                                                                               \
        if (!last_error_has(s)) {                                                                                 \
            ++g_failures;                                                                                         \
            std::fprintf(stderr, "FAILED %s:%d: last error lacks \"%s\": %s\n", __FILE__, __LINE__, s, bitune_sim_last_error()); \
        }                                                                                                         \
    } while (0)

// ---- kernels registered by hand ----------------------------------------------------------------------
static unsigned gtid() {
    const sim::Block& b = *sim::tl_block;
    return b.idx.x * b.dim.x + sim::tl_fiber->tid.x;
}
// fill(float* p, float v, u64 n): p[i] = v + i
static void k_fill(float* p, float v, unsigned long long n) {
    for (unsigned long long i = gtid(); i < n; i += (unsigned long long)sim::tl_block->dim.x * sim::tl_block->grid.x)
        p[i] = v + float(i);
}
static void inv_fill(void* fn, void** a) {
    reinterpret_cast<void (*)(float*, float, unsigned long long)>(fn)(*static_cast<float**>(a[0]), *static_cast<float*>(a[1]),
                                                                        *static_cast<unsigned long long*>(a[2]));
}
// oob(float* p, int i): p[i] = 1 (no bounds check: planted fault)
static void k_oob(float* p, int i) {
    if (gtid() == 0) p[i] = 1.0f;
}
static void inv_oob(void* fn, void** a) {
    reinterpret_cast<void (*)(float*, int)>(fn)(*static_cast<float**>(a[0]), *static_cast<int*>(a[1]));
}

static unsigned char g_image[48];
static const unsigned k_fill_sizes[] = {8, 4, 8};
static const unsigned k_oob_sizes[] = {8, 4};

static void register_test_module() {
    std::memset(g_image, 0, sizeof g_image);
    uint32_t magic = 0xBA55ED50u;
    uint16_t version = 1, header = 16;
    uint64_t payload = sizeof g_image - 16;
    std::memcpy(g_image, &magic, 4);
    std::memcpy(g_image + 4, &version, 2);
    std::memcpy(g_image + 6, &header, 2);
    std::memcpy(g_image + 8, &payload, 8);
    for (size_t i = 16; i < sizeof g_image; ++i) g_image[i] = (unsigned char)(i * 7);
    sim::register_module(sim::Module{"testmod", sizeof g_image, sim::fnv1a(g_image, sizeof g_image)});
    sim::register_kernel(sim::Kernel{"testmod", "fill", (void*)&k_fill, inv_fill, 0, 3, k_fill_sizes});
    sim::register_kernel(sim::Kernel{"testmod", "fill_bounded", (void*)&k_fill, inv_fill, 128, 3, k_fill_sizes});
    sim::register_kernel(sim::Kernel{"testmod", "oob", (void*)&k_oob, inv_oob, 0, 2, k_oob_sizes});
}

static CUdeviceptr dalloc(size_t bytes) {
    CUdeviceptr p = 0;
    CHECK_EQ(cuMemAllocAsync(&p, bytes, nullptr), 0);
    return p;
}
static std::vector<float> download(CUdeviceptr p, size_t n) {
    std::vector<float> v(n);
    CHECK_EQ(cuMemcpyDtoHAsync_v2(v.data(), p, n * 4, nullptr), 0);
    return v;
}

// ---- device, context, errors ------------------------------------------------------------------------
static void test_device() {
    int v = 0, n = 0, dev = -1;
    CHECK_EQ(bitune_sim_is_simulator(), 1);
    CHECK_EQ(cuDeviceGetCount(&n), 3);   // before cuInit: CUDA_ERROR_NOT_INITIALIZED
    CHECK_EQ(cuInit(0), 0);
    CHECK_EQ(cuDriverGetVersion(&v), 0);
    CHECK_EQ(v, 13000);
    CHECK_EQ(cuDeviceGetCount(&n), 0);
    CHECK_EQ(n, 1);
    CHECK_EQ(cuDeviceGet(&dev, 0), 0);
    CHECK_EQ(dev, 0);
    CHECK_EQ(cuDeviceGet(&dev, 1), 101);
    char name[128];
    CHECK_EQ(cuDeviceGetName(name, sizeof name, 0), 0);
    CHECK(std::strstr(name, "simulator") != nullptr);
    size_t total = 0;
    CHECK_EQ(cuDeviceTotalMem_v2(&total, 0), 0);
    CHECK_EQ(total, sim::capacity());
    struct {
        int attr, want;
    } table[] = {{75, 9}, {76, 0}, {16, 132}, {10, 32}, {1, 1024}, {2, 1024}, {4, 64}, {5, 2147483647}, {6, 65535},
                 {8, 49152}, {97, 232448}, {12, 65536}, {115, 1}, {39, 2048}, {41, 1}};
    for (auto& t : table) {
        int got = -7;
        CHECK_EQ(cuDeviceGetAttribute(&got, t.attr, 0), 0);
        if (got != t.want) std::fprintf(stderr, "attribute %d: %d, want %d\n", t.attr, got, t.want);
        CHECK_EQ(got, t.want);
    }
    int got = 0;
    CHECK_EQ(cuDeviceGetAttribute(&got, 9999, 0), 1);
    char uuid[16];
    CHECK_EQ(cuDeviceGetUuid_v2(uuid, 0), 0);

    CUcontext ctx = nullptr, cur = nullptr;
    CHECK_EQ(cuDevicePrimaryCtxRetain(&ctx, 0), 0);
    CHECK(ctx != nullptr);
    CHECK_EQ(cuCtxGetCurrent(&cur), 0);
    CHECK(cur == nullptr);
    CHECK_EQ(cuCtxSetCurrent(ctx), 0);
    CHECK_EQ(cuCtxGetCurrent(&cur), 0);
    CHECK(cur == ctx);
    CHECK_EQ(cuCtxGetDevice(&dev), 0);
    CHECK_EQ(cuCtxSynchronize(), 0);

    const char* s = nullptr;
    CHECK_EQ(cuGetErrorName(1, &s), 0);
    CHECK(s && std::strcmp(s, "CUDA_ERROR_INVALID_VALUE") == 0);
    CHECK_EQ(cuGetErrorString(1, &s), 0);
    CHECK(s && std::strcmp(s, "invalid argument") == 0);
    CHECK_EQ(cuGetErrorName(719, &s), 0);
    CHECK(s && std::strcmp(s, "CUDA_ERROR_LAUNCH_FAILED") == 0);
    CHECK_EQ(cuGetErrorString(719, &s), 0);
    CHECK(s && std::strcmp(s, "unspecified launch failure") == 0);
    for (int code : {0, 2, 200, 400, 500, 600, 700, 701, 801, 900, 901, 905, 907, 999}) {
        s = nullptr;
        CHECK_EQ(cuGetErrorName(code, &s), 0);
        CHECK(s != nullptr);
    }
    CHECK_EQ(cuGetErrorString(12345, &s), 1);
}

// ---- memory ---------------------------------------------------------------------------------------------
static void test_memory() {
    size_t free0 = 0, total = 0;
    CHECK_EQ(cuMemGetInfo_v2(&free0, &total), 0);
    CHECK_EQ(total, sim::capacity());
    const size_t n = 1024;
    CUdeviceptr a = dalloc(n * 4), b = dalloc(n * 4);
    size_t free1 = 0;
    CHECK_EQ(cuMemGetInfo_v2(&free1, &total), 0);
    CHECK(free1 <= free0 - 2 * n * 4);
    auto v = download(a, n);
    CHECK(std::isnan(v[0]) && std::isnan(v[n - 1]));   // poisoned
    CHECK_EQ(cuMemsetD8Async(a, 0, n * 4, nullptr), 0);
    v = download(a, n);
    CHECK(v[0] == 0.0f && v[n - 1] == 0.0f);
    std::vector<float> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = float(i) * 0.5f;
    CHECK_EQ(cuMemcpyHtoDAsync_v2(a, h.data(), n * 4, nullptr), 0);
    CHECK_EQ(cuMemcpyDtoDAsync_v2(b, a, n * 4, nullptr), 0);
    v = download(b, n);
    CHECK(v == h);
    float one = 1.0f;
    unsigned bits;
    std::memcpy(&bits, &one, 4);
    CHECK_EQ(cuMemsetD32Async(b + 8, bits, 4, nullptr), 0);
    v = download(b, n);
    CHECK(v[1] == h[1] && v[2] == 1.0f && v[5] == 1.0f && v[6] == h[6]);
    CHECK_EQ(cuMemsetD16Async(b, 0x3C00, 2, nullptr), 0);   // two f16 ones: bits 0x3C003C00
    v = download(b, 1);
    uint32_t w;
    std::memcpy(&w, v.data(), 4);
    CHECK_EQ(w, 0x3C003C00u);
    CHECK_EQ(cuMemsetD32_v2(b, bits, n), 0);

    // Refusals, each with a message.
    CHECK_EQ(cuMemcpyHtoDAsync_v2(a, h.data(), n * 4 + 4, nullptr), 1);
    CHECK_MSG("cuMemcpyHtoDAsync");
    CHECK_MSG("past the end");
    CHECK_EQ(cuMemcpyDtoHAsync_v2(h.data(), a + 4, n * 4, nullptr), 1);
    CHECK_MSG("source");
    CHECK_EQ(cuMemsetD32Async(a + 2, 0, 1, nullptr), 1);
    CHECK_MSG("aligned");
    CHECK_EQ(cuMemsetD8Async(a + n * 4, 0, 1, nullptr), 1);
    std::vector<float> host(16);
    CHECK_EQ(cuMemcpyDtoDAsync_v2(a, (CUdeviceptr)(uintptr_t)host.data(), 16, nullptr), 1);
    CHECK_MSG("no live allocation");
    CHECK_EQ(cuMemcpyHtoDAsync_v2(a, h.data(), 0, nullptr), 0);   // empty copies are fine
    CUdeviceptr z = 0;
    CHECK_EQ(cuMemAllocAsync(&z, 0, nullptr), 1);
    CHECK_EQ(cuMemAlloc_v2(&z, 0), 1);
    CHECK_EQ(cuMemAllocAsync(&z, sim::capacity() + 4096, nullptr), 2);
    CHECK_MSG("bytes");
    CHECK_EQ(cuMemFreeAsync(a, nullptr), 0);
    CHECK_EQ(cuMemFreeAsync(a, nullptr), 1);   // double free
    CHECK_EQ(cuMemcpyHtoDAsync_v2(a, h.data(), 4, nullptr), 1);   // use after free
    CHECK_EQ(cuMemFree_v2(b), 0);
    CHECK_EQ(cuMemAlloc_v2(&z, 64), 0);
    CHECK_EQ(cuMemFree_v2(z + 4), 1);
    CHECK_EQ(cuMemFree_v2(z), 0);
    void* pinned = nullptr;
    CHECK_EQ(cuMemHostAlloc(&pinned, 4096, 0), 0);
    CHECK_EQ(cuMemFreeHost(pinned), 0);
    CHECK_EQ(cuMemFreeHost(pinned), 1);
}

// ---- streams, events ----------------------------------------------------------------------------------
static void test_streams() {
    CUstream s = nullptr;
    CHECK_EQ(cuStreamCreate(&s, 1), 0);
    CUevent e0, e1, nt;
    CHECK_EQ(cuEventCreate(&e0, 0), 0);
    CHECK_EQ(cuEventCreate(&e1, 0), 0);
    CHECK_EQ(cuEventCreate(&nt, 2), 0);
    float ms = -1;
    CHECK_EQ(cuEventElapsedTime_v2(&ms, e0, e1), 400);   // not recorded
    CHECK_EQ(cuEventRecord(e0, s), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    CHECK_EQ(cuEventRecord(e1, s), 0);
    CHECK_EQ(cuEventQuery(e1), 0);
    CHECK_EQ(cuEventSynchronize(e1), 0);
    CHECK_EQ(cuEventElapsedTime_v2(&ms, e0, e1), 0);
    CHECK(ms >= 4.0f && ms < 1000.0f);
    CHECK_EQ(cuEventRecord(nt, s), 0);
    CHECK_EQ(cuEventElapsedTime_v2(&ms, e0, nt), 400);   // DISABLE_TIMING
    CHECK_EQ(cuStreamWaitEvent(nullptr, e1, 0), 0);
    CHECK_EQ(cuStreamSynchronize(s), 0);
    CHECK_EQ(cuStreamSynchronize(nullptr), 0);
    CHECK_EQ(cuEventDestroy_v2(e0), 0);
    CHECK_EQ(cuEventDestroy_v2(e1), 0);
    CHECK_EQ(cuEventDestroy_v2(nt), 0);
    CHECK_EQ(cuStreamDestroy_v2(s), 0);
    CHECK_EQ(cuStreamSynchronize(s), 400);
    CHECK_EQ(cuStreamDestroy_v2(nullptr), 400);
}

// ---- modules, launches ----------------------------------------------------------------------------------
static CUmodule g_mod;
static CUfunction g_fill, g_bounded, g_oob;

static void test_modules_and_launches() {
    CHECK_EQ(cuModuleLoadData(&g_mod, g_image), 0);
    unsigned char junk[64] = {1, 2, 3};
    CUmodule bad = nullptr;
    CHECK_EQ(cuModuleLoadData(&bad, junk), 200);
    CHECK_MSG("not a fatbin");
    CHECK_EQ(cuModuleGetFunction(&g_fill, g_mod, "fill"), 0);
    CUfunction again = nullptr;
    CHECK_EQ(cuModuleGetFunction(&again, g_mod, "fill"), 0);
    CHECK(again == g_fill);
    CHECK_EQ(cuModuleGetFunction(&g_bounded, g_mod, "fill_bounded"), 0);
    CHECK_EQ(cuModuleGetFunction(&g_oob, g_mod, "oob"), 0);
    CUfunction none = nullptr;
    CHECK_EQ(cuModuleGetFunction(&none, g_mod, "nope"), 500);
    CHECK_MSG("kernel nope is not in module testmod (kernels/testmod.cu)");

    int v = 0;
    CHECK_EQ(cuFuncGetAttribute(&v, 0, g_fill), 0);
    CHECK_EQ(v, 1024);
    CHECK_EQ(cuFuncGetAttribute(&v, 0, g_bounded), 0);
    CHECK_EQ(v, 128);
    CHECK_EQ(cuFuncGetAttribute(&v, 8, g_fill), 0);
    CHECK_EQ(v, 49152);
    CHECK_EQ(cuFuncGetAttribute(&v, 4, g_fill), 0);
    CHECK_EQ(v, 32);
    CHECK_EQ(cuOccupancyMaxActiveBlocksPerMultiprocessor(&v, g_fill, 256, 0), 0);
    CHECK(v >= 1 && v <= 8);

    const unsigned long long n = 1000;
    CUdeviceptr buf = dalloc(n * 4);
    float base = 3.0f;
    void* params[] = {&buf, &base, (void*)&n};
    CHECK_EQ(cuLaunchKernel(g_fill, 4, 1, 1, 128, 1, 1, 0, nullptr, params, nullptr), 0);
    auto out = download(buf, n);
    bool ok = true;
    for (unsigned long long i = 0; i < n; ++i) ok = ok && out[i] == 3.0f + float(i);
    CHECK(ok);

    // Launch checks.
    CHECK_EQ(cuLaunchKernel(g_fill, 1, 1, 1, 2048, 1, 1, 0, nullptr, params, nullptr), 1);
    CHECK_MSG("fill");
    CHECK_MSG("1024");
    CHECK_EQ(cuLaunchKernel(g_fill, 1, 1, 1, 1, 1, 65, 0, nullptr, params, nullptr), 1);
    CHECK_MSG("blockDim.z 65");
    CHECK_EQ(cuLaunchKernel(g_fill, 0, 1, 1, 32, 1, 1, 0, nullptr, params, nullptr), 1);
    CHECK_EQ(cuLaunchKernel(g_fill, 1, 65536, 1, 32, 1, 1, 0, nullptr, params, nullptr), 1);
    CHECK_EQ(cuLaunchKernel(g_bounded, 1, 1, 1, 256, 1, 1, 0, nullptr, params, nullptr), 701);
    CHECK_MSG("__launch_bounds__ of 128");
    CHECK_EQ(cuLaunchKernel(g_bounded, 8, 1, 1, 128, 1, 1, 0, nullptr, params, nullptr), 0);
    CHECK_EQ(cuLaunchKernel(g_fill, 1, 1, 1, 32, 1, 1, 64 * 1024, nullptr, params, nullptr), 1);
    CHECK_MSG("MAX_DYNAMIC_SHARED_SIZE_BYTES = 49152");
    CHECK_EQ(cuFuncSetAttribute(g_fill, 8, 64 * 1024), 0);
    CHECK_EQ(cuLaunchKernel(g_fill, 1, 1, 1, 32, 1, 1, 64 * 1024, nullptr, params, nullptr), 0);
    CHECK_EQ(cuFuncSetAttribute(g_fill, 8, 300 * 1024), 1);
    CHECK_EQ(cuFuncSetAttribute(g_fill, 0, 5), 1);   // read-only
    CHECK_EQ(cuLaunchKernel(g_fill, 1, 1, 1, 32, 1, 1, 0, nullptr, nullptr, nullptr), 1);

    // A planted fault: reported by the launch, and not sticky.
    int idx = 1 << 20;
    void* oparams[] = {&buf, &idx};
    CHECK_EQ(cuLaunchKernel(g_oob, 1, 1, 1, 32, 1, 1, 0, nullptr, oparams, nullptr), 719);
    std::fprintf(stderr, "(planted fault reported as: %s)\n", bitune_sim_last_error());
    CHECK_MSG("oob");
    base = 10.0f;
    CHECK_EQ(cuLaunchKernel(g_fill, 2, 1, 1, 64, 1, 1, 0, nullptr, params, nullptr), 0);
    out = download(buf, 2);
    CHECK(out[1] == 11.0f);
    CHECK_EQ(cuMemFreeAsync(buf, nullptr), 0);
}

// ---- capture and graphs -----------------------------------------------------------------------------
static void test_graphs() {
    CUstream s = nullptr;
    CHECK_EQ(cuStreamCreate(&s, 1), 0);
    const unsigned long long n = 256;
    CUdeviceptr a = dalloc(n * 4), b = dalloc(n * 4);
    CHECK_EQ(cuMemsetD8Async(a, 0, n * 4, s), 0);
    CHECK_EQ(cuMemsetD8Async(b, 0, n * 4, s), 0);
    std::vector<float> host(n, 2.0f);

    CHECK_EQ(cuStreamBeginCapture_v2(nullptr, 1), 900);   // the default stream cannot capture
    CHECK_EQ(cuStreamBeginCapture_v2(s, 1), 0);
    int status = -1;
    CHECK_EQ(cuStreamIsCapturing(s, &status), 0);
    CHECK_EQ(status, 1);
    CHECK_EQ(cuStreamBeginCapture_v2(s, 1), 401);
    float one = 1.0f;
    unsigned bits;
    std::memcpy(&bits, &one, 4);
    CHECK_EQ(cuMemsetD32Async(a, bits, n, s), 0);                    // a = 1
    CHECK_EQ(cuMemcpyHtoDAsync_v2(b, host.data(), n * 4, s), 0);     // b = host (read at replay)
    float base = 100.0f;
    unsigned long long half = n / 2;
    void* params[] = {&a, &base, &half};
    CHECK_EQ(cuLaunchKernel(g_fill, 1, 1, 1, 64, 1, 1, 0, s, params, nullptr), 0);   // a[i<128] = 100+i
    CUdeviceptr tmp = 0;
    CHECK_EQ(cuMemAllocAsync(&tmp, n * 4, s), 0);                     // graph-owned scratch
    CHECK_EQ(cuMemcpyDtoDAsync_v2(tmp, b, n * 4, s), 0);
    CHECK_EQ(cuMemcpyDtoDAsync_v2(b + n * 2, tmp, n * 2, s), 0);      // b[128..] = b[0..128]
    CHECK_EQ(cuMemFreeAsync(tmp, s), 0);
    CHECK_EQ(cuLaunchKernel(g_fill, 1, 1, 1, 2048, 1, 1, 0, s, params, nullptr), 1);   // refused, capture intact
    base = -1.0f;   // the captured launch keeps 100
    CUgraph graph = nullptr;
    CHECK_EQ(cuStreamEndCapture(s, &graph), 0);
    CHECK(graph != nullptr);
    CHECK_EQ(cuStreamIsCapturing(s, &status), 0);
    CHECK_EQ(status, 0);
    auto va = download(a, n);
    CHECK(va[0] == 0.0f && va[n - 1] == 0.0f);   // nothing ran yet
    CUgraphExec exec = nullptr;
    CHECK_EQ(cuGraphInstantiateWithFlags(&exec, graph, 1 | 4), 1);
    CHECK_EQ(cuGraphInstantiateWithFlags(&exec, graph, 0), 0);
    for (int rep = 0; rep < 2; ++rep) {
        std::fill(host.begin(), host.end(), 2.0f + rep);
        CHECK_EQ(cuGraphLaunch(exec, s), 0);
        CHECK_EQ(cuStreamSynchronize(s), 0);
        va = download(a, n);
        auto vb = download(b, n);
        CHECK(va[0] == 100.0f && va[127] == 227.0f && va[128] == 1.0f && va[n - 1] == 1.0f);
        CHECK(vb[0] == 2.0f + rep && vb[200] == 2.0f + rep);
    }
    CHECK_EQ(cuMemFreeAsync(tmp, s), 1);   // the graph's scratch is not the caller's to free
    CHECK_EQ(cuGraphExecDestroy(exec), 0);
    CHECK_EQ(cuGraphDestroy(graph), 0);
    CHECK_EQ(cuGraphDestroy(graph), 400);
    CHECK_EQ(cuMemFreeAsync(tmp, s), 1);   // released with the graph

    // Allocated in a capture, not freed in it: the caller's after the capture.
    CHECK_EQ(cuStreamBeginCapture_v2(s, 1), 0);
    CHECK_EQ(cuMemAllocAsync(&tmp, 64, s), 0);
    CHECK_EQ(cuMemsetD8Async(tmp, 0, 64, s), 0);
    CHECK_EQ(cuStreamEndCapture(s, &graph), 0);
    CHECK_EQ(cuGraphInstantiateWithFlags(&exec, graph, 0), 0);
    CHECK_EQ(cuGraphLaunch(exec, s), 0);
    CHECK_EQ(cuGraphExecDestroy(exec), 0);
    CHECK_EQ(cuGraphDestroy(graph), 0);
    CHECK_EQ(cuMemFreeAsync(tmp, s), 0);
    CHECK_EQ(cuMemFreeAsync(tmp, s), 1);

    // Synchronising a capturing stream invalidates the capture.
    CHECK_EQ(cuStreamBeginCapture_v2(s, 0), 0);
    CHECK_EQ(cuMemsetD8Async(a, 0, 4, s), 0);
    CHECK_EQ(cuStreamSynchronize(s), 900);
    CHECK_EQ(cuStreamIsCapturing(s, &status), 0);
    CHECK_EQ(status, 2);
    CHECK_EQ(cuMemsetD8Async(a, 0, 4, s), 901);
    CHECK_EQ(cuStreamEndCapture(s, &graph), 901);
    CHECK(graph == nullptr);
    // A synchronous allocation during a global capture is refused.
    CHECK_EQ(cuStreamBeginCapture_v2(s, 0), 0);
    CHECK_EQ(cuMemAlloc_v2(&tmp, 64), 900);
    CHECK_EQ(cuStreamEndCapture(s, &graph), 901);
    // Events: fork/join of a second stream into the capture; a captured event cannot be queried.
    CUstream s2 = nullptr;
    CHECK_EQ(cuStreamCreate(&s2, 1), 0);
    CUevent ev;
    CHECK_EQ(cuEventCreate(&ev, 2), 0);
    CHECK_EQ(cuStreamBeginCapture_v2(s, 1), 0);
    CHECK_EQ(cuEventRecord(ev, s), 0);
    CHECK_EQ(cuStreamWaitEvent(s2, ev, 0), 0);   // s2 joins
    CHECK_EQ(cuStreamIsCapturing(s2, &status), 0);
    CHECK_EQ(status, 1);
    CHECK_EQ(cuMemsetD32Async(b, bits, 1, s2), 0);
    CHECK_EQ(cuEventRecord(ev, s2), 0);
    CHECK_EQ(cuStreamWaitEvent(s, ev, 0), 0);    // join back
    CHECK_EQ(cuStreamEndCapture(s, &graph), 0);
    CHECK_EQ(cuStreamIsCapturing(s2, &status), 0);
    CHECK_EQ(status, 0);
    CHECK_EQ(cuMemsetD8Async(b, 0, 4, s), 0);
    CHECK_EQ(cuGraphInstantiateWithFlags(&exec, graph, 0), 0);
    CHECK_EQ(cuGraphLaunch(exec, s), 0);
    CHECK(download(b, 1)[0] == 1.0f);
    CHECK_EQ(cuGraphExecDestroy(exec), 0);
    CHECK_EQ(cuGraphDestroy(graph), 0);
    CHECK_EQ(cuStreamBeginCapture_v2(s, 1), 0);
    CHECK_EQ(cuEventRecord(ev, s), 0);
    CHECK_EQ(cuEventQuery(ev), 907);
    CHECK_EQ(cuStreamEndCapture(s, &graph), 901);
    CHECK_EQ(cuEventQuery(ev), 0);
    CHECK_EQ(cuEventDestroy_v2(ev), 0);
    CHECK_EQ(cuStreamDestroy_v2(s2), 0);

    CHECK_EQ(cuMemFreeAsync(a, s), 0);
    CHECK_EQ(cuMemFreeAsync(b, s), 0);
    CHECK_EQ(cuStreamDestroy_v2(s), 0);
}

// ---- cuBLAS ---------------------------------------------------------------------------------------------
static uint32_t g_rng = 12345;
static float frand() {
    g_rng = g_rng * 1664525u + 1013904223u;
    return float((g_rng >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}
static float bf16_round(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    b += 0x7FFFu + ((b >> 16) & 1u);
    b &= 0xFFFF0000u;
    std::memcpy(&f, &b, 4);
    return f;
}
static float tf32_round(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    b = (b + 0x1000u) & ~0x1FFFu;
    std::memcpy(&f, &b, 4);
    return f;
}

// Naive column-major reference: C = alpha op(A) op(B) + beta C (beta == 0: C not read).
static void ref_gemm(int ta, int tb, int m, int n, int k, float alpha, const float* A, int lda, const float* B, int ldb,
                     float beta, float* C, int ldc, float (*rnd)(float)) {
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            double acc = 0;
            for (int l = 0; l < k; ++l) {
                float a = ta == 0 ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
                float b = tb == 0 ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
                if (rnd) a = rnd(a), b = rnd(b);
                acc += double(a) * double(b);
            }
            double v = alpha * acc;
            if (beta != 0.0f) v += beta * C[i + (size_t)j * ldc];
            C[i + (size_t)j * ldc] = float(v);
        }
}

static bool close(const std::vector<float>& got, const std::vector<float>& want, double tol = 1e-5) {
    for (size_t i = 0; i < got.size(); ++i) {
        if (std::isnan(want[i]) != std::isnan(got[i])) return false;
        if (!std::isnan(want[i]) && std::fabs(got[i] - want[i]) > tol * (1 + std::fabs(want[i]))) {
            std::fprintf(stderr, "  element %zu: %g vs %g\n", i, got[i], want[i]);
            return false;
        }
    }
    return true;
}

static CUdeviceptr upload(const std::vector<float>& h) {
    CUdeviceptr p = dalloc(h.size() * 4);
    CHECK_EQ(cuMemcpyHtoDAsync_v2(p, h.data(), h.size() * 4, nullptr), 0);
    return p;
}

static void test_cublas() {
    cublasHandle_t h = nullptr;
    CHECK_EQ(cublasCreate_v2(&h), 0);
    CUstream s = nullptr;
    CHECK_EQ(cuStreamCreate(&s, 1), 0);
    CHECK_EQ(cublasSetStream_v2(h, s), 0);
    CHECK(std::strcmp(cublasGetStatusName(7), "CUBLAS_STATUS_INVALID_VALUE") == 0);

    const int m = 5, n = 7, k = 3, batch = 3;
    for (int ta = 0; ta < 3; ++ta)
        for (int tb = 0; tb < 3; ++tb)
            for (int beta_case = 0; beta_case < 2; ++beta_case) {
                const int ar = ta == 0 ? m : k, ac = ta == 0 ? k : m;
                const int br = tb == 0 ? k : n, bc = tb == 0 ? n : k;
                const int lda = ar + 3, ldb = br + 2, ldc = m + 4;
                const long long sa = (long long)lda * ac + 5, sb = (long long)ldb * bc + 1, sc = (long long)ldc * n + 7;
                std::vector<float> A(sa * batch), B(sb * batch), C(sc * batch);
                for (auto& x : A) x = frand();
                for (auto& x : B) x = frand();
                const float alpha = 1.25f, beta = beta_case ? 0.5f : 0.0f;
                for (auto& x : C) x = beta_case ? frand() : NAN;   // beta == 0: NaN must not leak
                std::vector<float> want = C;
                for (int b = 0; b < batch; ++b)
                    ref_gemm(ta == 2 ? 1 : ta, tb == 2 ? 1 : tb, m, n, k, alpha, &A[b * sa], lda, &B[b * sb], ldb, beta,
                             &want[b * sc], ldc, nullptr);
                CUdeviceptr dA = upload(A), dB = upload(B), dC = upload(C);
                CHECK_EQ(cublasSgemmStridedBatched(h, ta, tb, m, n, k, &alpha, (const float*)dA, lda, sa, (const float*)dB, ldb,
                                                   sb, &beta, (float*)dC, ldc, sc, batch),
                         0);
                auto got = download(dC, C.size());
                // Padding between columns/batches must be untouched (NaN stays NaN where not written).
                bool ok = close(got, want);
                if (!ok) std::fprintf(stderr, "strided sgemm mismatch ta=%d tb=%d beta=%g\n", ta, tb, beta);
                CHECK(ok);
                // Single sgemm on batch 1.
                CHECK_EQ(cuMemcpyHtoDAsync_v2(dC, C.data(), C.size() * 4, s), 0);
                CHECK_EQ(cublasSgemm_v2(h, ta, tb, m, n, k, &alpha, (const float*)dA + sa, lda, (const float*)dB + sb, ldb, &beta,
                                        (float*)dC + sc, ldc),
                         0);
                got = download(dC, C.size());
                std::vector<float> want1 = C;
                ref_gemm(ta == 2 ? 1 : ta, tb == 2 ? 1 : tb, m, n, k, alpha, &A[sa], lda, &B[sb], ldb, beta, &want1[sc], ldc, nullptr);
                CHECK(close(got, want1));
                cuMemFreeAsync(dA, s);
                cuMemFreeAsync(dB, s);
                cuMemFreeAsync(dC, s);
            }

    // Argument validation.
    std::vector<float> X(64, 1.0f);
    CUdeviceptr dX = upload(X), dY = upload(X);
    const float one = 1.0f, zero = 0.0f;
    CHECK_EQ(cublasSgemm_v2(h, 0, 0, -1, 2, 2, &one, (float*)dX, 2, (float*)dX, 2, &zero, (float*)dY, 2), 7);
    CHECK_EQ(cublasSgemm_v2(h, 0, 0, 4, 2, 2, &one, (float*)dX, 3, (float*)dX, 2, &zero, (float*)dY, 4), 7);   // lda < m
    CHECK_EQ(cublasSgemm_v2(h, 1, 0, 4, 2, 3, &one, (float*)dX, 2, (float*)dX, 3, &zero, (float*)dY, 4), 7);   // lda < k
    CHECK_EQ(cublasSgemm_v2(h, 5, 0, 4, 2, 2, &one, (float*)dX, 4, (float*)dX, 2, &zero, (float*)dY, 4), 7);
    CHECK_EQ(cublasSgemm_v2(h, 0, 0, 8, 8, 8, &one, (float*)dX, 8, (float*)dX, 8, &zero, (float*)dY, 8), 0);   // exactly fits
    CHECK_EQ(cublasSgemm_v2(h, 0, 0, 8, 8, 9, &one, (float*)dX, 8, (float*)dX, 9, &zero, (float*)dY, 8), 7);   // A 8x9 > 64
    CHECK_MSG("matrix A");
    CHECK_EQ(cublasSgemm_v2(h, 0, 0, 0, 8, 8, &one, (float*)dX, 8, (float*)dX, 8, &zero, (float*)dY, 8), 0);    // empty
    CHECK_EQ(cublasSgemmStridedBatched(h, 0, 0, 4, 4, 4, &one, (float*)dX, 4, 16, (float*)dX, 4, 16, &zero, (float*)dY, 4, 16, 5),
             7);   // batch 4 runs past the end
    CHECK_MSG("batch 4");

    // bf16 operands (GemmEx, f32 and bf16 output), TF32 compute, unsupported combinations.
    {
        const int M = 33, N = 17, K = 40;
        std::vector<float> A(M * K), B(K * N);
        for (auto& x : A) x = frand();
        for (auto& x : B) x = frand();
        std::vector<uint16_t> Ab(A.size()), Bb(B.size());
        for (size_t i = 0; i < A.size(); ++i) {
            A[i] = bf16_round(A[i]);
            uint32_t u;
            std::memcpy(&u, &A[i], 4);
            Ab[i] = uint16_t(u >> 16);
        }
        for (size_t i = 0; i < B.size(); ++i) {
            B[i] = bf16_round(B[i]);
            uint32_t u;
            std::memcpy(&u, &B[i], 4);
            Bb[i] = uint16_t(u >> 16);
        }
        CUdeviceptr dA = dalloc(Ab.size() * 2), dB = dalloc(Bb.size() * 2), dC = dalloc(M * N * 4), dCb = dalloc(M * N * 2);
        CHECK_EQ(cuMemcpyHtoDAsync_v2(dA, Ab.data(), Ab.size() * 2, s), 0);
        CHECK_EQ(cuMemcpyHtoDAsync_v2(dB, Bb.data(), Bb.size() * 2, s), 0);
        std::vector<float> want(M * N, 0.0f);
        ref_gemm(0, 1, M, N, K, 1.0f, A.data(), M, B.data(), N, 0.0f, want.data(), M, nullptr);   // B stored N x K, op T
        std::vector<float> Bt(K * N);
        CHECK_EQ(cublasGemmEx(h, 0, 1, M, N, K, &one, (void*)dA, 14, M, (void*)dB, 14, N, &zero, (void*)dC, 0, M, 68, -1), 0);
        CHECK(close(download(dC, M * N), want, 1e-6));
        CHECK_EQ(cublasGemmEx(h, 0, 1, M, N, K, &one, (void*)dA, 14, M, (void*)dB, 14, N, &zero, (void*)dCb, 14, M, 68, -1), 0);
        std::vector<uint16_t> cb(M * N);
        CHECK_EQ(cuMemcpyDtoHAsync_v2(cb.data(), dCb, cb.size() * 2, s), 0);
        bool ok = true;
        for (int i = 0; i < M * N; ++i) {
            uint32_t u = uint32_t(cb[i]) << 16;
            float f;
            std::memcpy(&f, &u, 4);
            ok = ok && f == bf16_round(want[i]);
        }
        CHECK(ok);
        CHECK_EQ(cublasGemmStridedBatchedEx(h, 0, 1, M, N, K, &one, (void*)dA, 14, M, 0, (void*)dB, 14, N, 0, &zero, (void*)dC, 0,
                                            M, 0, 1, 68, -1),
                 0);
        // TF32: f32 data rounded on input.
        std::vector<float> Af(M * K), Bf(K * N);
        for (auto& x : Af) x = frand();
        for (auto& x : Bf) x = frand();
        CUdeviceptr fA = upload(Af), fB = upload(Bf);
        std::vector<float> wt(M * N, 0.0f);
        ref_gemm(0, 0, M, N, K, 1.0f, Af.data(), M, Bf.data(), K, 0.0f, wt.data(), M, tf32_round);
        CHECK_EQ(cublasGemmEx(h, 0, 0, M, N, K, &one, (void*)fA, 0, M, (void*)fB, 0, K, &zero, (void*)dC, 0, M, 77, -1), 0);
        CHECK(close(download(dC, M * N), wt, 1e-6));
        CHECK_EQ(cublasSetMathMode(h, 3), 0);   // CUBLAS_TF32_TENSOR_OP_MATH: sgemm uses TF32 too
        CHECK_EQ(cublasSgemm_v2(h, 0, 0, M, N, K, &one, (float*)fA, M, (float*)fB, K, &zero, (float*)dC, M), 0);
        CHECK(close(download(dC, M * N), wt, 1e-6));
        CHECK_EQ(cublasSetMathMode(h, 0), 0);
        CHECK_EQ(cublasGemmEx(h, 0, 0, M, N, K, &one, (void*)fA, 0, M, (void*)fB, 0, K, &zero, (void*)dCb, 14, M, 68, -1), 15);
        CHECK_EQ(cublasGemmEx(h, 0, 0, M, N, K, &one, (void*)fA, 0, M, (void*)fB, 0, K, &zero, (void*)dC, 0, M, 75, -1), 0);
        CHECK_EQ(cublasGemmEx(h, 0, 0, M, N, K, &one, (void*)fA, 3, M, (void*)fB, 0, K, &zero, (void*)dC, 0, M, 68, -1), 15);
        for (CUdeviceptr p : {dA, dB, dC, dCb, fA, fB}) cuMemFreeAsync(p, s);
    }

    // A GEMM recorded in a capture runs at each replay.
    {
        std::vector<float> A(4, 2.0f), B(4, 3.0f);
        CUdeviceptr dA = upload(A), dB = upload(B), dC = dalloc(16);
        CHECK_EQ(cuStreamBeginCapture_v2(s, 1), 0);
        CHECK_EQ(cublasSgemm_v2(h, 0, 0, 2, 2, 2, &one, (float*)dA, 2, (float*)dB, 2, &zero, (float*)dC, 2), 0);
        CUgraph g = nullptr;
        CUgraphExec e = nullptr;
        CHECK_EQ(cuStreamEndCapture(s, &g), 0);
        CHECK(std::isnan(download(dC, 1)[0]));
        CHECK_EQ(cuGraphInstantiateWithFlags(&e, g, 0), 0);
        CHECK_EQ(cuGraphLaunch(e, s), 0);
        CHECK(download(dC, 4)[3] == 12.0f);
        CHECK_EQ(cuMemcpyHtoDAsync_v2(dA, std::vector<float>(4, 1.0f).data(), 16, s), 0);
        CHECK_EQ(cuGraphLaunch(e, s), 0);
        CHECK(download(dC, 4)[3] == 6.0f);
        CHECK_EQ(cuMemFreeAsync(dB, s), 0);
        CHECK_EQ(cuGraphLaunch(e, s), 1);   // B is gone: refused at replay, with a message
        CHECK_MSG("matrix B");
        cuGraphExecDestroy(e);
        cuGraphDestroy(g);
        cuMemFreeAsync(dA, s);
        cuMemFreeAsync(dC, s);
    }

    // gemv with increments, both orientations, against the GEMM reference.
    for (int tr = 0; tr < 2; ++tr) {
        const int m = 6, n = 4, lda = 9, incx = 2, incy = 3;
        const int lx = tr ? m : n, ly = tr ? n : m;
        std::vector<float> A(lda * n), x(lx * incx), y(ly * incy);
        for (auto& v : A) v = frand();
        for (auto& v : x) v = frand();
        for (auto& v : y) v = frand();
        std::vector<float> want = y;
        for (int i = 0; i < ly; ++i) {
            double acc = 0;
            for (int l = 0; l < lx; ++l) acc += double(tr ? A[l + i * lda] : A[i + l * lda]) * x[l * incx];
            want[i * incy] = float(0.75 * acc + 2.0 * y[i * incy]);
        }
        CUdeviceptr dA = upload(A), dx = upload(x), dy = upload(y);
        const float alpha = 0.75f, beta = 2.0f;
        CHECK_EQ(cublasSgemv_v2(h, tr, m, n, &alpha, (float*)dA, lda, (float*)dx, incx, &beta, (float*)dy, incy), 0);
        CHECK(close(download(dy, y.size()), want));
        CHECK_EQ(cublasSgemv_v2(h, tr, m, n, &alpha, (float*)dA, lda, (float*)dx, 0, &beta, (float*)dy, incy), 7);
        CHECK_EQ(cublasSgemv_v2(h, tr, m, n, &alpha, (float*)dA, lda, (float*)dx, incx, &beta, (float*)dy, 40), 7);
        CHECK_MSG("matrix y");
        for (CUdeviceptr p : {dA, dx, dy}) cuMemFreeAsync(p, s);
    }

    // A real model shape, timed.
    {
        const int M = 576, N = 1536, K = 64;
        std::vector<float> A(M * K), B(K * N);
        for (auto& x : A) x = frand();
        for (auto& x : B) x = frand();
        CUdeviceptr dA = upload(A), dB = upload(B), dC = dalloc(size_t(M) * N * 4);
        auto t0 = std::chrono::steady_clock::now();
        CHECK_EQ(cublasSgemm_v2(h, 1, 0, M, N, K, &one, (float*)dA, K, (float*)dB, K, &zero, (float*)dC, M), 0);
        auto t1 = std::chrono::steady_clock::now();
        std::fprintf(stderr, "sgemm %dx%dx%d (T,N): %.1f ms\n", M, N, K, std::chrono::duration<double, std::milli>(t1 - t0).count());
        auto got = download(dC, 3);
        std::vector<float> want(3);
        for (int i = 0; i < 3; ++i) {
            double acc = 0;
            for (int l = 0; l < K; ++l) acc += double(A[l + i * K]) * B[l];
            want[i] = float(acc);
        }
        CHECK(close(got, want));
        cuMemFreeAsync(dA, s);
        cuMemFreeAsync(dB, s);
        cuMemFreeAsync(dC, s);
    }
    cuMemFreeAsync(dX, s);
    cuMemFreeAsync(dY, s);
    CHECK_EQ(cublasDestroy_v2(h), 0);
    CHECK_EQ(cuStreamDestroy_v2(s), 0);
}

// ---- threads ------------------------------------------------------------------------------------------
static void test_threads() {
    std::atomic<int> bad{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([t, &bad] {
            CUstream s = nullptr;
            if (cuStreamCreate(&s, 1)) ++bad;
            for (int it = 0; it < 50; ++it) {
                const unsigned long long n = 300;
                CUdeviceptr p = 0;
                if (cuMemAllocAsync(&p, n * 4, s)) ++bad;
                float base = float(t * 1000 + it);
                void* params[] = {&p, &base, (void*)&n};
                if (cuLaunchKernel(g_fill, 2, 1, 1, 64, 1, 1, 0, s, params, nullptr)) ++bad;
                std::vector<float> out(n);
                if (cuMemcpyDtoHAsync_v2(out.data(), p, n * 4, s)) ++bad;
                for (unsigned long long i = 0; i < n; ++i)
                    if (out[i] != base + float(i)) {
                        ++bad;
                        break;
                    }
                if (cuMemFreeAsync(p, s)) ++bad;
            }
            cuStreamDestroy_v2(s);
        });
    for (auto& t : ts) t.join();
    CHECK_EQ(bad.load(), 0);
}

int main() {
    setenv("BITUNE_CUDA_SIM_QUIET", "1", 0);
    register_test_module();
    // The SONAME route cudarc relies on: dlopen("libcuda.so") finds the already loaded stand-in.
    void* lib = dlopen("libcuda.so", RTLD_NOW | RTLD_NOLOAD);
    CHECK(lib != nullptr);
    if (lib) CHECK(dlsym(lib, "cuInit") == (void*)&cuInit);
    void* blas = dlopen("libcublas.so", RTLD_NOW | RTLD_NOLOAD);
    CHECK(blas != nullptr);
    test_device();
    test_memory();
    test_streams();
    test_modules_and_launches();
    test_graphs();
    test_cublas();
    test_threads();
    CHECK_EQ(cuModuleUnload(g_mod), 0);
    std::printf("standin_test: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
