// Fused cross-entropy over rows of logits: one block per row computes the max, the log-sum-exp
// (exp sums in f64) and, when `grad` is set, overwrites the row with w·(softmax − onehot) in the
// same launch. Per row it reports (w·(−log p[t]), log p[t]) as f64 and whether t is the argmax;
// the host adds the losses in row order, as the CPU reference does.
#include "common.cuh"

extern "C" __global__ void cross_entropy(float* logits, const unsigned* targets,
                                         const float* weights, int rows, int vocab, int grad,
                                         double* row_out, int* greedy) {
    __shared__ double dscratch[32];
    __shared__ float fscratch[32];
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        float* lr = logits + (size_t)row * vocab;
        const unsigned t = targets[row];
        const float wt = weights[row];
        float mx = -INFINITY;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, lr[j]);
        mx = block_max(mx, fscratch);
        double s = 0.0;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += exp((double)(lr[j] - mx));
        s = block_sum_d(s, dscratch);
        const double lse = (double)mx + log(s);
        const float lt = lr[t];  // every thread reads it before any thread overwrites the row
        __syncthreads();
        if (threadIdx.x == 0) {
            const double lp = (double)lt - lse;
            row_out[2 * row] = -lp * (double)wt;
            row_out[2 * row + 1] = lp;
            greedy[row] = lt >= mx;
        }
        if (grad) {
            for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
                const double p = exp((double)lr[j] - lse);
                lr[j] = (float)((double)wt * (p - (j == (int)t ? 1.0 : 0.0)));
            }
        }
        __syncthreads();  // the next row reuses the scratch buffers
    }
}
