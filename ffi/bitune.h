/*
 * bitune.h: the C API of bitune-rt (link libbitune_rt.a; see README.md, "C API").
 *
 * Load a model (optionally with a Bitune adapter folder), run the Bitune prefill of a prompt
 * into a cache, decode token by token, score continuations, tokenize and detokenize.
 *
 * Conventions
 * - Every function except bitune_last_error and bitune_status_name returns a bitune_status.
 *   On failure, bitune_last_error() describes what went wrong; outputs are left unspecified
 *   unless a function says otherwise.
 * - Handles (bitune_model *, bitune_cache *) are opaque ids, never pointers to memory you may
 *   read. The library checks every handle against its registry of live handles, so a freed
 *   handle, a handle of the other kind, or a pointer it never issued returns
 *   BITUNE_ERR_BAD_HANDLE instead of crashing. Freeing NULL is a no-op.
 * - Token ids are uint32_t and must be below the vocabulary size (BITUNE_ERR_TOKEN_RANGE).
 * - Every buffer comes with its length. A length of 0 needs no pointer; a NULL pointer with a
 *   non-zero length is BITUNE_ERR_NULL_POINTER. Optional outputs may be NULL (with length 0).
 *   What cannot be checked is that a non-NULL pointer really addresses that many elements.
 * - No call unwinds or aborts on bad input: internal failures become BITUNE_ERR_PANIC.
 *
 * Threads
 * - A bitune_model may be shared by any number of threads at once: after loading it is
 *   read-only. Freeing it while other threads still use it is safe (their calls finish), but
 *   their next call with that handle fails with BITUNE_ERR_BAD_HANDLE.
 * - A bitune_cache must be used by one thread at a time. Concurrent calls on the same cache are
 *   detected and fail with BITUNE_ERR_BUSY; they are never undefined behaviour. Different caches
 *   may be used concurrently, also with the same model.
 * - bitune_last_error is per thread.
 */
#ifndef BITUNE_H
#define BITUNE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. Values are stable. */
typedef enum bitune_status {
    BITUNE_OK = 0,
    BITUNE_ERR_NULL_POINTER = 1,     /* a required pointer (or handle) is NULL */
    BITUNE_ERR_INVALID_ARGUMENT = 2, /* bad string (UTF-8), unknown device, misaligned buffer */
    BITUNE_ERR_LENGTH = 3,           /* a length that does not fit (empty prompt, logits size) */
    BITUNE_ERR_BUFFER_TOO_SMALL = 4, /* an output buffer is too short; the size needed is set */
    BITUNE_ERR_TOKEN_RANGE = 5,      /* a token id >= the vocabulary size */
    BITUNE_ERR_BAD_HANDLE = 6,       /* freed, foreign, or the wrong kind of handle */
    BITUNE_ERR_WRONG_MODEL = 7,      /* a cache used with a model it was not made for */
    BITUNE_ERR_STATE = 8,            /* call out of order (decode before prefill, ...) */
    BITUNE_ERR_BUSY = 9,             /* a cache used by two threads at once */
    BITUNE_ERR_UNSUPPORTED = 10,     /* e.g. device "cuda" without CUDA support or device */
    BITUNE_ERR_LOAD = 11,            /* the model or adapter could not be read */
    BITUNE_ERR_ENGINE = 12,          /* the engine failed (e.g. a prompt over the context) */
    BITUNE_ERR_PANIC = 13            /* an internal error, caught at the boundary */
} bitune_status;

/* A loaded model (base weights, tokenizer, optional adapter). */
typedef struct bitune_model bitune_model;
/* A KV cache for one sequence, made for one model. */
typedef struct bitune_cache bitune_cache;

/* ---- errors ---------------------------------------------------------------------------- */

/* The message of this thread's last failed call, or "" if the last call succeeded. Never NULL;
 * valid until this thread's next bitune_* call. */
const char *bitune_last_error(void);

/* The name of a status code ("BITUNE_ERR_LENGTH"), or "BITUNE_UNKNOWN_STATUS". Static string. */
const char *bitune_status_name(int status);

/* ---- set-up and models ----------------------------------------------------------------- */

/* Sets the number of CPU threads (default: all cores). Only before the first model load:
 * afterwards BITUNE_ERR_STATE. */
bitune_status bitune_set_threads(size_t n_threads);

/* Loads a model: a Hugging Face checkpoint folder or a .gguf file. device is "cpu", "cuda" or
 * "cuda:N" (a library built with the cuda feature; BITUNE_CUDA_SIM=1 runs it on the simulator);
 * "cuda" returns BITUNE_ERR_UNSUPPORTED without CUDA support, a driver or a device, with the
 * reason in bitune_last_error(). A device failure later (out of device memory, a failed kernel)
 * is BITUNE_ERR_ENGINE with the op and sizes in the message. adapter_path is NULL (the base model, causal)
 * or an adapter folder written by `bitune-rt train`: with a Bitune adapter, prefill reads the
 * prompt causally and bidirectionally and mixes the two passes' keys/values. *out is set to
 * NULL first and to the new handle on success. Free with bitune_model_free. */
bitune_status bitune_model_load(const char *model_path, const char *device,
                                const char *adapter_path, bitune_model **out);

/* Frees a model. NULL: no-op. Freeing twice: BITUNE_ERR_BAD_HANDLE. Its caches must still be
 * freed; decoding with them afterwards fails. */
bitune_status bitune_model_free(bitune_model *model);

/* The vocabulary size: the length of every logits buffer. */
bitune_status bitune_vocab_size(const bitune_model *model, size_t *out);

/* Whether token is an end-of-sequence token (generation should stop before emitting it). */
bitune_status bitune_is_eos(const bitune_model *model, uint32_t token, bool *out);

/* Tokenizes UTF-8 text (add_special: add BOS etc. as the tokenizer defines, as the CLI does for
 * plain prompts). *n_ids is set to the number of ids the text needs. ids may be NULL with
 * cap 0 to ask for that number; if cap is smaller, BITUNE_ERR_BUFFER_TOO_SMALL and nothing is
 * written. */
bitune_status bitune_tokenize(const bitune_model *model, const char *text, bool add_special,
                              uint32_t *ids, size_t cap, size_t *n_ids);

/* Decodes ids to UTF-8 text, skipping special tokens, NUL-terminated. *len is set to the text's
 * length in bytes, without the NUL. text may be NULL with cap 0 to ask for it; cap must be at
 * least *len + 1, else BITUNE_ERR_BUFFER_TOO_SMALL and nothing is written. */
bitune_status bitune_detokenize(const bitune_model *model, const uint32_t *ids, size_t n_ids,
                                char *text, size_t cap, size_t *len);

/* ---- inference ------------------------------------------------------------------------- */

/* Makes an empty cache for model. *out is set to NULL first. Free with bitune_cache_free. */
bitune_status bitune_cache_new(const bitune_model *model, bitune_cache **out);

/* Frees a cache. NULL: no-op. Freeing twice: BITUNE_ERR_BAD_HANDLE. */
bitune_status bitune_cache_free(bitune_cache *cache);

/* Prefills the prompt ids[0..n_ids) (n_ids >= 1, BOS included if the model wants one) into the
 * cache, replacing whatever it held. With a Bitune adapter this is the dual prefill: the prompt
 * without its last token is read causally and bidirectionally, the mixed keys/values are
 * cached, and the last token opens the answer. The next-token logits are kept in the cache
 * (see bitune_greedy) and copied to logits if it is not NULL; then n_logits must equal the
 * vocabulary size (BITUNE_ERR_LENGTH). On failure the cache is left empty. */
bitune_status bitune_prefill(const bitune_model *model, bitune_cache *cache, const uint32_t *ids,
                             size_t n_ids, float *logits, size_t n_logits);

/* Appends token to a prefilled cache (BITUNE_ERR_STATE if never prefilled) and computes the
 * logits for the token after it, kept in the cache and copied to logits as for prefill. */
bitune_status bitune_decode(const bitune_model *model, bitune_cache *cache, uint32_t token,
                            float *logits, size_t n_logits);

/* The greedy next token: the argmax of the logits the last prefill/decode on this cache left.
 * Does not advance the cache: feed the token back with bitune_decode. */
bitune_status bitune_greedy(const bitune_cache *cache, uint32_t *next);

/* Log-likelihood of continuation[0..n_continuation) after context[0..n_context) (both >= 1),
 * as lm-evaluation-harness's loglikelihood request: *sum is the total log-probability,
 * logprobs (optional, n_logprobs == n_continuation) the per-token ones, *greedy (optional)
 * whether every continuation token was the argmax. Prefills the context itself; no cache. */
bitune_status bitune_score(const bitune_model *model, const uint32_t *context, size_t n_context,
                           const uint32_t *continuation, size_t n_continuation, double *logprobs,
                           size_t n_logprobs, double *sum, bool *greedy);

#ifdef __cplusplus
}
#endif

#endif /* BITUNE_H */
