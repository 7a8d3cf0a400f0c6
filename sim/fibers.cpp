// Fibers of the simulator: one per CUDA thread, each on its own stack with a guard page below,
// switched by a few lines of assembly (callee-saved registers and the FP control words), so a
// switch costs tens of nanoseconds rather than a signal-mask system call.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <sys/mman.h>
#include <unistd.h>

#include "worker.h"

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

namespace sim::detail {

thread_local Worker* tl_worker = nullptr;
// Owns tl_worker, so that a thread's stacks are unmapped when it exits (test harnesses launch from
// many short-lived threads; leaked stacks would exhaust the process's memory mappings).
thread_local std::unique_ptr<Worker> tl_worker_owner;

Worker::~Worker() {
    if (stacks) munmap(stacks, stack_slots * (kStack + page));
}

Worker& worker() {
    if (!tl_worker) {
        tl_worker_owner = std::make_unique<Worker>();
        tl_worker = tl_worker_owner.get();
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

void yield(Worker& w, Fiber& f) { bitune_sim_switch(&f.sp, w.sched_sp); }

void resume(Worker& w, Fiber& f) { bitune_sim_switch(&w.sched_sp, f.sp); }

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

}  // namespace sim::detail
