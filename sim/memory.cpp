// Device memory of the simulator: host pages, one mapping per allocation with a PROT_NONE guard
// page on each side, so that an access past either end faults and the fault handler can say
// which allocation it missed and by how much.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>

#include <sys/mman.h>
#include <unistd.h>

#include "runtime.h"

namespace sim {
namespace {

struct Mapping {
    char* base;      // start of the mapping (a guard page)
    size_t length;   // whole mapping, guards included
    size_t bytes;    // what was asked for
    bool shared;     // a block's dynamic shared memory rather than device memory
};

std::mutex g_mu;
std::map<uintptr_t, Mapping> g_live;  // keyed by the user pointer
size_t g_in_use = 0;

size_t page_size() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

size_t cap_bytes() {
    static const size_t c = [] {
        const char* v = std::getenv("BITUNE_CUDA_SIM_MEM");
        if (v && *v) return (size_t)std::strtoull(v, nullptr, 10);
        return (size_t)16 << 30;
    }();
    return c;
}

void* map_guarded(size_t bytes, bool poison, bool shared) {
    const size_t page = page_size();
    // 16-byte alignment for vector loads; the few slack bytes before the guard are poisoned.
    const size_t body = (std::max<size_t>(bytes, 1) + 15) / 16 * 16;
    const size_t pages = (body + page - 1) / page;
    const size_t length = (pages + 2) * page;
    void* m = mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    char* base = static_cast<char*>(m);
    if (mprotect(base + page, pages * page, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, length);
        return nullptr;
    }
    char* user = base + (pages + 1) * page - body;
    if (poison) std::memset(user, 0xff, body);
    else if (body > bytes) std::memset(user + bytes, 0xff, body - bytes);
    g_live[reinterpret_cast<uintptr_t>(user)] = Mapping{base, length, bytes, shared};
    return user;
}

bool unmap(void* p, bool shared) {
    auto it = g_live.find(reinterpret_cast<uintptr_t>(p));
    if (it == g_live.end() || it->second.shared != shared) return false;
    munmap(it->second.base, it->second.length);
    if (!shared) g_in_use -= it->second.bytes;
    g_live.erase(it);
    return true;
}

}  // namespace

void* alloc(size_t bytes, bool poison) {
    std::lock_guard<std::mutex> g(g_mu);
    if (bytes > cap_bytes() - g_in_use) return nullptr;
    void* p = map_guarded(bytes, poison, false);
    if (p) g_in_use += bytes;
    return p;
}

bool release(void* p) {
    std::lock_guard<std::mutex> g(g_mu);
    return unmap(p, false);
}

void* alloc_shared(size_t bytes) {
    std::lock_guard<std::mutex> g(g_mu);
    void* p = map_guarded(bytes, true, true);
    if (!p) {
        std::fprintf(stderr, "bitune cuda-sim: cannot map %zu bytes of shared memory\n", bytes);
        std::abort();
    }
    return p;
}

void release_shared(void* p) {
    std::lock_guard<std::mutex> g(g_mu);
    unmap(p, true);
}

bool in_allocation(const void* p, size_t n) {
    std::lock_guard<std::mutex> g(g_mu);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = g_live.upper_bound(a);
    if (it == g_live.begin()) return false;
    --it;
    return !it->second.shared && a >= it->first && n <= it->second.bytes &&
           a - it->first <= it->second.bytes - n;
}

std::string describe_address(const void* addr) {
    std::lock_guard<std::mutex> g(g_mu);
    const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    char b[256];
    // The allocation whose mapping (guards included) holds the address.
    for (auto& [user, m] : g_live) {
        const uintptr_t lo = reinterpret_cast<uintptr_t>(m.base), hi = lo + m.length;
        if (a < lo || a >= hi) continue;
        const char* kind = m.shared ? "dynamic shared memory" : "device allocation";
        if (a >= user + m.bytes)
            std::snprintf(b, sizeof b, "%llu bytes past the end of the %zu-byte %s at 0x%llx",
                          (unsigned long long)(a - user - m.bytes), m.bytes, kind,
                          (unsigned long long)user);
        else if (a < user)
            std::snprintf(b, sizeof b, "%llu bytes before the start of the %zu-byte %s at 0x%llx",
                          (unsigned long long)(user - a), m.bytes, kind, (unsigned long long)user);
        else
            std::snprintf(b, sizeof b, "inside the %zu-byte %s at 0x%llx (offset %llu)", m.bytes, kind,
                          (unsigned long long)user, (unsigned long long)(a - user));
        return b;
    }
    std::snprintf(b, sizeof b,
                  "the address is in no live allocation (freed memory, a host pointer, or a wild index)");
    return b;
}

size_t bytes_in_use() {
    std::lock_guard<std::mutex> g(g_mu);
    return g_in_use;
}

size_t capacity() { return cap_bytes(); }

}  // namespace sim
