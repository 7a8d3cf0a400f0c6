// Internal to the simulator's runtime (scheduler.cpp, fibers.cpp, faults.cpp): the state one OS
// thread keeps to run blocks, and the helpers those files share. Not included by kernels.
#pragma once
#include <csetjmp>
#include <string>
#include <vector>

#include "runtime.h"

namespace sim::detail {

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

    ~Worker();
};

extern thread_local Worker* tl_worker;
// The calling OS thread's worker, made on first use; lives as long as the thread.
Worker& worker();

// "(x,y,z)"; "kernel K, block (..), thread (..)"; "__syncthreads at kernels/f.cu:12"; what a
// thread is doing, for error messages.
std::string dim_str(const Dim3& d);
std::string where(const Worker& w, const Fiber& f);
std::string site(const Fiber& f);
std::string state_str(const Fiber& f);

// Fibers (fibers.cpp): give the OS thread its scheduler back — for good (a finished or failing
// fiber), or until the scheduler resumes this fiber.
[[noreturn]] void to_scheduler(Worker& w, Fiber& f);
void yield(Worker& w, Fiber& f);
// Enters fiber `f` from the scheduler; returns when it yields, blocks, exits or fails.
void resume(Worker& w, Fiber& f);
// Stacks for n fibers, and fiber i laid out to start the kernel on its next resume.
void ensure_stacks(Worker& w, unsigned n);
void prepare(Worker& w, unsigned i);

// Faults (faults.cpp): SIGSEGV/SIGBUS inside a kernel become a launch failure.
void install_handler();
void ensure_altstack(Worker& w);

}  // namespace sim::detail
