/* kvtier C ABI: the client library for languages that bind C (Python ctypes, Rust, Go).
 *
 * Every function returns 0 on success or an absl::StatusCode value (> 0) on failure; the message
 * of the last failure on a handle is kvtier_last_error(handle). Keys are 16-byte {hi, lo} pairs.
 * A handle is one connection; calls on one handle may come from any thread.
 * Load and store are asynchronous: *_submit returns an op id, kvtier_wait fills per-page codes. */
#ifndef KVTIER_C_H_
#define KVTIER_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvtier_client kvtier_client;
typedef struct {
  uint64_t hi, lo;
} kvtier_key;
typedef struct {
  uint32_t layers, kv_heads, head_dim, dtype, tokens_per_page, tensor_layout, num_blocks;
} kvtier_layout;

/* socket_path NULL or "" means the default (kvtier-data/kvtierd.sock). NULL on failure;
 * *error_code (if not NULL) gets the status code. */
kvtier_client* kvtier_connect(const char* socket_path, int* error_code);
void kvtier_close(kvtier_client* client);
const char* kvtier_last_error(const kvtier_client* client);

/* Handshake; salt_out (may be NULL) gets the namespace's key salt. */
int kvtier_hello(kvtier_client* client, const char* namespace_name, const kvtier_layout* layout,
                 kvtier_key* salt_out);
/* Registers memfd buffers in layout order. Buffers sealed against shrinking (F_SEAL_SHRINK) are
 * mapped by the daemon; others (e.g. SGLang's shm host pool) are copied through their fds. */
int kvtier_register_buffers(kvtier_client* client, const int* fds, const uint64_t* sizes,
                            size_t count);
/* Longest cached prefix of keys; tiers_out (may be NULL) holds count bytes (0 HBM, 1 DRAM, 2 NVMe).
 */
int kvtier_lookup(kvtier_client* client, const kvtier_key* keys, size_t count,
                  size_t* prefix_pages_out, uint8_t* tiers_out);
int kvtier_load_submit(kvtier_client* client, const kvtier_key* keys, const uint32_t* block_ids,
                       size_t count, uint64_t* op_out);
/* parent: the parent of keys[0] (NULL at a sequence start); class_hints NULL or count bytes. */
int kvtier_store_submit(kvtier_client* client, const kvtier_key* keys, const uint32_t* block_ids,
                        size_t count, const kvtier_key* parent, uint32_t first_position,
                        const uint8_t* class_hints, uint64_t* op_out);
/* Waits for an op; page_codes_out (may be NULL) holds one status code per page of the op. */
int kvtier_wait(kvtier_client* client, uint64_t op, int32_t* page_codes_out, size_t capacity,
                uint32_t* ok_pages_out);
int kvtier_pin(kvtier_client* client, const kvtier_key* keys, size_t count);
int kvtier_unpin(kvtier_client* client, const kvtier_key* keys, size_t count);
int kvtier_release(kvtier_client* client, const kvtier_key* keys, size_t count);

/* Chained page keys of the full blocks of tokens (DESIGN.md §2); returns the number written. */
size_t kvtier_chain_keys(kvtier_key salt, const int32_t* tokens, size_t token_count,
                         size_t tokens_per_page, kvtier_key* keys_out, size_t capacity);

/* GPU workers (README "GPU workers"): registers `count` KV buffers in GPU memory, in layout order,
 * each the `sizes[i]` bytes at `offsets[i]` inside the allocation that `ipc_handles[i]` (64 bytes
 * of cudaIpcMemHandle_t, concatenated) names. device_uuid: 16 bytes of cudaDeviceProp::uuid.
 * FailedPrecondition (9) from a daemon that cannot serve GPU buffers; kvtier_last_error says why.
 */
int kvtier_register_gpu_buffers(kvtier_client* client, const uint8_t* device_uuid,
                                const uint8_t* ipc_handles, const uint64_t* offsets,
                                const uint64_t* sizes, size_t count);
/* Load into GPU blocks; event_handle_out (64 bytes, may be NULL) gets the session's interprocess
 * event (cudaIpcEventHandle_t), recorded after the copies: with reply_when_enqueued != 0 the call
 * returns once they are queued and the worker's stream must wait on that event before using the
 * blocks; otherwise it returns when the bytes have landed. Synchronous (submit and wait). */
int kvtier_load_gpu(kvtier_client* client, const kvtier_key* keys, const uint32_t* block_ids,
                    size_t count, int reply_when_enqueued, int32_t* page_codes_out,
                    uint32_t* ok_pages_out, uint8_t* event_handle_out);
/* ---- ABI version 2: what language bindings (the Python package) need beyond version 1. ----
 * libkvtier.so exports only kvtier_* symbols, under the linker version node KVTIER_1; a binding
 * checks kvtier_abi_version() >= the version it was written for before calling anything newer. */
#define KVTIER_C_ABI_VERSION 4
int kvtier_abi_version(void);

/* The message of the last failure of a kvtier_* call on the calling thread ("" if none). Unlike
 * kvtier_last_error it cannot be overwritten by another thread's call on the same handle. */
const char* kvtier_thread_error(void);

typedef struct {
  kvtier_key salt;
  uint64_t page_bytes;
  uint32_t max_inflight_ops, max_pinned_pages, max_batch_pages;
  char hbm_backend[32]; /* NUL-terminated, truncated */
} kvtier_hello_info;
/* kvtier_hello with everything the daemon answers. info_out may be NULL. */
int kvtier_hello_info_get(kvtier_client* client, const char* namespace_name,
                          const kvtier_layout* layout, const char* client_name,
                          kvtier_hello_info* info_out);

/* Per-page attention statistics (DESIGN.md §4): each array NULL or `count` floats, parallel to the
 * keys of the call. */
typedef struct {
  const float *mass, *breadth, *value_norm, *mass_entropy;
} kvtier_attention;

/* kvtier_store_submit with attention statistics (stats may be NULL). */
int kvtier_store_submit_stats(kvtier_client* client, const kvtier_key* keys,
                              const uint32_t* block_ids, size_t count, const kvtier_key* parent,
                              uint32_t first_position, const uint8_t* class_hints,
                              const kvtier_attention* stats, uint64_t* op_out);
/* Feeds attention statistics of pages the daemon holds into its scorer. */
int kvtier_report(kvtier_client* client, const kvtier_key* keys, size_t count,
                  const kvtier_attention* stats);

/* Waits for an op: one status code and one tier byte per page (either array may be NULL; at most
 * capacity entries are written), the number of pages in *page_count_out and of successful ones in
 * *ok_pages_out. The first failed page's message is kvtier_thread_error(). */
int kvtier_wait_pages(kvtier_client* client, uint64_t op, int32_t* page_codes_out,
                      uint8_t* tiers_out, size_t capacity, uint32_t* page_count_out,
                      uint32_t* ok_pages_out);
/* kvtier_release that also says how many pins were dropped (released_out may be NULL). */
int kvtier_release_count(kvtier_client* client, const kvtier_key* keys, size_t count,
                         uint32_t* released_out);

/* The daemon's status and stats replies as JSON objects (protobuf's JSON mapping of StatusReply
 * and StatsReply in client/proto/kvtier.proto). *json_out is malloc'ed: free it with kvtier_free.
 */
int kvtier_status_json(kvtier_client* client, char** json_out);
int kvtier_stats_json(kvtier_client* client, char** json_out);
void kvtier_free(void* p);

/* The key of one block named by an inference engine's own block hash (e.g. vLLM's), chained
 * after `parent` (NULL at a sequence start) under the namespace's salt: the hash is folded in
 * 8-byte little-endian words, so an 8-byte hash gives the same key as a trace's block id.
 * hash_bytes must be a positive multiple of 8; returns 0 or INVALID_ARGUMENT (3). */
int kvtier_key_from_block_hash(kvtier_key salt, const kvtier_key* parent, const void* hash,
                               size_t hash_bytes, kvtier_key* key_out);

/* ---- ABI version 3: the [kernels] attention statistics, for bindings that compute them on the
 * worker (kvtier.hf). Semantics and error bounds: kernels/attention_stats.h. ---- */
typedef struct {
  uint32_t tokens, q_heads, kv_heads, head_dim, window, tokens_per_page;
  uint32_t dtype; /* 0 bf16, 1 fp16: the 16-bit elements of q, k and v */
} kvtier_attention_shape;
typedef struct {
  float mass, breadth, value_norm, mass_entropy;
} kvtier_page_attention;
/* q: the last `window` queries [window, q_heads, head_dim]; k, v: [tokens, kv_heads, head_dim];
 * all contiguous. out: `capacity` entries, at least ceil(tokens / tokens_per_page). Returns 0 or
 * INVALID_ARGUMENT (3) with the reason in kvtier_thread_error(). */
int kvtier_attention_stats_cpu(const kvtier_attention_shape* shape, float breadth_threshold,
                               const void* q, const void* k, const void* v,
                               kvtier_page_attention* out, size_t capacity);
/* 1 when this library carries the CUDA kernel, else 0 (kvtier_attention_stats_cuda then fails with
 * FAILED_PRECONDITION, 9). */
int kvtier_has_cuda_kernels(void);
/* The GPU kernel on device pointers q, k, v of the current device, ordered on `stream` (a
 * cudaStream_t; NULL is the legacy default stream); returns once `out` (host memory) is filled.
 * The scratch memory of the last shape is kept per thread. */
int kvtier_attention_stats_cuda(const kvtier_attention_shape* shape, float breadth_threshold,
                                const void* q, const void* k, const void* v,
                                kvtier_page_attention* out, size_t capacity, void* stream);

/* ---- ABI version 4: a deadline on every call. ----
 * The longest any call on `client` waits for kvtierd's reply, in milliseconds (0: no limit, the
 * default). A call that runs out returns DEADLINE_EXCEEDED (4). kvtier_wait / kvtier_wait_pages
 * that run out leave the op in flight: wait for it again before reusing its blocks (the daemon may
 * still write them); a synchronous call's late reply is dropped. */
int kvtier_set_timeout_ms(kvtier_client* client, uint64_t timeout_ms);

#ifdef __cplusplus
}
#endif
#endif /* KVTIER_C_H_ */
