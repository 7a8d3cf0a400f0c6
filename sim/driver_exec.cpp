// The libcuda stand-in, part 4 of 4: modules, functions and their attributes, occupancy, and
// kernel launches.
//
// A module image is recognised by sim::module_of_image (the fatbins this build compiled); its
// kernels are the host-compiled ones registered under the module's name. A launch is checked
// against the device limits and the function's attributes before anything runs, then executed by
// sim::run on the calling thread under the device lock. A kernel fault is reported by the launch
// itself (CUDA_ERROR_LAUNCH_FAILED, message from the runtime), not at a later synchronisation, and
// is not sticky.
//
// While the stream captures, the launch is recorded with a copy of its parameter VALUES (the
// caller's parameter array dies after the call), each as many bytes as the kernel's parameter
// type has (the registry knows them from the kernel's signature).
#include <cstring>
#include <sstream>

#include "driver_internal.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

using namespace simdrv;

struct SimFunc {
    const sim::Kernel* k = nullptr;
    int max_dyn_smem = static_cast<int>(sim::kSmemPerBlockDefault);
    int carveout = -1;
    int non_portable_cluster = 0;
    int cluster_policy = 0;
};

struct SimModule {
    const sim::Module* m = nullptr;
    std::map<std::string, SimFunc*> funcs;
};

namespace {

std::set<SimModule*> g_modules;
std::set<SimFunc*> g_funcs;

constexpr int kNumRegs = 32;   // reported per-thread register count of every kernel

std::string kname(const sim::Kernel* k) { return std::string(k->name) + " (kernels/" + k->module + ".cu)"; }

SimFunc* func_of(CUfunction f) { return f && g_funcs.count(f) ? f : nullptr; }

unsigned max_threads(const sim::Kernel* k) { return k->max_threads ? k->max_threads : sim::kMaxThreadsPerBlock; }

CUresult load(const char* call, CUmodule* out, const void* image) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    if (!image) return fail(CUDA_ERROR_INVALID_VALUE, std::string(call) + ": null image");
    std::string why;
    const sim::Module* m = sim::module_of_image(image, why);
    if (!m) return fail(CUDA_ERROR_INVALID_IMAGE, std::string(call) + ": image at " + hex(image) + ": " + why);
    auto* mod = new SimModule;
    mod->m = m;
    std::lock_guard<std::mutex> g(table_mutex());
    g_modules.insert(mod);
    *out = mod;
    return CUDA_SUCCESS;
}

// Blocks of `threads` threads with `smem` dynamic shared memory that fit one SM (H100 limits:
// 2048 threads, 32 blocks, 64 Ki registers, 228 KiB shared memory with 1 KiB reserved per block).
int blocks_per_sm(const SimFunc* f, int threads, size_t smem) {
    if (threads <= 0 || static_cast<unsigned>(threads) > max_threads(f->k)) return 0;
    const int warps = (threads + 31) / 32;
    int n = std::min(2048 / (warps * 32), 32);
    n = std::min(n, 65536 / (warps * 32 * kNumRegs));
    n = std::min<long>(n, static_cast<long>(233472 / (smem + 1024)));
    return std::max(n, 0);
}

struct LaunchArgs {
    const char* call;
    CUfunction f;
    sim::Dim3 grid, block;
    size_t smem;
    CUstream stream;
    void** params;
    void** extra;
};

CUresult check_launch(const LaunchArgs& a, const sim::Kernel** kout) {
    std::string call = a.call;
    const sim::Kernel* k;
    size_t max_dyn;
    {
        std::lock_guard<std::mutex> g(table_mutex());
        SimFunc* f = func_of(a.f);
        if (!f) return fail(CUDA_ERROR_INVALID_HANDLE, call + ": " + hex(static_cast<void*>(a.f)) + " is not a loaded function");
        k = f->k;
        max_dyn = static_cast<size_t>(f->max_dyn_smem);
    }
    *kout = k;
    const std::string who = call + " of kernel " + kname(k) + ": ";
    auto bad = [&](CUresult code, const std::string& what) { return fail(code, who + what); };
    auto u = [](uint64_t v) { return std::to_string(v); };
    if (a.grid.x == 0 || a.grid.y == 0 || a.grid.z == 0)
        return bad(CUDA_ERROR_INVALID_VALUE, "grid (" + u(a.grid.x) + ", " + u(a.grid.y) + ", " + u(a.grid.z) + ") has a zero dimension");
    if (a.grid.x > sim::kMaxGridDimX) return bad(CUDA_ERROR_INVALID_VALUE, "gridDim.x " + u(a.grid.x) + " exceeds the limit " + u(sim::kMaxGridDimX));
    if (a.grid.y > sim::kMaxGridDimY) return bad(CUDA_ERROR_INVALID_VALUE, "gridDim.y " + u(a.grid.y) + " exceeds the limit " + u(sim::kMaxGridDimY));
    if (a.grid.z > sim::kMaxGridDimZ) return bad(CUDA_ERROR_INVALID_VALUE, "gridDim.z " + u(a.grid.z) + " exceeds the limit " + u(sim::kMaxGridDimZ));
    if (a.block.x == 0 || a.block.y == 0 || a.block.z == 0)
        return bad(CUDA_ERROR_INVALID_VALUE, "block (" + u(a.block.x) + ", " + u(a.block.y) + ", " + u(a.block.z) + ") has a zero dimension");
    if (a.block.x > sim::kMaxBlockDimX) return bad(CUDA_ERROR_INVALID_VALUE, "blockDim.x " + u(a.block.x) + " exceeds the limit " + u(sim::kMaxBlockDimX));
    if (a.block.y > sim::kMaxBlockDimY) return bad(CUDA_ERROR_INVALID_VALUE, "blockDim.y " + u(a.block.y) + " exceeds the limit " + u(sim::kMaxBlockDimY));
    if (a.block.z > sim::kMaxBlockDimZ) return bad(CUDA_ERROR_INVALID_VALUE, "blockDim.z " + u(a.block.z) + " exceeds the limit " + u(sim::kMaxBlockDimZ));
    const uint64_t threads = uint64_t(a.block.x) * a.block.y * a.block.z;
    if (threads > sim::kMaxThreadsPerBlock)
        return bad(CUDA_ERROR_INVALID_VALUE, u(threads) + " threads per block exceed the device limit " + u(sim::kMaxThreadsPerBlock));
    if (k->max_threads && threads > k->max_threads)
        return bad(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
                   u(threads) + " threads per block exceed the kernel's __launch_bounds__ of " + u(k->max_threads));
    if (a.smem > max_dyn)
        return bad(CUDA_ERROR_INVALID_VALUE, "dynamic shared memory of " + u(a.smem) +
                                                 " bytes exceeds the function's CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = " +
                                                 u(max_dyn) + (max_dyn < sim::kSmemPerBlockOptin
                                                                   ? " (raise it with cuFuncSetAttribute, up to " + u(sim::kSmemPerBlockOptin) + ")"
                                                                   : std::string()));
    if (a.extra && a.params) return bad(CUDA_ERROR_INVALID_VALUE, "both kernelParams and extra are given");
    if (a.extra) return bad(CUDA_ERROR_NOT_SUPPORTED, "parameters through `extra` (CU_LAUNCH_PARAM_BUFFER_POINTER) are not simulated");
    if (k->num_params && !a.params)
        return bad(CUDA_ERROR_INVALID_VALUE, "kernelParams is null but the kernel takes " + u(k->num_params) + " parameters");
    for (unsigned i = 0; i < k->num_params; ++i)
        if (!a.params[i]) return bad(CUDA_ERROR_INVALID_VALUE, "kernelParams[" + u(i) + "] is null");
    return CUDA_SUCCESS;
}

CUresult run_kernel(const sim::Kernel* k, sim::Dim3 grid, sim::Dim3 block, size_t smem, void** params) {
    sim::Launch l{k, grid, block, smem, params};
    std::string err;
    if (!sim::run(l, err)) return CUDA_ERROR_LAUNCH_FAILED;   // the runtime has set the message
    return CUDA_SUCCESS;
}

CUresult launch(const LaunchArgs& a) {
    const sim::Kernel* k = nullptr;
    if (CUresult r = check_launch(a, &k)) return r;
    std::shared_ptr<Capture> cap;
    {
        std::lock_guard<std::mutex> g(table_mutex());
        if (CUresult r = stream_capture(a.stream, a.call, &cap)) return r;
    }
    const sim::Dim3 grid = a.grid, block = a.block;
    const size_t smem = a.smem;
    if (!cap) {
        std::lock_guard<std::recursive_mutex> g(exec_mutex());
        return run_kernel(k, grid, block, smem, a.params);
    }
    // Recorded: copy every parameter value now, each in its own 16-byte-aligned slot.
    size_t slots = 0;
    for (unsigned i = 0; i < k->num_params; ++i) slots += (k->param_sizes[i] + 15) / 16;
    struct alignas(16) Slot {
        unsigned char bytes[16];
    };
    auto values = std::make_shared<std::vector<Slot>>(slots);
    std::vector<size_t> offsets;
    size_t at = 0;
    for (unsigned i = 0; i < k->num_params; ++i) {
        offsets.push_back(at);
        std::memcpy(reinterpret_cast<char*>(values->data()) + at, a.params[i], k->param_sizes[i]);
        at += (k->param_sizes[i] + 15) / 16 * 16;
    }
    std::ostringstream what;
    what << "launch of " << kname(k) << " grid (" << grid.x << "," << grid.y << "," << grid.z << ") block (" << block.x
         << "," << block.y << "," << block.z << ")";
    return submit(a.stream, a.call,
                  [k, grid, block, smem, values, offsets] {
                      std::vector<void*> ptrs(offsets.size());
                      for (size_t i = 0; i < ptrs.size(); ++i)
                          ptrs[i] = reinterpret_cast<char*>(values->data()) + offsets[i];
                      return run_kernel(k, grid, block, smem, ptrs.empty() ? nullptr : ptrs.data());
                  },
                  what.str());
}

}  // namespace

// ---- modules -------------------------------------------------------------------------------------------
EXPORT CUresult cuModuleLoadData(CUmodule* module, const void* image) { return load("cuModuleLoadData", module, image); }

EXPORT CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned int, void*, void**) {
    return load("cuModuleLoadDataEx", module, image);
}

EXPORT CUresult cuModuleLoadFatBinary(CUmodule* module, const void* image) { return load("cuModuleLoadFatBinary", module, image); }

EXPORT CUresult cuModuleLoad(CUmodule*, const char* fname) {
    return fail(CUDA_ERROR_NOT_SUPPORTED, std::string("cuModuleLoad(\"") + (fname ? fname : "") +
                                              "\"): loading modules from files is not simulated; use cuModuleLoadData with an embedded fatbin");
}

EXPORT CUresult cuModuleUnload(CUmodule mod) {
    std::lock_guard<std::mutex> g(table_mutex());
    if (!mod || !g_modules.count(mod)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload: not a loaded module");
    for (auto& kv : mod->funcs) {
        g_funcs.erase(kv.second);
        delete kv.second;
    }
    g_modules.erase(mod);
    delete mod;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleGetFunction(CUfunction* out, CUmodule mod, const char* name) {
    if (!out || !name) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    if (!mod || !g_modules.count(mod)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuModuleGetFunction: not a loaded module");
    auto it = mod->funcs.find(name);
    if (it != mod->funcs.end()) {
        *out = it->second;
        return CUDA_SUCCESS;
    }
    const sim::Kernel* k = sim::find_kernel(mod->m->name, name);
    if (!k)
        return fail(CUDA_ERROR_NOT_FOUND, std::string("kernel ") + name + " is not in module " + mod->m->name + " (kernels/" +
                                              mod->m->name + ".cu)");
    auto* f = new SimFunc;
    f->k = k;
    mod->funcs[name] = f;
    g_funcs.insert(f);
    *out = f;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuModuleGetGlobal_v2(CUdeviceptr*, size_t*, CUmodule, const char* name) {
    return fail(CUDA_ERROR_NOT_FOUND, std::string("cuModuleGetGlobal(") + (name ? name : "") +
                                          "): module globals (__device__/__constant__ symbols) are not simulated");
}

// ---- function attributes ----------------------------------------------------------------------------
EXPORT CUresult cuFuncGetAttribute(int* pi, int attrib, CUfunction hf) {
    if (!pi) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    SimFunc* f = func_of(hf);
    if (!f) return fail(CUDA_ERROR_INVALID_HANDLE, "cuFuncGetAttribute: not a loaded function");
    switch (attrib) {
        case 0: *pi = static_cast<int>(max_threads(f->k)); break;   // MAX_THREADS_PER_BLOCK
        case 1: *pi = 0; break;                                     // SHARED_SIZE_BYTES (static: not known)
        case 2: *pi = 0; break;                                     // CONST_SIZE_BYTES
        case 3: *pi = 0; break;                                     // LOCAL_SIZE_BYTES
        case 4: *pi = kNumRegs; break;                              // NUM_REGS
        case 5: *pi = 90; break;                                    // PTX_VERSION
        case 6: *pi = 90; break;                                    // BINARY_VERSION
        case 7: *pi = 0; break;                                     // CACHE_MODE_CA
        case 8: *pi = f->max_dyn_smem; break;                       // MAX_DYNAMIC_SHARED_SIZE_BYTES
        case 9: *pi = f->carveout; break;                           // PREFERRED_SHARED_MEMORY_CARVEOUT
        case 10: case 11: case 12: case 13: *pi = 0; break;         // cluster size requirements: none
        case 14: *pi = f->non_portable_cluster; break;
        case 15: *pi = f->cluster_policy; break;
        default:
            return fail(CUDA_ERROR_INVALID_VALUE, "cuFuncGetAttribute: unknown attribute " + std::to_string(attrib));
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuFuncSetAttribute(CUfunction hf, int attrib, int value) {
    std::lock_guard<std::mutex> g(table_mutex());
    SimFunc* f = func_of(hf);
    if (!f) return fail(CUDA_ERROR_INVALID_HANDLE, "cuFuncSetAttribute: not a loaded function");
    const std::string who = "cuFuncSetAttribute on kernel " + kname(f->k) + ": ";
    switch (attrib) {
        case 8:   // MAX_DYNAMIC_SHARED_SIZE_BYTES (static shared memory counts as 0 here)
            if (value < 0 || static_cast<size_t>(value) > sim::kSmemPerBlockOptin)
                return fail(CUDA_ERROR_INVALID_VALUE, who + "MAX_DYNAMIC_SHARED_SIZE_BYTES = " + std::to_string(value) +
                                                          " exceeds the device's opt-in limit " +
                                                          std::to_string(sim::kSmemPerBlockOptin));
            f->max_dyn_smem = value;
            return CUDA_SUCCESS;
        case 9:
            if (value < -1 || value > 100)
                return fail(CUDA_ERROR_INVALID_VALUE, who + "PREFERRED_SHARED_MEMORY_CARVEOUT must be -1..100, got " + std::to_string(value));
            f->carveout = value;
            return CUDA_SUCCESS;
        case 14: f->non_portable_cluster = value; return CUDA_SUCCESS;
        case 15: f->cluster_policy = value; return CUDA_SUCCESS;
        default:
            return fail(CUDA_ERROR_INVALID_VALUE, who + "attribute " + std::to_string(attrib) + " is read-only or unknown");
    }
}

EXPORT CUresult cuFuncSetCacheConfig(CUfunction hf, int /*config*/) {
    std::lock_guard<std::mutex> g(table_mutex());
    return func_of(hf) ? CUDA_SUCCESS : fail(CUDA_ERROR_INVALID_HANDLE, "cuFuncSetCacheConfig: not a loaded function");
}

EXPORT CUresult cuFuncSetSharedMemConfig(CUfunction hf, int /*config*/) { return cuFuncSetCacheConfig(hf, 0); }

// ---- occupancy ----------------------------------------------------------------------------------------
EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, CUfunction hf, int block, size_t smem, unsigned) {
    if (!n) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    SimFunc* f = func_of(hf);
    if (!f) return fail(CUDA_ERROR_INVALID_HANDLE, "cuOccupancyMaxActiveBlocksPerMultiprocessor: not a loaded function");
    *n = blocks_per_sm(f, block, smem);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, CUfunction hf, int block, size_t smem) {
    return cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(n, hf, block, smem, 0);
}

EXPORT CUresult cuOccupancyAvailableDynamicSMemPerBlock(size_t* smem, CUfunction hf, int nblocks, int block) {
    if (!smem || nblocks <= 0) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    SimFunc* f = func_of(hf);
    if (!f) return fail(CUDA_ERROR_INVALID_HANDLE, "cuOccupancyAvailableDynamicSMemPerBlock: not a loaded function");
    if (block <= 0 || static_cast<unsigned>(block) > max_threads(f->k)) {
        *smem = 0;
        return CUDA_SUCCESS;
    }
    size_t per = 233472 / static_cast<size_t>(nblocks);
    per = per > 1024 ? per - 1024 : 0;
    *smem = std::min(per, sim::kSmemPerBlockOptin);
    return CUDA_SUCCESS;
}

typedef size_t (*CUoccupancyB2DSize)(int blockSize);

EXPORT CUresult cuOccupancyMaxPotentialBlockSizeWithFlags(int* min_grid, int* block_size, CUfunction hf, CUoccupancyB2DSize b2d,
                                                          size_t smem, int limit, unsigned) {
    if (!min_grid || !block_size) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    SimFunc* f = func_of(hf);
    if (!f) return fail(CUDA_ERROR_INVALID_HANDLE, "cuOccupancyMaxPotentialBlockSize: not a loaded function");
    int cap = static_cast<int>(max_threads(f->k));
    if (limit > 0 && limit < cap) cap = limit;
    int best = 0, best_threads = 0;
    for (int t = 32; t <= cap; t += 32) {
        int n = blocks_per_sm(f, t, b2d ? b2d(t) : smem);
        if (n * t > best_threads) {
            best_threads = n * t;
            best = t;
        }
    }
    *block_size = best;
    *min_grid = best ? (best_threads / best) * static_cast<int>(sim::kNumSMs) : 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuOccupancyMaxPotentialBlockSize(int* min_grid, int* block_size, CUfunction hf, CUoccupancyB2DSize b2d,
                                                 size_t smem, int limit) {
    return cuOccupancyMaxPotentialBlockSizeWithFlags(min_grid, block_size, hf, b2d, smem, limit, 0);
}

// ---- launches -----------------------------------------------------------------------------------------
EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               unsigned smem, CUstream s, void** params, void** extra) {
    return launch(LaunchArgs{"cuLaunchKernel", f, {gx, gy, gz}, {bx, by, bz}, smem, s, params, extra});
}

// The driver's launch config for cuLaunchKernelEx (CUlaunchConfig); attributes are ignored except
// that a cluster dimension or cooperative attribute is refused.
struct CUlaunchAttribute {
    int id;
    char pad[4];
    char value[64];
};
struct CUlaunchConfig {
    unsigned gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
    CUstream hStream;
    CUlaunchAttribute* attrs;
    unsigned numAttrs;
};

EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig* c, CUfunction f, void** params, void** extra) {
    if (!c) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < c->numAttrs; ++i) {
        int id = c->attrs[i].id;
        if (id == 2 /*COOPERATIVE*/ || id == 4 /*CLUSTER_DIMENSION*/)
            return fail(CUDA_ERROR_NOT_SUPPORTED, "cuLaunchKernelEx: launch attribute " + std::to_string(id) +
                                                      " (cooperative / cluster launch) is not simulated");
    }
    return launch(LaunchArgs{"cuLaunchKernelEx", f, {c->gridDimX, c->gridDimY, c->gridDimZ},
                             {c->blockDimX, c->blockDimY, c->blockDimZ}, c->sharedMemBytes, c->hStream, params, extra});
}

EXPORT CUresult cuLaunchCooperativeKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                          CUstream, void**) {
    return fail(CUDA_ERROR_NOT_SUPPORTED,
                "cuLaunchCooperativeKernel: cooperative launches (grid-wide sync) are not simulated "
                "(CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH is 0)");
}
