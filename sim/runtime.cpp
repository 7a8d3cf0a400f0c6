// The CUDA simulator's runtime: the kernel registry, the block scheduler (each CUDA thread a
// fiber with its own stack, switched cooperatively), barriers and warp collectives as rendezvous
// of the threads they name, and the failures a GPU would have (barrier divergence, missing lanes,
// out-of-bounds accesses) reported with kernel, block and thread. Memory lives in memory.cpp.
#include "runtime.h"

#include <algorithm>
#include <atomic>
#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

namespace sim {

thread_local Block* tl_block = nullptr;
thread_local Fiber* tl_fiber = nullptr;

// ---- registry -----------------------------------------------------------------------------------

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

// ---- fibers -----------------------------------------------------------------------------------

// switch_stack(save, load): pushes the callee-saved registers and the FP control words, stores
// the stack pointer in *save, loads `load` and pops the same from there. A fresh fiber's stack is
// laid out so that the first switch "returns" into fiber_entry.
extern "C" void bitune_sim_switch(void** save, void* load);
#if defined(__x86_64__)
asm(R"(
.text
.globl bitune_sim_switch
.hidden bitune_sim_switch
.type bitune_sim_switch,@function
bitune_sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size bitune_sim_switch,.-bitune_sim_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#elif defined(__aarch64__)
asm(R"(
.text
.globl bitune_sim_switch
.hidden bitune_sim_switch
.type bitune_sim_switch,%function
bitune_sim_switch:
    sub sp, sp, #176
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mrs x9, fpcr
    str x9, [sp, #160]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldr x9, [sp, #160]
    msr fpcr, x9
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #176
    ret
.size bitune_sim_switch,.-bitune_sim_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#else
#error "the CUDA simulator's context switch is written for x86-64 and aarch64"
#endif

namespace {

enum State { kRunnable = 0, kBarrier = 1, kCollective = 2, kDone = 3 };

constexpr size_t kStack = 128 * 1024;  // per CUDA thread; a guard page sits below each

// Everything one OS thread needs to run blocks: fibers, their stacks, the scheduler's context.
struct Worker {
    std::vector<Fiber> fibers;
    char* stacks = nullptr;
    size_t stack_slots = 0;
    size_t page = 4096;
    void* sched_sp = nullptr;
    Block block;
    const Launch* launch = nullptr;
    unsigned nthreads = 0;
    unsigned done = 0;
    // Barrier in progress: how many arrived, and where (file, line) the first one waits.
    unsigned at_barrier = 0;
    // Per warp: how many of its lanes wait at some collective (a cheap test before the scan).
    std::vector<unsigned> in_collective;
    // Set by a failing fiber or the fault handler; the block stops at once.
    bool failed = false;
    std::string fail;
    bool in_kernel = false;
    // With BITUNE_CUDA_SIM_SEED set, each sweep resumes the runnable threads in a random order,
    // so code that reads shared data another thread has not provably written yet (a missing
    // barrier) sees a different interleaving than in the default order.
    bool shuffle = false;
    uint64_t rng = 0;
    std::vector<unsigned> order;
    sigjmp_buf fault_jmp;
    void* altstack = nullptr;

    ~Worker() {
        if (stacks) munmap(stacks, stack_slots * (kStack + page));
    }
};

thread_local Worker* tl_worker = nullptr;

Worker& worker() {
    if (!tl_worker) {
        tl_worker = new Worker();  // one per OS thread that launches; lives as long as it
        tl_worker->page = (size_t)sysconf(_SC_PAGESIZE);
    }
    return *tl_worker;
}

std::string dim_str(const Dim3& d) {
    char b[64];
    std::snprintf(b, sizeof b, "(%u,%u,%u)", d.x, d.y, d.z);
    return b;
}

std::string where(const Worker& w, const Fiber& f) {
    return std::string("kernel ") + w.launch->kernel->name + ", block " + dim_str(w.block.idx) +
           ", thread " + dim_str(f.tid);
}

std::string site(const Fiber& f) {
    char b[64];
    std::snprintf(b, sizeof b, ":%d", f.wait_line);
    const char* file = f.wait_file ? f.wait_file : "?";
    // Kernel files are compiled by absolute path; keep the path from "kernels/" on.
    const char* k = std::strstr(file, "kernels/");
    return std::string(f.wait_what ? f.wait_what : "?") + " at " + (k ? k : file) + b;
}

std::string state_str(const Fiber& f) {
    switch (f.state) {
        case kDone: return "exited";
        case kBarrier: return "waits at " + site(f);
        case kCollective: {
            char b[32];
            std::snprintf(b, sizeof b, " (mask 0x%08x)", f.wait_mask);
            return "waits at " + site(f) + b;
        }
        default: return "runnable";
    }
}

[[noreturn]] void to_scheduler(Worker& w, Fiber& f);

void fiber_entry() {
    Worker& w = *tl_worker;
    Fiber& f = *tl_fiber;
    w.launch->kernel->invoke(w.launch->kernel->fn, w.launch->params);
    f.state = kDone;
    ++w.done;
    if (w.at_barrier > 0) {
        // A thread left the kernel while others wait at a barrier it will never reach.
        for (Fiber& o : w.fibers) {
            if (o.state == kBarrier) {
                w.failed = true;
                w.fail = "barrier divergence in " + where(w, o) + ": it " + state_str(o) +
                         ", but thread " + dim_str(f.tid) + " exited without reaching it";
                break;
            }
        }
    }
    to_scheduler(w, f);
}

void to_scheduler(Worker& w, Fiber& f) {
    bitune_sim_switch(&f.sp, w.sched_sp);
    // A finished fiber is never resumed; a failing one is abandoned.
    std::abort();
}

// Switches the calling fiber out until the scheduler resumes it.
void yield(Worker& w, Fiber& f) { bitune_sim_switch(&f.sp, w.sched_sp); }

void ensure_stacks(Worker& w, unsigned n) {
    if (w.stack_slots >= n) return;
    if (w.stacks) munmap(w.stacks, w.stack_slots * (kStack + w.page));
    const size_t slot = kStack + w.page;
    void* p = mmap(nullptr, slot * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) {
        std::fprintf(stderr, "bitune cuda-sim: cannot map %u fiber stacks\n", n);
        std::abort();
    }
    w.stacks = static_cast<char*>(p);
    w.stack_slots = n;
    for (unsigned i = 0; i < n; ++i) mprotect(w.stacks + i * slot, w.page, PROT_NONE);
}

// Lays out fiber i's stack so that switching to it enters fiber_entry with an ABI-aligned stack.
void prepare(Worker& w, unsigned i) {
    const size_t slot = kStack + w.page;
    char* top = w.stacks + (size_t)(i + 1) * slot;
    uintptr_t* sp = reinterpret_cast<uintptr_t*>(top);
#if defined(__x86_64__)
    // `ret` pops fiber_entry and leaves rsp at the fake return address above it: rsp ≡ 8 (mod 16)
    // at entry, as after a call.
    *--sp = 0;  // fake return address of fiber_entry's frame (stops unwinders)
    *--sp = reinterpret_cast<uintptr_t>(&fiber_entry);
    for (int r = 0; r < 6; ++r) *--sp = 0;  // rbp rbx r12 r13 r14 r15
    --sp;
    uint32_t mxcsr;
    uint16_t fcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fcw));
    std::memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
    std::memcpy(reinterpret_cast<char*>(sp) + 4, &fcw, 2);
#else
    *--sp = 0;
    *--sp = 0;  // keeps sp 16-byte aligned
    sp -= 22;  // 176 bytes
    std::memset(sp, 0, 176);
    sp[11] = reinterpret_cast<uintptr_t>(&fiber_entry);  // x30 (lr)
    uint64_t fpcr;
    asm volatile("mrs %0, fpcr" : "=r"(fpcr));
    sp[20] = fpcr;
#endif
    w.fibers[i].sp = sp;
}

// ---- the fault handler ----------------------------------------------------------------------------

struct sigaction g_old_segv, g_old_bus;
std::once_flag g_handler_once;

void on_fault(int sig, siginfo_t* info, void* uctx) {
    Worker* w = tl_worker;
    if (w && w->in_kernel) {
        w->in_kernel = false;
        const Fiber* f = tl_fiber;
        std::string who = f ? where(*w, *f) : std::string("kernel ") + w->launch->kernel->name;
        char b[64];
        std::snprintf(b, sizeof b, "%p", info->si_addr);
        w->fail = std::string(sig == SIGBUS ? "misaligned or invalid" : "out-of-bounds") +
                  " access at " + b + " in " + who + ": " + describe_address(info->si_addr);
        w->failed = true;
        siglongjmp(w->fault_jmp, 1);
    }
    // Not ours: hand over to whoever was installed before (Rust's stack-overflow handler, or the
    // default action).
    struct sigaction& old = sig == SIGBUS ? g_old_bus : g_old_segv;
    if (old.sa_flags & SA_SIGINFO) {
        if (old.sa_sigaction) {
            old.sa_sigaction(sig, info, uctx);
            return;
        }
    } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
        old.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL);  // returning re-executes the access, which now kills the process
}

void install_handler() {
    std::call_once(g_handler_once, [] {
        struct sigaction sa;
        std::memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
    });
}

// The handler must not run on a fiber stack that just overflowed: make sure this OS thread has
// an alternate signal stack (Rust threads already do).
void ensure_altstack(Worker& w) {
    stack_t cur;
    if (sigaltstack(nullptr, &cur) == 0 && !(cur.ss_flags & SS_DISABLE)) return;
    const size_t n = 64 * 1024;
    w.altstack = std::malloc(n);
    stack_t ss;
    ss.ss_sp = w.altstack;
    ss.ss_size = n;
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
}

// ---- running a block --------------------------------------------------------------------------

// Explains why no thread of the block can move on.
std::string deadlock(Worker& w) {
    for (Fiber& f : w.fibers) {
        if (f.state == kBarrier) {
            std::string why = "barrier divergence in " + where(w, f) + ": it " + state_str(f);
            for (Fiber& o : w.fibers) {
                if (o.state == kBarrier && o.wait_file == f.wait_file && o.wait_line == f.wait_line)
                    continue;
                return why + ", but thread " + dim_str(o.tid) + " " + state_str(o);
            }
            return why;
        }
        if (f.state == kCollective) {
            const unsigned base = f.linear / kWarpSize * kWarpSize;
            std::string why = "warp collective cannot complete in " + where(w, f) + ": it " +
                              state_str(f);
            for (unsigned l = 0; l < kWarpSize; ++l) {
                if (!(f.wait_mask >> l & 1u)) continue;
                const unsigned t = base + l;
                if (t >= w.nthreads) {
                    char b[96];
                    std::snprintf(b, sizeof b, ", but lane %u of the mask does not exist (%u threads per block)",
                                  l, w.nthreads);
                    return why + b;
                }
                Fiber& o = w.fibers[t];
                if (o.state == kCollective && o.wait_key == f.wait_key && o.wait_mask == f.wait_mask)
                    continue;
                char b[32];
                std::snprintf(b, sizeof b, ", but lane %u (thread ", l);
                return why + b + dim_str(o.tid).substr(0) + ") " + state_str(o);
            }
            return why;
        }
    }
    return "scheduler found no runnable thread in kernel " + std::string(w.launch->kernel->name);
}

bool run_block(Worker& w) {
    const unsigned n = w.nthreads;
    w.done = 0;
    w.at_barrier = 0;
    w.failed = false;
    w.in_collective.assign((n + kWarpSize - 1) / kWarpSize, 0);
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        f.state = kRunnable;
        if (f.user && f.user_free) f.user_free(f.user);
        f.user = nullptr;
        f.user_free = nullptr;
        prepare(w, i);
    }
    tl_block = &w.block;
    if (sigsetjmp(w.fault_jmp, 1) != 0) {
        // Back from the fault handler: the faulting fiber and the rest of the block are abandoned.
        tl_fiber = nullptr;
        return false;
    }
    w.in_kernel = true;
    w.order.resize(n);
    for (unsigned i = 0; i < n; ++i) w.order[i] = i;
    while (w.done < n) {
        bool ran = false;
        if (w.shuffle) {
            for (unsigned i = n - 1; i > 0; --i) {
                w.rng ^= w.rng << 13;
                w.rng ^= w.rng >> 7;
                w.rng ^= w.rng << 17;
                std::swap(w.order[i], w.order[w.rng % (i + 1)]);
            }
        }
        for (unsigned k = 0; k < n && !w.failed; ++k) {
            Fiber& f = w.fibers[w.order[k]];
            if (f.state != kRunnable) continue;
            ran = true;
            tl_fiber = &f;
            bitune_sim_switch(&w.sched_sp, f.sp);
        }
        if (w.failed) break;
        if (!ran && w.done < n) {
            w.failed = true;
            w.fail = deadlock(w);
        }
    }
    w.in_kernel = false;
    tl_fiber = nullptr;
    return !w.failed;
}

void setup_block(Worker& w, const Launch& l, unsigned char* smem) {
    w.launch = &l;
    w.block.dim = l.block;
    w.block.grid = l.grid;
    w.block.kernel = l.kernel;
    w.block.dyn_smem = smem;
    w.block.dyn_smem_bytes = l.dyn_smem;
    w.nthreads = l.block.x * l.block.y * l.block.z;
    w.fibers.resize(w.nthreads);  // loops over the block walk exactly its threads
    ensure_stacks(w, w.nthreads);
    for (unsigned i = 0; i < w.nthreads; ++i) {
        Fiber& f = w.fibers[i];
        f.linear = i;
        f.tid.x = i % l.block.x;
        f.tid.y = i / l.block.x % l.block.y;
        f.tid.z = i / (l.block.x * l.block.y);
    }
    install_handler();
    ensure_altstack(w);
}

Dim3 block_index(const Dim3& g, uint64_t i) {
    Dim3 b;
    b.x = (unsigned)(i % g.x);
    b.y = (unsigned)(i / g.x % g.y);
    b.z = (unsigned)(i / ((uint64_t)g.x * g.y));
    return b;
}

// Runs blocks `order[from..]` taken one at a time from `next`; the first failure stops everyone.
bool run_blocks(const Launch& l, const std::vector<uint64_t>* order, std::atomic<uint64_t>& next,
                uint64_t total, std::atomic<bool>& stop, std::string& err, std::mutex& err_mu,
                uint64_t seed) {
    Worker& w = worker();
    w.shuffle = seed != 0;
    w.rng = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    unsigned char* smem = nullptr;
    if (l.dyn_smem) smem = static_cast<unsigned char*>(alloc_shared(l.dyn_smem));
    setup_block(w, l, smem);
    bool ok = true;
    for (;;) {
        if (stop.load(std::memory_order_relaxed)) break;
        const uint64_t i = next.fetch_add(1);
        if (i >= total) break;
        w.block.idx = block_index(l.grid, order ? (*order)[i] : i);
        // Shared memory starts out as garbage on a GPU: NaN bytes make reads before writes show.
        if (smem) std::memset(smem, 0xff, l.dyn_smem);
        if (!run_block(w)) {
            std::lock_guard<std::mutex> g(err_mu);
            if (!stop.exchange(true)) err = w.fail;
            ok = false;
            break;
        }
    }
    for (Fiber& f : w.fibers)
        if (f.user && f.user_free) {
            f.user_free(f.user);
            f.user = nullptr;
        }
    if (smem) release_shared(smem);
    tl_block = nullptr;
    return ok;
}

unsigned env_unsigned(const char* name, unsigned dflt) {
    const char* v = std::getenv(name);
    if (!v || !*v) return dflt;
    return (unsigned)std::strtoul(v, nullptr, 10);
}

}  // namespace

bool run(const Launch& l, std::string& err) {
    const uint64_t total = (uint64_t)l.grid.x * l.grid.y * l.grid.z;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> stop{false};
    std::mutex err_mu;
    const unsigned threads = std::max(1u, env_unsigned("BITUNE_CUDA_SIM_THREADS", 1));
    const unsigned seed = env_unsigned("BITUNE_CUDA_SIM_SEED", 0);
    if (threads == 1 || total == 1) {
        if (!run_blocks(l, nullptr, next, total, stop, err, err_mu, seed)) {
            set_last_error(err);
            return false;
        }
        return true;
    }
    // Several OS threads, blocks in an order shuffled by the seed: results must not depend on it.
    std::vector<uint64_t> order(total);
    for (uint64_t i = 0; i < total; ++i) order[i] = i;
    uint64_t s = (seed + 1) * 0x9E3779B97F4A7C15ull + 1;
    for (uint64_t i = total - 1; i > 0; --i) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        std::swap(order[i], order[s % (i + 1)]);
    }
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < std::min<uint64_t>(threads, total); ++t)
        pool.emplace_back([&, t] { run_blocks(l, &order, next, total, stop, err, err_mu, seed ? seed + t : 0); });
    for (auto& t : pool) t.join();
    if (stop.load()) {
        set_last_error(err);
        return false;
    }
    return true;
}

// ---- what kernels call -------------------------------------------------------------------------

int barrier(int op, int pred, const char* file, int line) {
    Worker& w = *tl_worker;
    Fiber& f = *tl_fiber;
    f.state = kBarrier;
    f.wait_file = file;
    f.wait_line = line;
    f.wait_what = op == 0 ? "__syncthreads" : op == 1 ? "__syncthreads_or" : op == 2 ? "__syncthreads_and" : "__syncthreads_count";
    f.wait_key = reinterpret_cast<const void*>(static_cast<intptr_t>(op));
    f.wait_mask = pred ? 1u : 0u;
    ++w.at_barrier;
    if (w.done > 0) {
        // Some threads already left the kernel: this barrier can never complete.
        for (Fiber& o : w.fibers)
            if (o.state == kDone) {
                w.failed = true;
                w.fail = "barrier divergence in " + where(w, f) + ": it " + state_str(f) + ", but thread " +
                         dim_str(o.tid) + " exited without reaching it";
                to_scheduler(w, f);
            }
    }
    if (w.at_barrier < w.nthreads) {
        yield(w, f);
        if (f.state != kRunnable) std::abort();
        return static_cast<int>(reinterpret_cast<intptr_t>(f.wait_in));
    }
    // The last thread to arrive: every thread must be at this very barrier.
    int count = 0;
    for (Fiber& o : w.fibers) {
        if (o.wait_file != file || o.wait_line != line || o.wait_key != f.wait_key) {
            w.failed = true;
            w.fail = "barrier divergence in " + where(w, f) + ": it " + state_str(f) + ", but thread " +
                     dim_str(o.tid) + " " + state_str(o);
            to_scheduler(w, f);
        }
        count += (int)o.wait_mask;
    }
    const int result = op == 0 ? 0 : op == 1 ? (count > 0) : op == 2 ? (count == (int)w.nthreads) : count;
    for (Fiber& o : w.fibers) {
        o.state = kRunnable;
        o.wait_in = reinterpret_cast<const void*>(static_cast<intptr_t>(result));
    }
    w.at_barrier = 0;
    return result;
}

void warp_collective(unsigned mask, const void* in, void* out, Combine combine, const char* what,
                     const char* file, int line) {
    Worker& w = *tl_worker;
    Fiber& f = *tl_fiber;
    const unsigned lane = f.linear % kWarpSize, base = f.linear - lane;
    f.wait_what = what;
    f.wait_file = file;
    f.wait_line = line;
    f.wait_mask = mask;
    if (!(mask >> lane & 1u)) {
        f.state = kCollective;
        w.failed = true;
        char b[96];
        std::snprintf(b, sizeof b, ": the calling lane %u is not in its mask 0x%08x", lane, mask);
        w.fail = std::string(what) + " in " + where(w, f) + b;
        to_scheduler(w, f);
    }
    f.state = kCollective;
    f.wait_key = reinterpret_cast<const void*>(combine);
    f.wait_in = in;
    f.wait_out = out;
    unsigned& waiting = w.in_collective[f.linear / kWarpSize];
    ++waiting;
    if (waiting < (unsigned)__builtin_popcount(mask) && base + kWarpSize <= w.nthreads) {
        yield(w, f);  // not all named lanes can be here yet
        return;
    }
    const void* ins[kWarpSize] = {};
    void* outs[kWarpSize] = {};
    for (unsigned l = 0; l < kWarpSize; ++l) {
        if (!(mask >> l & 1u)) continue;
        const unsigned t = base + l;
        if (t >= w.nthreads) {
            w.failed = true;
            char b[128];
            std::snprintf(b, sizeof b, ": mask 0x%08x names lane %u, which does not exist (%u threads per block)",
                          mask, l, w.nthreads);
            w.fail = site(f) + " in " + where(w, f) + b;
            to_scheduler(w, f);
        }
        Fiber& o = w.fibers[t];
        if (o.state != kCollective || o.wait_key != f.wait_key || o.wait_mask != mask) {
            if (o.state == kCollective && o.wait_mask != mask && (o.wait_mask >> lane & 1u)) {
                w.failed = true;
                char b[128];
                std::snprintf(b, sizeof b, ": lane %u waits with mask 0x%08x, lane %u with 0x%08x", lane, mask, l,
                              o.wait_mask);
                w.fail = "mismatched warp collective in " + where(w, f) + b + " (" + site(f) + " / " + site(o) + ")";
                to_scheduler(w, f);
            }
            yield(w, f);
            return;  // a later lane completed the collective and wrote `out`
        }
        ins[l] = o.wait_in;
        outs[l] = o.wait_out;
    }
    // The last named lane to arrive runs the exchange for everyone.
    combine(mask, ins, outs);
    for (unsigned l = 0; l < kWarpSize; ++l)
        if (mask >> l & 1u) w.fibers[base + l].state = kRunnable;
    waiting -= (unsigned)__builtin_popcount(mask);
}

void trap(const char* what, const char* file, int line) {
    Worker& w = *tl_worker;
    Fiber& f = *tl_fiber;
    char b[32];
    std::snprintf(b, sizeof b, ":%d", line);
    const char* k = std::strstr(file, "kernels/");
    w.failed = true;
    w.fail = std::string(what) + " at " + (k ? k : file) + b + " in " + where(w, f);
    to_scheduler(w, f);
}

}  // namespace sim
