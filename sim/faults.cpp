// Faults inside a kernel: an out-of-bounds access hits a guard page (memory.cpp); the handler
// names kernel, block, thread and the allocation missed, and jumps back to the scheduler so the
// launch fails and the process lives on. Faults outside kernels go to the previous handler.
#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <dlfcn.h>
#include <ucontext.h>

#include "worker.h"

namespace sim::detail {
namespace {

struct sigaction g_old_segv, g_old_bus, g_old_ill;

// " (in attention_fwd+0x1a4)": the function the faulting instruction belongs to, when the
// dynamic symbol table names it (kernels and their out-of-line helpers do).
std::string function_at(void* uctx) {
    const auto* uc = static_cast<const ucontext_t*>(uctx);
#if defined(__x86_64__)
    void* pc = reinterpret_cast<void*>(uc->uc_mcontext.gregs[REG_RIP]);
#elif defined(__aarch64__)
    void* pc = reinterpret_cast<void*>(uc->uc_mcontext.pc);
#endif
    Dl_info info;
    if (!dladdr(pc, &info) || !info.dli_sname) return "";
    char b[64];
    std::snprintf(b, sizeof b, "+0x%llx)", (unsigned long long)((char*)pc - (char*)info.dli_saddr));
    return std::string(" (in ") + info.dli_sname + b;
}
std::once_flag g_handler_once;

void on_fault(int sig, siginfo_t* info, void* uctx) {
    Worker* w = tl_worker;
    if (w && w->in_kernel) {
        w->in_kernel = false;
        const Fiber* f = tl_fiber;
        std::string who = f ? where(*w, *f) : std::string("kernel ") + w->launch->kernel->name;
        char b[64];
        std::snprintf(b, sizeof b, "%p", info->si_addr);
        if (sig == SIGILL) {
            // Kernels are compiled with -fsanitize=bounds trapping: an index outside a fixed-size
            // array (a static __shared__ array, a register array) executes ud2.
            w->fail = "out-of-bounds index into a fixed-size array (a static __shared__ or local array) in " + who +
                      function_at(uctx);
        } else {
            // x86 reports a general-protection fault (a misaligned aligned-vector access, a
            // non-canonical address) with address 0, like a null dereference.
            const std::string what = info->si_addr == nullptr
                                         ? "null pointer or misaligned vector access"
                                         : sig == SIGBUS ? "misaligned or invalid access"
                                                         : "out-of-bounds access";
            w->fail = what + " at " + b + " in " + who + function_at(uctx) + ": " +
                      describe_address(info->si_addr);
        }
        w->failed = true;
        siglongjmp(w->fault_jmp, 1);
    }
    // Not ours: hand over to whoever was installed before (Rust's stack-overflow handler, or the
    // default action).
    struct sigaction& old = sig == SIGBUS ? g_old_bus : sig == SIGILL ? g_old_ill : g_old_segv;
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

}  // namespace

void install_handler() {
    std::call_once(g_handler_once, [] {
        struct sigaction sa;
        std::memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
        sigaction(SIGILL, &sa, &g_old_ill);
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

}  // namespace sim::detail
