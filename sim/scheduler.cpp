// The simulator's scheduler: runs a grid block by block, each block's threads as fibers resumed
// in sweeps until all exit; barriers and warp collectives are rendezvous of the threads they
// name, completed by the last one to arrive; a block where no thread can move on is reported.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "worker.h"

namespace sim {

thread_local Block* tl_block = nullptr;
thread_local Fiber* tl_fiber = nullptr;

using namespace detail;

namespace {

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
                return why + b + dim_str(o.tid) + ") " + state_str(o);
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
            resume(w, f);
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

// OS threads that run blocks in parallel (BITUNE_CUDA_SIM_THREADS), started once and kept: each
// keeps its fibers' stacks between launches, and a launch costs a wake-up rather than a thread.
// Launches are serialised by the driver stand-in, so one job runs at a time.
class Pool {
public:
    void run(unsigned n, const std::function<void(unsigned)>& job) {
        std::unique_lock<std::mutex> g(mu_);
        while (threads_.size() < n) {
            const unsigned id = (unsigned)threads_.size();
            threads_.emplace_back([this, id] { serve(id); });
        }
        job_ = &job;
        active_ = n;
        pending_ = n;
        ++generation_;
        wake_.notify_all();
        done_.wait(g, [&] { return pending_ == 0; });
        job_ = nullptr;
    }

private:
    void serve(unsigned id) {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> g(mu_);
        for (;;) {
            wake_.wait(g, [&] { return generation_ != seen; });
            seen = generation_;
            if (id >= active_) continue;
            const std::function<void(unsigned)>* job = job_;
            g.unlock();
            (*job)(id);
            g.lock();
            if (--pending_ == 0) done_.notify_all();
        }
    }

    std::mutex mu_;
    std::condition_variable wake_, done_;
    std::vector<std::thread> threads_;
    const std::function<void(unsigned)>* job_ = nullptr;
    unsigned active_ = 0, pending_ = 0;
    uint64_t generation_ = 0;
};

// Never destroyed: its threads block forever between launches and die with the process.
Pool& pool() {
    static Pool* p = new Pool();
    return *p;
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
    const unsigned n = (unsigned)std::min<uint64_t>(threads, total);
    pool().run(n, [&](unsigned t) { run_blocks(l, &order, next, total, stop, err, err_mu, seed ? seed + t : 0); });
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
