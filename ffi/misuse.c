/*
 * misuse.c: calls the C API wrongly on purpose and checks that each call returns the right
 * status with a message, never crashing. Run by tests/ffi.rs, also under valgrind, so any read
 * of a bad pointer or leak would show.
 *
 *   ./misuse MODEL ADAPTER      exits 0 when every check passed
 */
#include "bitune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

/* Expects `call` to return `want` and to leave a non-empty message. */
#define EXPECT(want, call)                                                                   \
    do {                                                                                     \
        bitune_status got_ = (call);                                                         \
        const char *msg_ = bitune_last_error();                                              \
        int ok_ = got_ == (want) && (got_ == BITUNE_OK ? msg_[0] == 0 : msg_[0] != 0);       \
        printf("%s %-28s %s\n    -> %s\n", ok_ ? "ok  " : "FAIL", bitune_status_name(got_),   \
               #call, msg_);                                                                 \
        if (!ok_) failures++;                                                                \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL ADAPTER\n", argv[0]);
        return 2;
    }
    bitune_model *m = NULL, *m2 = NULL;
    bitune_cache *c = NULL;
    size_t vocab = 0, n = 0;
    uint32_t ids[4] = {1, 5, 6, 7}, next = 0;
    float *logits;
    double sum = 0;
    int local = 0;

    /* Loading: NULLs, unknown and unsupported devices, missing files. */
    EXPECT(BITUNE_ERR_NULL_POINTER, bitune_model_load(NULL, "cpu", NULL, &m));
    EXPECT(BITUNE_ERR_NULL_POINTER, bitune_model_load(argv[1], NULL, NULL, &m));
    EXPECT(BITUNE_ERR_NULL_POINTER, bitune_model_load(argv[1], "cpu", NULL, NULL));
    EXPECT(BITUNE_ERR_UNSUPPORTED, bitune_model_load(argv[1], "cuda", NULL, &m));
    EXPECT(BITUNE_ERR_INVALID_ARGUMENT, bitune_model_load(argv[1], "tpu", NULL, &m));
    EXPECT(BITUNE_ERR_LOAD, bitune_model_load("/nonexistent/model", "cpu", NULL, &m));
    EXPECT(BITUNE_ERR_LOAD, bitune_model_load(argv[1], "cpu", "/nonexistent/adapter", &m));
    EXPECT(BITUNE_OK, bitune_model_load(argv[1], "cpu", argv[2], &m));
    EXPECT(BITUNE_OK, bitune_model_load(argv[1], "cpu", NULL, &m2));
    EXPECT(BITUNE_OK, bitune_vocab_size(m, &vocab));
    logits = calloc(vocab, sizeof *logits);
    if (!logits) return 1;

    /* Wrong order: a cache that was never prefilled. */
    EXPECT(BITUNE_OK, bitune_cache_new(m, &c));
    EXPECT(BITUNE_ERR_STATE, bitune_decode(m, c, 5, NULL, 0));
    EXPECT(BITUNE_ERR_STATE, bitune_greedy(c, &next));

    /* Null pointers and wrong lengths. */
    EXPECT(BITUNE_ERR_NULL_POINTER, bitune_prefill(m, c, NULL, 3, NULL, 0));
    EXPECT(BITUNE_ERR_LENGTH, bitune_prefill(m, c, ids, 0, NULL, 0));
    EXPECT(BITUNE_ERR_NULL_POINTER, bitune_prefill(m, c, ids, 4, NULL, vocab));
    EXPECT(BITUNE_ERR_LENGTH, bitune_prefill(m, c, ids, 4, logits, vocab - 1));
    EXPECT(BITUNE_ERR_NULL_POINTER, bitune_prefill(NULL, c, ids, 4, NULL, 0));
    EXPECT(BITUNE_ERR_NULL_POINTER, bitune_prefill(m, NULL, ids, 4, NULL, 0));
    EXPECT(BITUNE_ERR_NULL_POINTER, bitune_greedy(c, NULL));
    EXPECT(BITUNE_ERR_NULL_POINTER, bitune_tokenize(m, NULL, true, NULL, 0, &n));
    EXPECT(BITUNE_ERR_BUFFER_TOO_SMALL, bitune_tokenize(m, "hello world", true, ids, 1, &n));
    EXPECT(BITUNE_ERR_NULL_POINTER, bitune_score(m, ids, 2, ids + 2, 2, NULL, 0, NULL, NULL));
    EXPECT(BITUNE_ERR_LENGTH, bitune_score(m, ids, 2, ids + 2, 0, NULL, 0, &sum, NULL));

    /* Token ids out of range. */
    ids[2] = (uint32_t)vocab;
    EXPECT(BITUNE_ERR_TOKEN_RANGE, bitune_prefill(m, c, ids, 4, NULL, 0));
    EXPECT(BITUNE_ERR_TOKEN_RANGE, bitune_score(m, ids, 2, ids + 2, 2, NULL, 0, &sum, NULL));
    ids[2] = 6;
    EXPECT(BITUNE_OK, bitune_prefill(m, c, ids, 4, logits, vocab));
    EXPECT(BITUNE_ERR_TOKEN_RANGE, bitune_decode(m, c, 0xFFFFFFFFu, NULL, 0));

    /* A cache used with another model. */
    EXPECT(BITUNE_ERR_WRONG_MODEL, bitune_decode(m2, c, 5, NULL, 0));
    EXPECT(BITUNE_OK, bitune_decode(m, c, 5, logits, vocab));

    /* Foreign handles: a stack address, a small integer, a cache where a model belongs. */
    EXPECT(BITUNE_ERR_BAD_HANDLE, bitune_decode((bitune_model *)&local, c, 5, NULL, 0));
    EXPECT(BITUNE_ERR_BAD_HANDLE, bitune_greedy((bitune_cache *)(uintptr_t)0x1234, &next));
    EXPECT(BITUNE_ERR_BAD_HANDLE, bitune_model_free((bitune_model *)c));
    EXPECT(BITUNE_ERR_BAD_HANDLE, bitune_cache_free((bitune_cache *)m));

    /* Freed handles: use after free and double free. */
    EXPECT(BITUNE_OK, bitune_model_free(m2));
    EXPECT(BITUNE_ERR_BAD_HANDLE, bitune_model_free(m2));
    EXPECT(BITUNE_ERR_BAD_HANDLE, bitune_vocab_size(m2, &vocab));
    EXPECT(BITUNE_OK, bitune_cache_free(c));
    EXPECT(BITUNE_ERR_BAD_HANDLE, bitune_greedy(c, &next));
    EXPECT(BITUNE_ERR_BAD_HANDLE, bitune_cache_free(c));
    EXPECT(BITUNE_OK, bitune_cache_free(NULL));
    EXPECT(BITUNE_OK, bitune_model_free(m));
    EXPECT(BITUNE_ERR_BAD_HANDLE, bitune_cache_new(m, &c));

    free(logits);
    printf("%d failure(s)\n", failures);
    return failures != 0;
}
