// Rotary position embedding in place on the first `2·half` channels of every head (HF
// rotate_half layout; partial rotary when 2·half < head_dim). `inverse` rotates by −θ, which is
// the backward. Only the first `rows` rows (one position each) are touched: K buffers carry mix
// and cache rows after the token rows.
#include "common.cuh"

extern "C" __global__ void rope(float* x, const unsigned* pos, int rows, int heads, int head_dim,
                                int half, const float* inv_freq, int n_freq, int inverse) {
    GRID_STRIDE(e, (size_t)rows * heads * n_freq) {
        const int i = e % n_freq;
        const size_t rh = e / n_freq;  // row·heads + head
        const size_t row = rh / heads;
        // f32 angle as in the CPU reference (p as f32 * f); sincosf is full-range accurate.
        const float ang = (float)pos[row] * inv_freq[i];
        float s, c;
        sincosf(ang, &s, &c);
        if (inverse) s = -s;
        float* base = x + rh * head_dim;
        const float x1 = base[i], x2 = base[i + half];
        base[i] = x1 * c - x2 * s;
        base[i + half] = x2 * c + x1 * s;
    }
}
