// The libcublas stand-in (BITUNE_CUDA_SIM=1): what cudarc's CudaBlas::new and its Gemm impls call
// (cublasCreate_v2 / SetStream_v2 / Destroy_v2, cublasSgemm_v2, cublasSgemmStridedBatched,
// cublasGemmEx / cublasGemmStridedBatchedEx with f32, bf16 and f16 operands) plus the handle
// settings around them (math mode, pointer mode, workspace), the f64 variants and gemv (cudarc's
// Gemv trait: cublasSgemv_v2 / cublasDgemv_v2, positive increments only).
//
// Semantics are cuBLAS's, column-major: C = alpha·op(A)·op(B) + beta·C, op one of N, T, C (= T for
// real types), with leading dimensions and, batched, element strides per matrix. As in reference
// BLAS: beta == 0 means C is not read (NaN or garbage in C does not propagate), alpha == 0 means
// A and B are not read. Arguments are validated as cuBLAS does (CUBLAS_STATUS_INVALID_VALUE for
// negative sizes, leading dimensions too small, a bad op or batch count), and, beyond cuBLAS, every
// matrix of every batch must lie inside one live device allocation (else INVALID_VALUE with a
// message through sim::set_last_error).
//
// Arithmetic: products accumulate in double (f64 exact-enough reference; cuBLAS's f32 accumulation
// differs by rounding only); the result alpha·acc + beta·c is rounded to float (compute type 32F)
// then to C's type (round-to-nearest-even for bf16/f16). Reduced-precision compute types round the
// INPUTS first, as the tensor cores do: CUBLAS_COMPUTE_32F_FAST_TF32 (and single precision under
// CUBLAS_TF32_TENSOR_OP_MATH) to TF32 (10-bit mantissa, nearest, ties away), _FAST_16BF to bf16,
// _FAST_16F to f16.
//
// Execution goes through the libcuda stand-in's bitune_sim_submit: it runs now on the handle's
// stream, or is recorded into the stream's capture and replayed by cuGraphLaunch (the operands are
// re-checked at replay). This library is linked against the libcuda stand-in, which provides the
// sim:: runtime symbols.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "runtime.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

extern "C" int bitune_sim_submit(void* stream, int (*run)(void* arg), void* arg, void (*drop)(void* arg), const char* what);

typedef int cublasStatus_t;
enum : int {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16,
};

// cudaDataType_t
enum : int { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
// cublasComputeType_t
enum : int {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_16F_PEDANTIC = 65,
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,
    CUBLAS_COMPUTE_64F = 70,
    CUBLAS_COMPUTE_64F_PEDANTIC = 71,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
};
// cublasMath_t
enum : int { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TENSOR_OP_MATH = 1, CUBLAS_PEDANTIC_MATH = 2, CUBLAS_TF32_TENSOR_OP_MATH = 3 };

struct SimBlas {
    void* stream = nullptr;
    int math_mode = CUBLAS_DEFAULT_MATH;
    int pointer_mode = 0;   // 0 host, 1 device
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
};
typedef SimBlas* cublasHandle_t;

namespace {

// ---- number formats ---------------------------------------------------------------------------------
enum class DT { F32, F64, F16, BF16 };
enum class Round { None, TF32, BF16, F16 };

size_t dt_size(DT t) { return t == DT::F64 ? 8 : t == DT::F32 ? 4 : 2; }
const char* dt_name(DT t) { return t == DT::F64 ? "f64" : t == DT::F32 ? "f32" : t == DT::F16 ? "f16" : "bf16"; }

float bits_f(uint32_t b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}
uint32_t f_bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}

float bf16_to_f(uint16_t h) { return bits_f(uint32_t(h) << 16); }
uint16_t f_to_bf16(float f) {
    uint32_t b = f_bits(f);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((b >> 16) | 0x40);   // quiet NaN
    b += 0x7FFFu + ((b >> 16) & 1u);
    return uint16_t(b >> 16);
}

float f16_to_f(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0x1F) return bits_f(sign | 0x7F800000u | (man << 13));
    if (exp == 0) {
        float v = std::ldexp(float(man), -24);
        return sign ? -v : v;
    }
    return bits_f(sign | ((exp + 112) << 23) | (man << 13));
}
uint16_t f_to_f16(float f) {
    const uint32_t b = f_bits(f);
    const uint16_t sign = uint16_t((b >> 16) & 0x8000u);
    const uint32_t a = b & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return uint16_t(sign | 0x7E00u);   // NaN
    if (a >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // rounds to >= 65520: inf
    if (a < 0x38800000u) {                                  // below the smallest normal 2^-14: subnormal
        const float v = bits_f(a);
        const float scaled = v * 16777216.0f;               // units of 2^-24, exact
        return uint16_t(sign | uint16_t(std::nearbyint(scaled)));   // default rounding: nearest even
    }
    uint32_t m = a + 0xFFFu + ((a >> 13) & 1u);             // round to nearest even at bit 13
    return uint16_t(sign | uint16_t(((m >> 13) - (112u << 10)) & 0x7FFFu));
}

float to_tf32(float f) {
    uint32_t b = f_bits(f);
    if ((b & 0x7F800000u) == 0x7F800000u) return f;          // inf / NaN unchanged
    b = (b + 0x1000u) & ~0x1FFFu;                            // nearest, ties away from zero
    return bits_f(b);
}

double load(const void* p, DT t, size_t i) {
    switch (t) {
        case DT::F32: return static_cast<const float*>(p)[i];
        case DT::F64: return static_cast<const double*>(p)[i];
        case DT::F16: return f16_to_f(static_cast<const uint16_t*>(p)[i]);
        case DT::BF16: return bf16_to_f(static_cast<const uint16_t*>(p)[i]);
    }
    return 0;
}

void store(void* p, DT t, size_t i, double v) {
    switch (t) {
        case DT::F32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
        case DT::F64: static_cast<double*>(p)[i] = v; break;
        case DT::F16: static_cast<uint16_t*>(p)[i] = f_to_f16(static_cast<float>(v)); break;
        case DT::BF16: static_cast<uint16_t*>(p)[i] = f_to_bf16(static_cast<float>(v)); break;
    }
}

float round_input(float v, Round r) {
    switch (r) {
        case Round::None: return v;
        case Round::TF32: return to_tf32(v);
        case Round::BF16: return bf16_to_f(f_to_bf16(v));
        case Round::F16: return f16_to_f(f_to_f16(v));
    }
    return v;
}

// ---- one GEMM call ------------------------------------------------------------------------------------
struct Gemm {
    std::string call;
    int opa = 0, opb = 0;
    int m = 0, n = 0, k = 0;
    const void* A = nullptr;
    const void* B = nullptr;
    void* C = nullptr;
    DT at = DT::F32, bt = DT::F32, ct = DT::F32;
    int lda = 0, ldb = 0, ldc = 0;
    long long sa = 0, sb = 0, sc = 0;
    int batch = 1;
    DT scalar = DT::F32;            // type of alpha and beta
    bool device_scalars = false;    // alpha/beta are device pointers, read when the GEMM runs
    const void* alpha_p = nullptr;
    const void* beta_p = nullptr;
    double alpha = 0, beta = 0;     // host pointer mode: read at the call
    bool compute64 = false;         // compute type 64F: no rounding to float
    Round round = Round::None;
    const char* name_a = "A";       // operand names in messages (gemv maps x, A, y onto these)
    const char* name_b = "B";
    const char* name_c = "C";
};

cublasStatus_t bad(const std::string& msg, cublasStatus_t s = CUBLAS_STATUS_INVALID_VALUE) {
    sim::set_last_error(msg);
    return s;
}

std::string hexp(const void* p) {
    char b[32];
    std::snprintf(b, sizeof b, "%p", p);
    return b;
}

// Bytes spanned by a rows×cols column-major matrix with leading dimension ld.
size_t span(int rows, int cols, int ld, DT t) {
    return (size_t(cols - 1) * size_t(ld) + size_t(rows)) * dt_size(t);
}

cublasStatus_t check_matrix(const Gemm& g, const char* name, const void* p, int rows, int cols, int ld, long long stride, DT t) {
    if (rows == 0 || cols == 0) return CUBLAS_STATUS_SUCCESS;
    const size_t bytes = span(rows, cols, ld, t);
    for (int b = 0; b < g.batch; ++b) {
        const char* base = static_cast<const char*>(p) + (long long)b * stride * (long long)dt_size(t);
        if (sim::in_allocation(base, bytes)) continue;
        std::ostringstream s;
        s << g.call << ": matrix " << name << (g.batch > 1 ? " of batch " + std::to_string(b) : std::string()) << " ("
          << rows << "x" << cols << " " << dt_name(t) << ", ld " << ld << ", " << bytes << " bytes at " << hexp(base)
          << ") is not inside one live device allocation: " << sim::describe_address(base);
        if (sim::in_allocation(base, 1)) s << "; its last byte is " << sim::describe_address(base + bytes - 1);
        return bad(s.str());
    }
    return CUBLAS_STATUS_SUCCESS;
}

double read_scalar(const void* p, DT t) { return load(p, t, 0); }

// Operands in memory (run again before a replayed GEMM: the memory may be gone by then).
cublasStatus_t check_memory(const Gemm& g) {
    if (g.device_scalars) {
        const size_t s = dt_size(g.scalar);
        if (!sim::in_allocation(g.alpha_p, s) || !sim::in_allocation(g.beta_p, s))
            return bad(g.call + ": CUBLAS_POINTER_MODE_DEVICE but alpha or beta is not in a live device allocation");
    }
    const bool reads_ab = g.k > 0;   // alpha == 0 is only known at run time in device mode: check anyway
    if (reads_ab) {
        const int ar = g.opa == 0 ? g.m : g.k, ac = g.opa == 0 ? g.k : g.m;
        const int br = g.opb == 0 ? g.k : g.n, bc = g.opb == 0 ? g.n : g.k;
        if (cublasStatus_t s = check_matrix(g, g.name_a, g.A, ar, ac, g.lda, g.sa, g.at)) return s;
        if (cublasStatus_t s = check_matrix(g, g.name_b, g.B, br, bc, g.ldb, g.sb, g.bt)) return s;
    }
    return check_matrix(g, g.name_c, g.C, g.m, g.n, g.ldc, g.sc, g.ct);
}

void compute(const Gemm& g) {
    const double alpha = g.device_scalars ? read_scalar(g.alpha_p, g.scalar) : g.alpha;
    const double beta = g.device_scalars ? read_scalar(g.beta_p, g.scalar) : g.beta;
    const int m = g.m, n = g.n, k = g.k;
    const bool use_ab = alpha != 0.0 && k > 0;
    std::vector<double> Ad, Bd;
    std::vector<double> acc;
    if (use_ab) {
        Ad.resize(size_t(m) * k);
        Bd.resize(size_t(k) * n);
        acc.resize(size_t(m) * 4);
    }
    auto in = [&](const void* p, DT t, size_t i) {
        double v = load(p, t, i);
        if (g.round != Round::None && t != DT::F64) v = round_input(static_cast<float>(v), g.round);
        return v;
    };
    for (int b = 0; b < g.batch; ++b) {
        const void* A = static_cast<const char*>(g.A) + (long long)b * g.sa * (long long)dt_size(g.at);
        const void* B = static_cast<const char*>(g.B) + (long long)b * g.sb * (long long)dt_size(g.bt);
        void* C = static_cast<char*>(g.C) + (long long)b * g.sc * (long long)dt_size(g.ct);
        if (use_ab) {
            // op(A) as a dense m×k and op(B) as a dense k×n column-major copy.
            for (int l = 0; l < k; ++l)
                for (int i = 0; i < m; ++i)
                    Ad[size_t(l) * m + i] = in(A, g.at, g.opa == 0 ? size_t(l) * g.lda + i : size_t(i) * g.lda + l);
            for (int j = 0; j < n; ++j)
                for (int l = 0; l < k; ++l)
                    Bd[size_t(j) * k + l] = in(B, g.bt, g.opb == 0 ? size_t(j) * g.ldb + l : size_t(l) * g.ldb + j);
        }
        for (int j0 = 0; j0 < n; j0 += 4) {
            const int nj = std::min(4, n - j0);
            if (use_ab) {
                std::fill(acc.begin(), acc.end(), 0.0);
                double* a0 = acc.data();
                double* a1 = a0 + m;
                double* a2 = a1 + m;
                double* a3 = a2 + m;
                for (int l = 0; l < k; ++l) {
                    const double* a = &Ad[size_t(l) * m];
                    const double b0 = Bd[size_t(j0) * k + l];
                    const double b1 = nj > 1 ? Bd[size_t(j0 + 1) * k + l] : 0.0;
                    const double b2 = nj > 2 ? Bd[size_t(j0 + 2) * k + l] : 0.0;
                    const double b3 = nj > 3 ? Bd[size_t(j0 + 3) * k + l] : 0.0;
                    for (int i = 0; i < m; ++i) {
                        const double x = a[i];
                        a0[i] += x * b0;
                        a1[i] += x * b1;
                        a2[i] += x * b2;
                        a3[i] += x * b3;
                    }
                }
            }
            for (int jj = 0; jj < nj; ++jj) {
                const int j = j0 + jj;
                for (int i = 0; i < m; ++i) {
                    const size_t ci = size_t(j) * g.ldc + i;
                    double v = use_ab ? alpha * acc[size_t(jj) * m + i] : 0.0;
                    if (beta != 0.0) v += beta * load(C, g.ct, ci);
                    if (!g.compute64) v = static_cast<float>(v);
                    store(C, g.ct, ci, v);
                }
            }
        }
    }
}

int run_gemm(void* arg) {
    const Gemm& g = *static_cast<Gemm*>(arg);
    if (check_memory(g) != CUBLAS_STATUS_SUCCESS) return 1;   // CUDA_ERROR_INVALID_VALUE, message set
    compute(g);
    return 0;
}

void drop_gemm(void* arg) { delete static_cast<Gemm*>(arg); }

bool valid_op(int op) { return op >= 0 && op <= 2; }

// Validates like cuBLAS, then runs or records the GEMM on the handle's stream.
cublasStatus_t gemm(cublasHandle_t h, Gemm g, const void* alpha, const void* beta) {
    if (!h) return bad(g.call + ": handle is null (cublasCreate was not called)", CUBLAS_STATUS_NOT_INITIALIZED);
    std::ostringstream w;
    if (!valid_op(g.opa) || !valid_op(g.opb)) return bad(g.call + ": transa/transb must be CUBLAS_OP_N, _T or _C");
    if (g.m < 0 || g.n < 0 || g.k < 0)
        return bad(g.call + ": negative size m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k));
    if (g.batch < 0) return bad(g.call + ": negative batchCount " + std::to_string(g.batch));
    const int need_a = std::max(1, g.opa == 0 ? g.m : g.k);
    const int need_b = std::max(1, g.opb == 0 ? g.k : g.n);
    const int need_c = std::max(1, g.m);
    if (g.lda < need_a) return bad(g.call + ": lda=" + std::to_string(g.lda) + " < " + std::to_string(need_a));
    if (g.ldb < need_b) return bad(g.call + ": ldb=" + std::to_string(g.ldb) + " < " + std::to_string(need_b));
    if (g.ldc < need_c) return bad(g.call + ": ldc=" + std::to_string(g.ldc) + " < " + std::to_string(need_c));
    if (!alpha || !beta) return bad(g.call + ": alpha or beta is null");
    if (g.m == 0 || g.n == 0 || g.batch == 0) return CUBLAS_STATUS_SUCCESS;
    if (h->pointer_mode == 1) {
        g.device_scalars = true;
        g.alpha_p = alpha;
        g.beta_p = beta;
    } else {
        g.alpha = read_scalar(alpha, g.scalar);
        g.beta = read_scalar(beta, g.scalar);
        if (g.alpha == 0.0 && g.beta == 1.0) return CUBLAS_STATUS_SUCCESS;   // quick return, as BLAS
        if (g.alpha == 0.0) g.k = 0;                                           // A and B not read
    }
    if (cublasStatus_t s = check_memory(g)) return s;
    w << g.call << " " << g.m << "x" << g.n << "x" << g.k << (g.batch > 1 ? " batch " + std::to_string(g.batch) : "");
    const std::string what = w.str();
    int r = bitune_sim_submit(h->stream, run_gemm, new Gemm(std::move(g)), drop_gemm, what.c_str());
    return r == 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;   // message already set
}

bool dtype(int t, DT* out) {
    switch (t) {
        case CUDA_R_32F: *out = DT::F32; return true;
        case CUDA_R_64F: *out = DT::F64; return true;
        case CUDA_R_16F: *out = DT::F16; return true;
        case CUDA_R_16BF: *out = DT::BF16; return true;
        default: return false;
    }
}

// Sets scalar type, rounding and compute precision for cublasGemmEx-style calls; false when cuBLAS
// does not support the combination.
bool configure_ex(Gemm& g, int compute, int math_mode) {
    const bool all32 = g.at == DT::F32 && g.bt == DT::F32 && g.ct == DT::F32;
    switch (compute) {
        case CUBLAS_COMPUTE_32F:
        case CUBLAS_COMPUTE_32F_PEDANTIC:
            g.scalar = DT::F32;
            if (g.at != g.bt || g.at == DT::F64 || g.ct == DT::F64) return false;
            if (g.at == DT::F32 && g.ct != DT::F32) return false;
            if (g.at != DT::F32 && g.ct != g.at && g.ct != DT::F32) return false;   // f16 -> bf16 etc.
            if (compute == CUBLAS_COMPUTE_32F && all32 && math_mode == CUBLAS_TF32_TENSOR_OP_MATH) g.round = Round::TF32;
            return true;
        case CUBLAS_COMPUTE_32F_FAST_TF32:
        case CUBLAS_COMPUTE_32F_FAST_16BF:
        case CUBLAS_COMPUTE_32F_FAST_16F:
            g.scalar = DT::F32;
            g.round = compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? Round::TF32
                      : compute == CUBLAS_COMPUTE_32F_FAST_16BF ? Round::BF16
                                                                : Round::F16;
            return all32;
        case CUBLAS_COMPUTE_64F:
        case CUBLAS_COMPUTE_64F_PEDANTIC:
            g.scalar = DT::F64;
            g.compute64 = true;
            return g.at == DT::F64 && g.bt == DT::F64 && g.ct == DT::F64;
        case CUBLAS_COMPUTE_16F:
        case CUBLAS_COMPUTE_16F_PEDANTIC:
            g.scalar = DT::F16;
            return g.at == DT::F16 && g.bt == DT::F16 && g.ct == DT::F16;
        default:
            return false;
    }
}

cublasStatus_t gemm_ex(const char* call, cublasHandle_t h, int ta, int tb, int m, int n, int k, const void* alpha,
                       const void* A, int Atype, int lda, long long sa, const void* B, int Btype, int ldb, long long sb,
                       const void* beta, void* C, int Ctype, int ldc, long long sc, int batch, int compute) {
    Gemm g;
    g.call = call;
    g.opa = ta, g.opb = tb, g.m = m, g.n = n, g.k = k;
    g.A = A, g.B = B, g.C = C, g.lda = lda, g.ldb = ldb, g.ldc = ldc, g.sa = sa, g.sb = sb, g.sc = sc, g.batch = batch;
    if (!dtype(Atype, &g.at) || !dtype(Btype, &g.bt) || !dtype(Ctype, &g.ct))
        return bad(std::string(call) + ": data type " + std::to_string(Atype) + "/" + std::to_string(Btype) + "/" +
                       std::to_string(Ctype) + " is not simulated (f32, f64, f16, bf16 are)",
                   CUBLAS_STATUS_NOT_SUPPORTED);
    if (!configure_ex(g, compute, h ? h->math_mode : 0))
        return bad(std::string(call) + ": compute type " + std::to_string(compute) + " with A " + dt_name(g.at) + ", B " +
                       dt_name(g.bt) + ", C " + dt_name(g.ct) + " is not a combination cuBLAS supports",
                   CUBLAS_STATUS_NOT_SUPPORTED);
    return gemm(h, std::move(g), alpha, beta);
}

// y = alpha·op(A)·x + beta·y as the GEMM y^T(1×len_y) = x^T(1×len_x) · op(A)^T, with x and y
// stored as one-row matrices whose leading dimension is the increment.
cublasStatus_t gemv(const char* call, cublasHandle_t h, int trans, int m, int n, const void* alpha, const void* A, int lda,
                    const void* x, int incx, const void* beta, void* y, int incy, DT t) {
    if (!h) return bad(std::string(call) + ": handle is null (cublasCreate was not called)", CUBLAS_STATUS_NOT_INITIALIZED);
    if (!valid_op(trans)) return bad(std::string(call) + ": trans must be CUBLAS_OP_N, _T or _C");
    if (m < 0 || n < 0) return bad(std::string(call) + ": negative size m=" + std::to_string(m) + " n=" + std::to_string(n));
    if (lda < std::max(1, m)) return bad(std::string(call) + ": lda=" + std::to_string(lda) + " < " + std::to_string(std::max(1, m)));
    if (incx == 0 || incy == 0) return bad(std::string(call) + ": incx and incy must not be 0");
    if (incx < 0 || incy < 0)
        return bad(std::string(call) + ": negative increments are not simulated", CUBLAS_STATUS_NOT_SUPPORTED);
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    Gemm g;
    g.call = call;
    g.at = g.bt = g.ct = g.scalar = t;
    g.compute64 = t == DT::F64;
    if (t == DT::F32 && h->math_mode == CUBLAS_TF32_TENSOR_OP_MATH) g.round = Round::TF32;
    const bool tr = trans != 0;
    g.m = 1;
    g.n = tr ? n : m;
    g.k = tr ? m : n;
    g.A = x, g.lda = incx, g.opa = 0, g.name_a = "x";
    g.B = A, g.ldb = lda, g.opb = tr ? 0 : 1, g.name_b = "A";
    g.C = y, g.ldc = incy, g.name_c = "y";
    return gemm(h, std::move(g), alpha, beta);
}

const char* status_name(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
        default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

const char* status_string(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "the operation completed successfully";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
        case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
        case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
        case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
        case CUBLAS_STATUS_LICENSE_ERROR: return "error detected trying to check the license";
        default: return "unknown error";
    }
}

}  // namespace

// ---- handle -------------------------------------------------------------------------------------------
EXPORT cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new SimBlas;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasSetStream_v2(cublasHandle_t h, void* stream) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasGetStream_v2(cublasHandle_t h, void** stream) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = h->stream;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void* workspace, size_t bytes) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (bytes && !sim::in_allocation(workspace, bytes))
        return bad("cublasSetWorkspace: the workspace is not inside one live device allocation");
    h->workspace = workspace;
    h->workspace_bytes = bytes;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasSetMathMode(cublasHandle_t h, int mode) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int base = mode & ~16;   // CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION may be or-ed in
    if (base < 0 || base > 4) return bad("cublasSetMathMode: unknown mode " + std::to_string(mode));
    h->math_mode = base;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasGetMathMode(cublasHandle_t h, int* mode) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = h->math_mode;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t h, int mode) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != 0 && mode != 1) return CUBLAS_STATUS_INVALID_VALUE;
    h->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasGetPointerMode_v2(cublasHandle_t h, int* mode) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = h->pointer_mode;
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT cublasStatus_t cublasGetVersion_v2(cublasHandle_t, int* version) {
    if (!version) return CUBLAS_STATUS_INVALID_VALUE;
    *version = 130000;   // cuBLAS 13.0.0
    return CUBLAS_STATUS_SUCCESS;
}

EXPORT const char* cublasGetStatusName(cublasStatus_t s) { return status_name(s); }
EXPORT const char* cublasGetStatusString(cublasStatus_t s) { return status_string(s); }

// ---- GEMM ---------------------------------------------------------------------------------------------
EXPORT cublasStatus_t cublasSgemm_v2(cublasHandle_t h, int ta, int tb, int m, int n, int k, const float* alpha, const float* A,
                                     int lda, const float* B, int ldb, const float* beta, float* C, int ldc) {
    return gemm_ex("cublasSgemm_v2", h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb, 0, beta, C,
                   CUDA_R_32F, ldc, 0, 1, CUBLAS_COMPUTE_32F);
}

EXPORT cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, int ta, int tb, int m, int n, int k, const float* alpha,
                                                const float* A, int lda, long long sa, const float* B, int ldb, long long sb,
                                                const float* beta, float* C, int ldc, long long sc, int batch) {
    return gemm_ex("cublasSgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, sa, B, CUDA_R_32F, ldb, sb,
                   beta, C, CUDA_R_32F, ldc, sc, batch, CUBLAS_COMPUTE_32F);
}

EXPORT cublasStatus_t cublasDgemm_v2(cublasHandle_t h, int ta, int tb, int m, int n, int k, const double* alpha,
                                     const double* A, int lda, const double* B, int ldb, const double* beta, double* C,
                                     int ldc) {
    return gemm_ex("cublasDgemm_v2", h, ta, tb, m, n, k, alpha, A, CUDA_R_64F, lda, 0, B, CUDA_R_64F, ldb, 0, beta, C,
                   CUDA_R_64F, ldc, 0, 1, CUBLAS_COMPUTE_64F);
}

EXPORT cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t h, int ta, int tb, int m, int n, int k, const double* alpha,
                                                const double* A, int lda, long long sa, const double* B, int ldb,
                                                long long sb, const double* beta, double* C, int ldc, long long sc,
                                                int batch) {
    return gemm_ex("cublasDgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, CUDA_R_64F, lda, sa, B, CUDA_R_64F, ldb, sb,
                   beta, C, CUDA_R_64F, ldc, sc, batch, CUBLAS_COMPUTE_64F);
}

EXPORT cublasStatus_t cublasGemmEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A,
                                   int Atype, int lda, const void* B, int Btype, int ldb, const void* beta, void* C, int Ctype,
                                   int ldc, int compute, int /*algo*/) {
    return gemm_ex("cublasGemmEx", h, ta, tb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta, C, Ctype, ldc, 0, 1,
                   compute);
}

EXPORT cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, const void* alpha,
                                                 const void* A, int Atype, int lda, long long sa, const void* B, int Btype,
                                                 int ldb, long long sb, const void* beta, void* C, int Ctype, int ldc,
                                                 long long sc, int batch, int compute, int /*algo*/) {
    return gemm_ex("cublasGemmStridedBatchedEx", h, ta, tb, m, n, k, alpha, A, Atype, lda, sa, B, Btype, ldb, sb, beta, C,
                   Ctype, ldc, sc, batch, compute);
}

EXPORT cublasStatus_t cublasSgemv_v2(cublasHandle_t h, int trans, int m, int n, const float* alpha, const float* A, int lda,
                                     const float* x, int incx, const float* beta, float* y, int incy) {
    return gemv("cublasSgemv_v2", h, trans, m, n, alpha, A, lda, x, incx, beta, y, incy, DT::F32);
}

EXPORT cublasStatus_t cublasDgemv_v2(cublasHandle_t h, int trans, int m, int n, const double* alpha, const double* A,
                                     int lda, const double* x, int incx, const double* beta, double* y, int incy) {
    return gemv("cublasDgemv_v2", h, trans, m, n, alpha, A, lda, x, incx, beta, y, incy, DT::F64);
}
