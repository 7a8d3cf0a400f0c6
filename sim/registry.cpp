// The simulator's registry (kernels and modules, filled by the units build.rs generates) and the
// per-thread last-error slot.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "runtime.h"

namespace sim {

namespace {
std::vector<Kernel>& kernel_table() {
    static std::vector<Kernel> t;
    return t;
}
std::vector<Module>& module_table() {
    static std::vector<Module> t;
    return t;
}
}  // namespace

void register_kernel(const Kernel& k) { kernel_table().push_back(k); }
void register_module(const Module& m) { module_table().push_back(m); }

uint64_t fnv1a(const void* data, size_t n) {
    const unsigned char* p = static_cast<const unsigned char*>(data);
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

const Module* module_of_image(const void* image, std::string& why) {
    if (!image) {
        why = "null image";
        return nullptr;
    }
    // nvcc's fatbin file: u32 magic 0xBA55ED50, u16 version, u16 header size, u64 payload size.
    uint32_t magic;
    uint16_t header;
    uint64_t payload;
    std::memcpy(&magic, image, 4);
    if (magic != 0xBA55ED50u) {
        char b[128];
        std::snprintf(b, sizeof b,
                      "not a fatbin (magic 0x%08x): the simulator runs only the modules this "
                      "build compiled from kernels/",
                      magic);
        why = b;
        return nullptr;
    }
    std::memcpy(&header, static_cast<const char*>(image) + 6, 2);
    std::memcpy(&payload, static_cast<const char*>(image) + 8, 8);
    const uint64_t size = header + payload;
    const uint64_t hash = fnv1a(image, size);
    for (const Module& m : module_table())
        if (m.fatbin_size == size && m.fatbin_hash == hash) return &m;
    char b[160];
    std::snprintf(b, sizeof b,
                  "fatbin of %llu bytes (hash %016llx) is none of the %zu modules this build "
                  "compiled for the simulator",
                  (unsigned long long)size, (unsigned long long)hash, module_table().size());
    why = b;
    return nullptr;
}

const Kernel* find_kernel(const char* module, const char* name) {
    for (const Kernel& k : kernel_table())
        if (std::strcmp(k.module, module) == 0 && std::strcmp(k.name, name) == 0) return &k;
    return nullptr;
}

// ---- errors -----------------------------------------------------------------------------------

// Per calling thread, like the driver's error state: the Rust tests launch from several threads
// at once, each checking the message of its own planted failure.
namespace {
thread_local std::string tl_err;
}  // namespace

void set_last_error(const std::string& msg) {
    tl_err = msg;
    if (!std::getenv("BITUNE_CUDA_SIM_QUIET")) std::fprintf(stderr, "bitune cuda-sim: %s\n", msg.c_str());
}

std::string last_error() { return tl_err; }

}  // namespace sim
