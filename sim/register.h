// Included by the registration units build.rs generates (one per kernels/*.cu, after the kernel
// source): turns each `extern "C"` kernel into a registry entry whose invoker reads the arguments
// out of cuLaunchKernel's parameter array with the kernel's own parameter types.
#pragma once
#include <cstddef>
#include <utility>

#include "runtime.h"

namespace sim {

template <class... A, size_t... I>
void call_with(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(p[I])...);
}

template <class... A>
void invoke_as(void* fn, void** params) {
    call_with(reinterpret_cast<void (*)(A...)>(fn), params, std::index_sequence_for<A...>{});
}

template <class... A>
const unsigned* sizes_of() {
    static const unsigned sizes[] = {(unsigned)sizeof(A)..., 0u};
    return sizes;
}

template <class... A>
bool add_kernel(const char* module, const char* name, void (*f)(A...), unsigned max_threads) {
    register_kernel(Kernel{module, name, reinterpret_cast<void*>(f), &invoke_as<A...>, max_threads,
                           (unsigned)sizeof...(A), sizes_of<A...>()});
    return true;
}

inline bool add_module(const char* name, uint64_t size, uint64_t hash) {
    register_module(Module{name, size, hash});
    return true;
}

}  // namespace sim
