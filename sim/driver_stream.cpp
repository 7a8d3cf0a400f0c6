// The libcuda stand-in, part 3 of 4: streams, events, stream capture and graphs.
//
// Execution model: the simulated device runs every operation synchronously, at submission, on the
// submitting thread, serialised across threads by the device lock (exec_mutex); so a stream is only
// a handle, stream/event/context synchronisation return at once, and event timestamps are the wall
// clock at record time. The exception is a stream in capture: its operations (launches with their
// parameter values copied, copies, memsets, frees, host functions, cuBLAS calls) are appended to
// the capture's graph and run, in capture order, at each cuGraphLaunch. Capture order is a valid
// order for any graph built by capture across forked/joined streams, since an operation can only
// depend on operations captured before it.
//
// Capture rules enforced as a real driver does: no capture of the default (legacy/per-thread)
// stream; synchronising or querying a capturing stream, querying/synchronising an event recorded in
// an active capture, waiting in a capturing stream on an event recorded outside the capture, and
// (global / this thread's thread-local captures) synchronous allocation, free, copy, memset and
// cuCtxSynchronize all fail and invalidate the capture; ending it then reports
// CUDA_ERROR_STREAM_CAPTURE_INVALIDATED. Not enforced: that forked streams rejoin the origin stream
// before cuStreamEndCapture (they are simply detached).
#include <cstring>

#include "driver_internal.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

using namespace simdrv;

struct SimEvent {
    unsigned flags = 0;
    bool recorded = false;
    Clock::time_point t;
    std::weak_ptr<Capture> captured;   // set while last recorded in a capturing stream
};

struct SimGraph {
    std::shared_ptr<GraphData> data;
};

struct SimGraphExec {
    std::shared_ptr<GraphData> data;
};

namespace {

SimStream g_default;                  // the NULL / legacy / per-thread default stream
std::set<SimStream*> g_streams;       // live created streams
std::set<SimEvent*> g_events;
std::set<SimGraph*> g_graphs;
std::set<SimGraphExec*> g_execs;
std::vector<std::shared_ptr<Capture>> g_captures;   // active captures
uint64_t g_next_capture_id = 1;

std::string sname(CUstream h) { return h ? hex(static_cast<void*>(h)) : std::string("the default stream"); }

SimEvent* event_of(CUevent e) { return e && g_events.count(e) ? e : nullptr; }

// Caller holds the table lock.
void invalidate(const std::shared_ptr<Capture>& c) {
    if (c) c->invalidated = true;
}

// Ends capture `c`: detaches every stream capturing into it. Caller holds the table lock.
void detach_all(const std::shared_ptr<Capture>& c) {
    c->active = false;
    if (c->graph) hand_over(*c->graph);
    if (g_default.capture == c) g_default.capture.reset();
    for (SimStream* s : g_streams)
        if (s->capture == c) s->capture.reset();
    for (size_t i = 0; i < g_captures.size(); ++i)
        if (g_captures[i] == c) {
            g_captures.erase(g_captures.begin() + static_cast<long>(i));
            break;
        }
}

// Runs a graph's nodes in order under the device lock; the first failure stops it.
CUresult replay(const std::shared_ptr<GraphData>& g) {
    std::lock_guard<std::recursive_mutex> lock(exec_mutex());
    for (const Op& op : g->nodes)
        if (CUresult r = op()) return r;
    return CUDA_SUCCESS;
}

}  // namespace

namespace simdrv {

bool is_default_stream(CUstream h) {
    uintptr_t v = reinterpret_cast<uintptr_t>(h);
    return v == 0 || v == 1 || v == 2;   // NULL, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD
}

SimStream* stream_of(CUstream h) {
    if (is_default_stream(h)) return &g_default;
    return g_streams.count(h) ? h : nullptr;
}

CUresult stream_capture(CUstream h, const char* call, std::shared_ptr<Capture>* cap) {
    SimStream* s = stream_of(h);
    if (!s) return fail(CUDA_ERROR_INVALID_HANDLE, std::string(call) + ": " + sname(h) + " is not a live stream");
    *cap = s->capture;
    return CUDA_SUCCESS;
}

CUresult submit(CUstream stream, const char* call, Op op, std::string what) {
    {
        std::lock_guard<std::mutex> g(table_mutex());
        std::shared_ptr<Capture> cap;
        if (CUresult r = stream_capture(stream, call, &cap)) return r;
        if (cap) {
            if (cap->invalidated)
                return fail(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                            std::string(call) + ": the capture of " + sname(stream) + " was invalidated by an earlier error");
            cap->graph->nodes.push_back(std::move(op));
            cap->graph->what.push_back(std::move(what));
            return CUDA_SUCCESS;
        }
    }
    std::lock_guard<std::recursive_mutex> g(exec_mutex());
    return op();
}

CUresult forbid_during_capture(const char* call) {
    std::lock_guard<std::mutex> g(table_mutex());
    bool forbidden = false;
    for (auto& c : g_captures)
        if (c->mode == 0 || (c->mode == 1 && c->thread == std::this_thread::get_id())) {
            forbidden = true;
            invalidate(c);
        }
    if (!forbidden) return CUDA_SUCCESS;
    return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                std::string(call) + ": not permitted while a stream capture is active (the capture is now invalidated)");
}

}  // namespace simdrv

// ---- streams -----------------------------------------------------------------------------------------
EXPORT CUresult cuStreamCreateWithPriority(CUstream* ph, unsigned int flags, int priority) {
    if (!ph) return CUDA_ERROR_INVALID_VALUE;
    if (flags > 1) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate: unknown flags " + std::to_string(flags));
    auto* s = new SimStream;
    s->flags = flags;
    s->priority = priority < -5 ? -5 : (priority > 0 ? 0 : priority);
    std::lock_guard<std::mutex> g(table_mutex());
    g_streams.insert(s);
    *ph = s;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamCreate(CUstream* ph, unsigned int flags) { return cuStreamCreateWithPriority(ph, flags, 0); }

EXPORT CUresult cuStreamDestroy_v2(CUstream h) {
    std::lock_guard<std::mutex> g(table_mutex());
    if (is_default_stream(h) || !g_streams.count(h))
        return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy: " + sname(h) + " is not a live created stream");
    if (h->capture) {
        invalidate(h->capture);
        if (h->capture->origin == h) detach_all(h->capture);   // abandoned: nobody can end it
    }
    g_streams.erase(h);
    delete h;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamDestroy(CUstream h) { return cuStreamDestroy_v2(h); }

static CUresult sync_like(CUstream h, const char* call) {
    std::lock_guard<std::mutex> g(table_mutex());
    SimStream* s = stream_of(h);
    if (!s) return fail(CUDA_ERROR_INVALID_HANDLE, std::string(call) + ": " + sname(h) + " is not a live stream");
    if (s->capture) {
        invalidate(s->capture);
        return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                    std::string(call) + ": " + sname(h) + " is capturing (the capture is now invalidated)");
    }
    return CUDA_SUCCESS;
}

// All work already ran at submission.
EXPORT CUresult cuStreamSynchronize(CUstream h) { return sync_like(h, "cuStreamSynchronize"); }
EXPORT CUresult cuStreamQuery(CUstream h) { return sync_like(h, "cuStreamQuery"); }

EXPORT CUresult cuCtxSynchronize() { return forbid_during_capture("cuCtxSynchronize"); }

EXPORT CUresult cuStreamGetPriority(CUstream h, int* priority) {
    if (!priority) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    SimStream* s = stream_of(h);
    if (!s) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamGetPriority: " + sname(h) + " is not a live stream");
    *priority = s->priority;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamGetFlags(CUstream h, unsigned int* flags) {
    if (!flags) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    SimStream* s = stream_of(h);
    if (!s) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamGetFlags: " + sname(h) + " is not a live stream");
    *flags = s->flags;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamWaitEvent(CUstream h, CUevent ev, unsigned int /*flags*/) {
    std::lock_guard<std::mutex> g(table_mutex());
    SimStream* s = stream_of(h);
    if (!s) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamWaitEvent: " + sname(h) + " is not a live stream");
    SimEvent* e = event_of(ev);
    if (!e) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamWaitEvent: " + hex(static_cast<void*>(ev)) + " is not a live event");
    std::shared_ptr<Capture> ec = e->captured.lock();
    if (ec && !ec->active) ec.reset();
    if (ec) {
        if (!s->capture) {
            if (is_default_stream(h))
                return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamWaitEvent: the default stream cannot join a capture");
            s->capture = ec;   // fork: the stream joins the capture
        } else if (s->capture != ec) {
            invalidate(s->capture);
            invalidate(ec);
            return fail(CUDA_ERROR_STREAM_CAPTURE_MERGE,
                        "cuStreamWaitEvent: the event belongs to a different capture than " + sname(h));
        }
        return CUDA_SUCCESS;
    }
    if (s->capture && e->recorded) {
        invalidate(s->capture);
        return fail(CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
                    "cuStreamWaitEvent: " + sname(h) + " is capturing and the event was recorded outside the capture "
                    "(with cudarc, disable event tracking or record the event inside the capture)");
    }
    return CUDA_SUCCESS;   // all recorded work is complete
}

EXPORT CUresult cuLaunchHostFunc(CUstream h, CUhostFn fn, void* user) {
    if (!fn) return fail(CUDA_ERROR_INVALID_VALUE, "cuLaunchHostFunc: null function");
    return submit(h, "cuLaunchHostFunc", [fn, user] { fn(user); return CUDA_SUCCESS; }, "host function");
}

// Hook for the cuBLAS stand-in (see driver_internal.h).
EXPORT int bitune_sim_submit(void* stream, int (*run)(void* arg), void* arg, void (*drop)(void* arg), const char* what) {
    std::shared_ptr<void> holder(arg, [drop](void* a) {
        if (drop) drop(a);
    });
    return submit(static_cast<CUstream>(stream), what ? what : "bitune_sim_submit",
                  [holder, run] { return run(holder.get()); }, what ? what : "");
}

// ---- events ------------------------------------------------------------------------------------------
EXPORT CUresult cuEventCreate(CUevent* ph, unsigned int flags) {
    if (!ph) return CUDA_ERROR_INVALID_VALUE;
    if (flags & ~7u) return fail(CUDA_ERROR_INVALID_VALUE, "cuEventCreate: unknown flags " + std::to_string(flags));
    auto* e = new SimEvent;
    e->flags = flags;
    std::lock_guard<std::mutex> g(table_mutex());
    g_events.insert(e);
    *ph = e;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventRecord(CUevent ev, CUstream h) {
    std::lock_guard<std::mutex> g(table_mutex());
    SimEvent* e = event_of(ev);
    if (!e) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord: " + hex(static_cast<void*>(ev)) + " is not a live event");
    SimStream* s = stream_of(h);
    if (!s) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord: " + sname(h) + " is not a live stream");
    if (s->capture) {
        if (s->capture->invalidated)
            return fail(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "cuEventRecord: the capture was invalidated by an earlier error");
        e->captured = s->capture;   // a captured record: marks a point of the graph, no timestamp
        return CUDA_SUCCESS;
    }
    e->captured.reset();
    e->recorded = true;
    e->t = Clock::now();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventRecordWithFlags(CUevent ev, CUstream h, unsigned int /*flags*/) { return cuEventRecord(ev, h); }

static CUresult event_wait_like(CUevent ev, const char* call) {
    std::lock_guard<std::mutex> g(table_mutex());
    SimEvent* e = event_of(ev);
    if (!e) return fail(CUDA_ERROR_INVALID_HANDLE, std::string(call) + ": " + hex(static_cast<void*>(ev)) + " is not a live event");
    std::shared_ptr<Capture> c = e->captured.lock();
    if (c && c->active) {
        invalidate(c);
        return fail(CUDA_ERROR_CAPTURED_EVENT,
                    std::string(call) + ": the event was last recorded in a stream that is capturing (the capture is now invalidated)");
    }
    return CUDA_SUCCESS;   // recorded work is always complete
}
EXPORT CUresult cuEventQuery(CUevent ev) { return event_wait_like(ev, "cuEventQuery"); }
EXPORT CUresult cuEventSynchronize(CUevent ev) { return event_wait_like(ev, "cuEventSynchronize"); }

static CUresult elapsed(float* ms, CUevent a, CUevent b) {
    if (!ms) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    SimEvent* s = event_of(a);
    SimEvent* e = event_of(b);
    if (!s || !e) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: not a live event");
    if ((s->flags | e->flags) & 2)
        return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: an event was created with CU_EVENT_DISABLE_TIMING");
    if (!s->recorded || !e->recorded)
        return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: an event has not been recorded");
    *ms = std::chrono::duration<float, std::milli>(e->t - s->t).count();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return elapsed(ms, a, b); }
EXPORT CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) { return elapsed(ms, a, b); }

EXPORT CUresult cuEventDestroy_v2(CUevent ev) {
    std::lock_guard<std::mutex> g(table_mutex());
    if (!event_of(ev)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuEventDestroy: " + hex(static_cast<void*>(ev)) + " is not a live event");
    g_events.erase(ev);
    delete ev;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventDestroy(CUevent ev) { return cuEventDestroy_v2(ev); }

// ---- capture -----------------------------------------------------------------------------------------
EXPORT CUresult cuStreamBeginCapture_v2(CUstream h, int mode) {
    if (mode < 0 || mode > 2) return fail(CUDA_ERROR_INVALID_VALUE, "cuStreamBeginCapture: unknown mode " + std::to_string(mode));
    std::lock_guard<std::mutex> g(table_mutex());
    if (is_default_stream(h))
        return fail(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture: the default stream cannot be captured; use a created stream");
    SimStream* s = stream_of(h);
    if (!s) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamBeginCapture: " + sname(h) + " is not a live stream");
    if (s->capture) return fail(CUDA_ERROR_ILLEGAL_STATE, "cuStreamBeginCapture: " + sname(h) + " is already capturing");
    auto c = std::make_shared<Capture>();
    c->graph = std::make_shared<GraphData>();
    c->mode = mode;
    c->id = g_next_capture_id++;
    c->origin = h;
    c->thread = std::this_thread::get_id();
    s->capture = c;
    g_captures.push_back(c);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamBeginCapture(CUstream h, int mode) { return cuStreamBeginCapture_v2(h, mode); }

EXPORT CUresult cuStreamEndCapture(CUstream h, CUgraph* out) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    std::shared_ptr<GraphData> dropped;   // released after the lock (frees graph-owned memory)
    std::lock_guard<std::mutex> g(table_mutex());
    SimStream* s = stream_of(h);
    if (!s) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamEndCapture: " + sname(h) + " is not a live stream");
    std::shared_ptr<Capture> c = s->capture;
    if (!c) return fail(CUDA_ERROR_ILLEGAL_STATE, "cuStreamEndCapture: " + sname(h) + " is not capturing");
    if (c->origin != h) {
        invalidate(c);
        return fail(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "cuStreamEndCapture: capture must be ended in the stream that began it");
    }
    if (c->mode != 2 && c->thread != std::this_thread::get_id())
        return fail(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD, "cuStreamEndCapture: capture began on another thread");
    detach_all(c);
    *out = nullptr;
    if (c->invalidated) {
        dropped = std::move(c->graph);
        return fail(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                    "cuStreamEndCapture: the capture was invalidated by an earlier error (see the previous message)");
    }
    auto* graph = new SimGraph{c->graph};
    g_graphs.insert(graph);
    *out = graph;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamIsCapturing(CUstream h, int* status) {
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    SimStream* s = stream_of(h);
    if (!s) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamIsCapturing: " + sname(h) + " is not a live stream");
    *status = !s->capture ? 0 : (s->capture->invalidated ? 2 : 1);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamGetCaptureInfo_v3(CUstream h, int* status, uint64_t* id, CUgraph* graph,
                                          const void** deps, const void** edges, size_t* ndeps) {
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    SimStream* s = stream_of(h);
    if (!s) return fail(CUDA_ERROR_INVALID_HANDLE, "cuStreamGetCaptureInfo: " + sname(h) + " is not a live stream");
    *status = !s->capture ? 0 : (s->capture->invalidated ? 2 : 1);
    if (id && s->capture) *id = s->capture->id;
    if (graph) *graph = nullptr;   // the graph under construction is not exposed
    if (deps) *deps = nullptr;
    if (edges) *edges = nullptr;
    if (ndeps) *ndeps = 0;
    return CUDA_SUCCESS;
}

// ---- graphs ------------------------------------------------------------------------------------------
EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec* out, CUgraph graph, unsigned long long flags) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    if (!graph || !g_graphs.count(graph))
        return fail(CUDA_ERROR_INVALID_HANDLE, "cuGraphInstantiate: " + hex(static_cast<void*>(graph)) + " is not a live graph");
    // AUTO_FREE_ON_LAUNCH 1, UPLOAD 2, DEVICE_LAUNCH 4, USE_NODE_PRIORITY 8.
    if ((flags & ~0xFull) || ((flags & 1) && (flags & 4)))
        return fail(CUDA_ERROR_INVALID_VALUE, "cuGraphInstantiate: invalid flags " + std::to_string(flags));
    auto* e = new SimGraphExec{graph->data};
    g_execs.insert(e);
    *out = e;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream h) {
    std::shared_ptr<GraphData> data;
    {
        std::lock_guard<std::mutex> g(table_mutex());
        if (!exec || !g_execs.count(exec))
            return fail(CUDA_ERROR_INVALID_HANDLE, "cuGraphLaunch: " + hex(static_cast<void*>(exec)) + " is not a live graph exec");
        data = exec->data;
    }
    return submit(h, "cuGraphLaunch", [data] { return replay(data); },
                  "graph of " + std::to_string(data->nodes.size()) + " nodes");
}

EXPORT CUresult cuGraphUpload(CUgraphExec exec, CUstream h) {
    std::lock_guard<std::mutex> g(table_mutex());
    if (!exec || !g_execs.count(exec)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuGraphUpload: not a live graph exec");
    if (!stream_of(h)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuGraphUpload: " + sname(h) + " is not a live stream");
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphExecDestroy(CUgraphExec exec) {
    std::shared_ptr<GraphData> dropped;
    std::lock_guard<std::mutex> g(table_mutex());
    if (!exec || !g_execs.count(exec)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuGraphExecDestroy: not a live graph exec");
    g_execs.erase(exec);
    dropped = std::move(exec->data);
    delete exec;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphDestroy(CUgraph graph) {
    std::shared_ptr<GraphData> dropped;
    std::lock_guard<std::mutex> g(table_mutex());
    if (!graph || !g_graphs.count(graph)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuGraphDestroy: not a live graph");
    g_graphs.erase(graph);
    dropped = std::move(graph->data);
    delete graph;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphGetNodes(CUgraph graph, void** nodes, size_t* count) {
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> g(table_mutex());
    if (!graph || !g_graphs.count(graph)) return fail(CUDA_ERROR_INVALID_HANDLE, "cuGraphGetNodes: not a live graph");
    if (nodes) return fail(CUDA_ERROR_NOT_SUPPORTED, "cuGraphGetNodes: node handles are not simulated (count only)");
    *count = graph->data->nodes.size();
    return CUDA_SUCCESS;
}
