/*
 * example.c: greedy generation with bitune-rt from C.
 *
 *   cc -Iffi ffi/example.c target/release/libbitune_rt.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
 *   ./a.out MODEL ADAPTER|- "PROMPT" [MAX_NEW [DEVICE]]
 *
 * DEVICE is "cpu" (default) or "cuda" (a library built with --features cuda; BITUNE_CUDA_SIM=1
 * runs it on the simulator).
 * Loads the model (and the adapter folder unless it is "-"), tokenizes the prompt, runs the
 * Bitune prefill, decodes up to MAX_NEW (default 16) tokens greedily, stopping before an
 * end-of-sequence token, and prints the new token ids on one line, then the decoded text on
 * stderr. The same steps as `bitune-rt generate --temperature 0`.
 */
#include "bitune.h"

#include <stdio.h>
#include <stdlib.h>

/* Reports a failed call with the library's message and leaves. */
#define CHECK(call)                                                                          \
    do {                                                                                     \
        bitune_status st_ = (call);                                                          \
        if (st_ != BITUNE_OK) {                                                              \
            fprintf(stderr, "%s failed: %s: %s\n", #call, bitune_status_name(st_),           \
                    bitune_last_error());                                                    \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL ADAPTER|- PROMPT [MAX_NEW [DEVICE]]\n", argv[0]);
        return 2;
    }
    const char *adapter = argv[2][0] == '-' && argv[2][1] == 0 ? NULL : argv[2];
    size_t max_new = argc > 4 ? (size_t)strtoul(argv[4], NULL, 10) : 16;
    const char *device = argc > 5 ? argv[5] : "cpu"; /* "cuda" on the GPU backend */

    bitune_model *model = NULL;
    CHECK(bitune_model_load(argv[1], device, adapter, &model));

    /* Ask for the prompt's length first, then tokenize into a buffer of that size. */
    size_t n_prompt = 0;
    CHECK(bitune_tokenize(model, argv[3], true, NULL, 0, &n_prompt));
    uint32_t *prompt = malloc(n_prompt * sizeof *prompt);
    uint32_t *out = malloc((max_new + 1) * sizeof *out);
    if (!prompt || !out) return 1;
    CHECK(bitune_tokenize(model, argv[3], true, prompt, n_prompt, &n_prompt));

    bitune_cache *cache = NULL;
    CHECK(bitune_cache_new(model, &cache));
    CHECK(bitune_prefill(model, cache, prompt, n_prompt, NULL, 0));

    size_t n_out = 0;
    while (n_out < max_new) {
        uint32_t next;
        bool eos;
        CHECK(bitune_greedy(cache, &next));
        CHECK(bitune_is_eos(model, next, &eos));
        if (eos) break;
        out[n_out++] = next;
        if (n_out == max_new) break; /* no need to compute logits nobody reads */
        CHECK(bitune_decode(model, cache, next, NULL, 0));
    }

    for (size_t i = 0; i < n_out; i++) printf(i ? " %u" : "%u", (unsigned)out[i]);
    printf("\n");

    size_t len = 0;
    CHECK(bitune_detokenize(model, out, n_out, NULL, 0, &len));
    char *text = malloc(len + 1);
    if (!text) return 1;
    CHECK(bitune_detokenize(model, out, n_out, text, len + 1, &len));
    fprintf(stderr, "%s\n", text);

    free(text);
    free(out);
    free(prompt);
    CHECK(bitune_cache_free(cache));
    CHECK(bitune_model_free(model));
    return 0;
}
