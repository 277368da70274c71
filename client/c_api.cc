// The C ABI over kvtier::Client: status codes out, messages kept per handle and per thread.
// libkvtier.so (client/CMakeLists.txt) exports exactly these functions.
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/kvtier_c.h"
#include "google/protobuf/util/json_util.h"
#include "kernels/attention_stats.h"
#ifdef KVTIER_HAVE_CUDA_KERNELS
#include <optional>

#include "kernels/cuda/gpu_kernels.h"
#endif

struct kvtier_client {
  std::unique_ptr<kvtier::Client> client;
  mutable absl::Mutex mu;
  std::string last_error ABSL_GUARDED_BY(mu);
};

namespace {

// The calling thread's last failure: what a binding reads right after a call returned non-zero,
// safe from other threads failing on the same handle in between.
thread_local std::string thread_error;

int Fail(kvtier_client* c, const absl::Status& s) {
  if (s.ok()) return 0;
  thread_error = s.ToString();
  absl::MutexLock lock(&c->mu);
  c->last_error = thread_error;
  return static_cast<int>(s.code());
}

absl::Span<const kvtier::PageKey> Keys(const kvtier_key* keys, size_t count) {
  static_assert(sizeof(kvtier_key) == sizeof(kvtier::PageKey));
  return {reinterpret_cast<const kvtier::PageKey*>(keys), count};
}

kvtier::LayoutSpec SpecOf(const kvtier_layout& l) {
  kvtier::LayoutSpec spec;
  spec.layers = l.layers;
  spec.kv_heads = l.kv_heads;
  spec.head_dim = l.head_dim;
  spec.dtype = static_cast<kvtier::DType>(l.dtype);
  spec.tokens_per_page = l.tokens_per_page;
  spec.tensor_layout = static_cast<kvtier::TensorLayout>(l.tensor_layout);
  spec.num_blocks = l.num_blocks;
  return spec;
}

// Copies the arrays that are present; an absent one stays empty (the daemon reads it as "not
// measured").
kvtier::AttentionBatch BatchOf(const kvtier_attention& a, size_t count) {
  kvtier::AttentionBatch b;
  auto copy = [count](const float* p, std::vector<float>& out) {
    if (p != nullptr) out.assign(p, p + count);
  };
  copy(a.mass, b.mass);
  copy(a.breadth, b.breadth);
  copy(a.value_norm, b.value_norm);
  copy(a.mass_entropy, b.mass_entropy);
  return b;
}

int JsonOut(kvtier_client* c, const google::protobuf::Message& m, char** out) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(m, &json, options).ok()) {
    return Fail(c, absl::InternalError("the daemon's reply does not convert to JSON"));
  }
  char* p = static_cast<char*>(std::malloc(json.size() + 1));  // freed by kvtier_free
  if (p == nullptr) return Fail(c, absl::ResourceExhaustedError("malloc of the JSON reply"));
  std::memcpy(p, json.c_str(), json.size() + 1);
  *out = p;
  return 0;
}

// The [kernels] shape and options of an attention-statistics call, checked against the output
// capacity; fills thread_error and returns INVALID_ARGUMENT when they do not hold.
int AttentionArgs(const kvtier_attention_shape* shape, float breadth_threshold, const void* q,
                  const void* k, const void* v, const kvtier_page_attention* out, size_t capacity,
                  kvtier::kernels::AttentionStatsShape& s,
                  kvtier::kernels::AttentionStatsOptions& options) {
  static_assert(sizeof(kvtier_page_attention) == sizeof(kvtier::kernels::PageAttentionStats));
  auto invalid = [](std::string why) {
    thread_error = "attention statistics: " + std::move(why);
    return static_cast<int>(absl::StatusCode::kInvalidArgument);
  };
  if (shape == nullptr || q == nullptr || k == nullptr || v == nullptr || out == nullptr) {
    return invalid("shape, q, k, v and out must not be NULL");
  }
  if (shape->dtype > 1)
    return invalid("dtype " + std::to_string(shape->dtype) + " (0 bf16, 1 fp16)");
  s = {shape->tokens,
       shape->q_heads,
       shape->kv_heads,
       shape->head_dim,
       shape->window,
       shape->tokens_per_page,
       static_cast<kvtier::kernels::KvDType>(shape->dtype)};
  if (absl::Status st = kvtier::kernels::ValidateAttentionStatsShape(s); !st.ok()) {
    return invalid(std::string(st.message()));
  }
  if (!(breadth_threshold >= 0.0f && breadth_threshold <= 1.0f)) {
    return invalid("breadth_threshold must be in [0, 1]");
  }
  const uint32_t pages = kvtier::kernels::AttentionStatsPageCount(s);
  if (capacity < pages) {
    return invalid("out holds " + std::to_string(capacity) + " entries; the shape has " +
                   std::to_string(pages) + " pages");
  }
  options.breadth_threshold = breadth_threshold;
  return 0;
}

int FailStatus(const absl::Status& st) {
  thread_error = st.ToString();
  return static_cast<int>(st.code());
}

}  // namespace

extern "C" {

kvtier_client* kvtier_connect(const char* socket_path, int* error_code) {
  absl::StatusOr<std::unique_ptr<kvtier::Client>> c =
      kvtier::Client::Connect(socket_path == nullptr ? "" : socket_path);
  if (error_code != nullptr) *error_code = static_cast<int>(c.status().code());
  if (!c.ok()) {
    thread_error = c.status().ToString();
    return nullptr;
  }
  auto* handle = new kvtier_client;  // owned by the caller until kvtier_close
  handle->client = *std::move(c);
  return handle;
}

void kvtier_close(kvtier_client* client) { delete client; }

const char* kvtier_last_error(const kvtier_client* client) {
  absl::MutexLock lock(&client->mu);
  return client->last_error.c_str();
}

int kvtier_hello(kvtier_client* c, const char* ns, const kvtier_layout* l, kvtier_key* salt_out) {
  absl::StatusOr<kvtier::HelloInfo> info = c->client->Hello(ns, SpecOf(*l));
  if (!info.ok()) return Fail(c, info.status());
  if (salt_out != nullptr) *salt_out = kvtier_key{info->salt.hi, info->salt.lo};
  return 0;
}

int kvtier_register_buffers(kvtier_client* c, const int* fds, const uint64_t* sizes, size_t count) {
  return Fail(c, c->client->RegisterBuffers({fds, count}, {sizes, count}));
}

int kvtier_lookup(kvtier_client* c, const kvtier_key* keys, size_t count, size_t* prefix_out,
                  uint8_t* tiers_out) {
  absl::StatusOr<kvtier::LookupReply> r = c->client->Lookup(Keys(keys, count));
  if (!r.ok()) return Fail(c, r.status());
  if (prefix_out != nullptr) *prefix_out = r->prefix_pages;
  if (tiers_out != nullptr) {
    for (size_t i = 0; i < r->tiers.size() && i < count; ++i) {
      tiers_out[i] = static_cast<uint8_t>(r->tiers[i]);
    }
  }
  return 0;
}

int kvtier_load_submit(kvtier_client* c, const kvtier_key* keys, const uint32_t* block_ids,
                       size_t count, uint64_t* op_out) {
  absl::StatusOr<kvtier::OpHandle> op = c->client->LoadAsync(Keys(keys, count), {block_ids, count});
  if (!op.ok()) return Fail(c, op.status());
  *op_out = *op;
  return 0;
}

int kvtier_store_submit(kvtier_client* c, const kvtier_key* keys, const uint32_t* block_ids,
                        size_t count, const kvtier_key* parent, uint32_t first_position,
                        const uint8_t* class_hints, uint64_t* op_out) {
  kvtier::StoreHints hints;
  if (parent != nullptr) hints.parent = kvtier::PageKey{parent->hi, parent->lo};
  hints.first_position = first_position;
  if (class_hints != nullptr) {
    for (size_t i = 0; i < count; ++i) {
      hints.class_hints.push_back(static_cast<kvtier::PageClass>(class_hints[i]));
    }
  }
  absl::StatusOr<kvtier::OpHandle> op =
      c->client->StoreAsync(Keys(keys, count), {block_ids, count}, hints);
  if (!op.ok()) return Fail(c, op.status());
  *op_out = *op;
  return 0;
}

int kvtier_wait(kvtier_client* c, uint64_t op, int32_t* codes_out, size_t capacity,
                uint32_t* ok_pages_out) {
  absl::StatusOr<kvtier::PageResults> r = c->client->Wait(op);
  if (!r.ok()) return Fail(c, r.status());
  if (codes_out != nullptr) {
    for (size_t i = 0; i < r->codes.size() && i < capacity; ++i) {
      codes_out[i] = static_cast<int32_t>(r->codes[i]);
    }
  }
  if (ok_pages_out != nullptr) *ok_pages_out = r->ok_pages;
  if (r->ok_pages != r->codes.size()) {
    thread_error = r->first_error;
    absl::MutexLock lock(&c->mu);
    c->last_error = r->first_error;
  }
  return 0;
}

int kvtier_pin(kvtier_client* c, const kvtier_key* keys, size_t count) {
  return Fail(c, c->client->Pin(Keys(keys, count)));
}
int kvtier_unpin(kvtier_client* c, const kvtier_key* keys, size_t count) {
  return Fail(c, c->client->Unpin(Keys(keys, count)));
}
int kvtier_release(kvtier_client* c, const kvtier_key* keys, size_t count) {
  return Fail(c, c->client->Release(Keys(keys, count)).status());
}

size_t kvtier_chain_keys(kvtier_key salt, const int32_t* tokens, size_t token_count,
                         size_t tokens_per_page, kvtier_key* keys_out, size_t capacity) {
  if (tokens_per_page == 0) return 0;
  std::vector<kvtier::PageKey> keys =
      kvtier::ChainKeys(kvtier::PageKey{salt.hi, salt.lo}, {tokens, token_count}, tokens_per_page);
  const size_t n = keys.size() < capacity ? keys.size() : capacity;
  for (size_t i = 0; i < n; ++i) keys_out[i] = kvtier_key{keys[i].hi, keys[i].lo};
  return n;
}

int kvtier_register_gpu_buffers(kvtier_client* c, const uint8_t* device_uuid,
                                const uint8_t* ipc_handles, const uint64_t* offsets,
                                const uint64_t* sizes, size_t count) {
  constexpr size_t kHandle = 64, kUuid = 16;
  std::vector<kvtier::GpuBufferHandle> buffers(count);
  for (size_t i = 0; i < count; ++i) {
    buffers[i].ipc_handle.assign(reinterpret_cast<const char*>(ipc_handles) + i * kHandle, kHandle);
    buffers[i].offset = offsets[i];
    buffers[i].size = sizes[i];
  }
  return Fail(c, c->client->RegisterGpuBuffers({reinterpret_cast<const char*>(device_uuid), kUuid},
                                               buffers));
}

int kvtier_load_gpu(kvtier_client* c, const kvtier_key* keys, const uint32_t* block_ids,
                    size_t count, int reply_when_enqueued, int32_t* page_codes_out,
                    uint32_t* ok_pages_out, uint8_t* event_handle_out) {
  absl::StatusOr<kvtier::OpHandle> op =
      c->client->LoadGpuAsync(Keys(keys, count), {block_ids, count}, reply_when_enqueued != 0);
  if (!op.ok()) return Fail(c, op.status());
  absl::StatusOr<kvtier::GpuPageResults> r = c->client->WaitGpu(*op);
  if (!r.ok()) return Fail(c, r.status());
  if (page_codes_out != nullptr) {
    for (size_t i = 0; i < r->pages.codes.size() && i < count; ++i) {
      page_codes_out[i] = static_cast<int32_t>(r->pages.codes[i]);
    }
  }
  if (ok_pages_out != nullptr) *ok_pages_out = r->pages.ok_pages;
  if (event_handle_out != nullptr && r->cuda_event_handle.size() == 64) {
    std::memcpy(event_handle_out, r->cuda_event_handle.data(), 64);
  }
  return 0;
}

// ---- ABI version 2 ----

int kvtier_abi_version(void) { return KVTIER_C_ABI_VERSION; }

int kvtier_set_timeout_ms(kvtier_client* c, uint64_t timeout_ms) {
  // 0, or a limit of more than ~146 million years, is no limit.
  c->client->set_call_timeout(timeout_ms == 0 || timeout_ms > (uint64_t{1} << 62)
                                  ? absl::InfiniteDuration()
                                  : absl::Milliseconds(static_cast<int64_t>(timeout_ms)));
  return 0;
}

const char* kvtier_thread_error(void) { return thread_error.c_str(); }

int kvtier_hello_info_get(kvtier_client* c, const char* ns, const kvtier_layout* l,
                          const char* client_name, kvtier_hello_info* info_out) {
  absl::StatusOr<kvtier::HelloInfo> info = c->client->Hello(
      ns, SpecOf(*l), /*want_dram_pool=*/false, client_name == nullptr ? "" : client_name);
  if (!info.ok()) return Fail(c, info.status());
  if (info_out != nullptr) {
    *info_out = kvtier_hello_info{};
    info_out->salt = kvtier_key{info->salt.hi, info->salt.lo};
    info_out->page_bytes = info->page_bytes;
    info_out->max_inflight_ops = info->max_inflight_ops;
    info_out->max_pinned_pages = info->max_pinned_pages;
    info_out->max_batch_pages = info->max_batch_pages;
    std::strncpy(info_out->hbm_backend, info->hbm_backend.c_str(),
                 sizeof(info_out->hbm_backend) - 1);
  }
  return 0;
}

int kvtier_store_submit_stats(kvtier_client* c, const kvtier_key* keys, const uint32_t* block_ids,
                              size_t count, const kvtier_key* parent, uint32_t first_position,
                              const uint8_t* class_hints, const kvtier_attention* stats,
                              uint64_t* op_out) {
  kvtier::StoreHints hints;
  if (parent != nullptr) hints.parent = kvtier::PageKey{parent->hi, parent->lo};
  hints.first_position = first_position;
  if (class_hints != nullptr) {
    for (size_t i = 0; i < count; ++i) {
      hints.class_hints.push_back(static_cast<kvtier::PageClass>(class_hints[i]));
    }
  }
  kvtier::AttentionBatch batch;
  if (stats != nullptr) batch = BatchOf(*stats, count);
  absl::StatusOr<kvtier::OpHandle> op = c->client->StoreAsync(
      Keys(keys, count), {block_ids, count}, hints, stats != nullptr ? &batch : nullptr);
  if (!op.ok()) return Fail(c, op.status());
  *op_out = *op;
  return 0;
}

int kvtier_report(kvtier_client* c, const kvtier_key* keys, size_t count,
                  const kvtier_attention* stats) {
  if (stats == nullptr) return Fail(c, absl::InvalidArgumentError("report without statistics"));
  return Fail(c, c->client->Report(Keys(keys, count), BatchOf(*stats, count)));
}

int kvtier_wait_pages(kvtier_client* c, uint64_t op, int32_t* codes_out, uint8_t* tiers_out,
                      size_t capacity, uint32_t* page_count_out, uint32_t* ok_pages_out) {
  absl::StatusOr<kvtier::PageResults> r = c->client->Wait(op);
  if (!r.ok()) return Fail(c, r.status());
  for (size_t i = 0; i < r->codes.size() && i < capacity; ++i) {
    if (codes_out != nullptr) codes_out[i] = static_cast<int32_t>(r->codes[i]);
    if (tiers_out != nullptr) {
      tiers_out[i] = i < r->tiers.size() ? static_cast<uint8_t>(r->tiers[i]) : uint8_t{0xff};
    }
  }
  if (page_count_out != nullptr) *page_count_out = static_cast<uint32_t>(r->codes.size());
  if (ok_pages_out != nullptr) *ok_pages_out = r->ok_pages;
  thread_error = r->ok_pages != r->codes.size() ? r->first_error : std::string();
  return 0;
}

int kvtier_release_count(kvtier_client* c, const kvtier_key* keys, size_t count,
                         uint32_t* released_out) {
  absl::StatusOr<uint32_t> r = c->client->Release(Keys(keys, count));
  if (!r.ok()) return Fail(c, r.status());
  if (released_out != nullptr) *released_out = *r;
  return 0;
}

int kvtier_status_json(kvtier_client* c, char** json_out) {
  absl::StatusOr<kvtier::wire::StatusReply> r = c->client->Status();
  if (!r.ok()) return Fail(c, r.status());
  return JsonOut(c, *r, json_out);
}

int kvtier_stats_json(kvtier_client* c, char** json_out) {
  absl::StatusOr<kvtier::wire::StatsReply> r = c->client->Stats();
  if (!r.ok()) return Fail(c, r.status());
  return JsonOut(c, *r, json_out);
}

void kvtier_free(void* p) { std::free(p); }

int kvtier_key_from_block_hash(kvtier_key salt, const kvtier_key* parent, const void* hash,
                               size_t hash_bytes, kvtier_key* key_out) {
  if (hash == nullptr || hash_bytes == 0 || hash_bytes % sizeof(uint64_t) != 0) {
    thread_error = "block hash of " + std::to_string(hash_bytes) +
                   " bytes: it must be a positive multiple of 8 bytes";
    return static_cast<int>(absl::StatusCode::kInvalidArgument);
  }
  const kvtier::PageKey s{salt.hi, salt.lo};
  kvtier::PageKey key =
      parent == nullptr ? kvtier::PageKey{} : kvtier::PageKey{parent->hi, parent->lo};
  for (size_t offset = 0; offset < hash_bytes; offset += sizeof(uint64_t)) {
    uint64_t word;
    std::memcpy(&word, static_cast<const std::byte*>(hash) + offset, sizeof(word));
    key = kvtier::ChainKeyFromId(s, key, word);
  }
  *key_out = kvtier_key{key.hi, key.lo};
  return 0;
}

int kvtier_attention_stats_cpu(const kvtier_attention_shape* shape, float breadth_threshold,
                               const void* q, const void* k, const void* v,
                               kvtier_page_attention* out, size_t capacity) {
  kvtier::kernels::AttentionStatsShape s;
  kvtier::kernels::AttentionStatsOptions options;
  if (int rc = AttentionArgs(shape, breadth_threshold, q, k, v, out, capacity, s, options)) {
    return rc;
  }
  const uint32_t pages = kvtier::kernels::AttentionStatsPageCount(s);
  absl::Status st = kvtier::kernels::ComputeAttentionStatsCpu(
      s, options, static_cast<const uint16_t*>(q), static_cast<const uint16_t*>(k),
      static_cast<const uint16_t*>(v),
      absl::MakeSpan(reinterpret_cast<kvtier::kernels::PageAttentionStats*>(out), pages));
  return st.ok() ? 0 : FailStatus(st);
}

int kvtier_has_cuda_kernels(void) {
#ifdef KVTIER_HAVE_CUDA_KERNELS
  return 1;
#else
  return 0;
#endif
}

int kvtier_attention_stats_cuda(const kvtier_attention_shape* shape, float breadth_threshold,
                                const void* q, const void* k, const void* v,
                                kvtier_page_attention* out, size_t capacity, void* stream) {
  kvtier::kernels::AttentionStatsShape s;
  kvtier::kernels::AttentionStatsOptions options;
  if (int rc = AttentionArgs(shape, breadth_threshold, q, k, v, out, capacity, s, options)) {
    return rc;
  }
#ifdef KVTIER_HAVE_CUDA_KERNELS
  namespace kk = kvtier::kernels;
  // One workspace per thread, remade when the shape or the device changes: a model's layers share
  // one shape, so a prefill makes it once.
  struct Cached {
    kk::AttentionStatsShape shape;
    int device = -1;
    std::optional<kk::AttentionStatsWorkspace> workspace;
    kk::DeviceBuffer out;
  };
  thread_local Cached cached;
  int device = 0;
  if (absl::Status st = kk::CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !st.ok()) {
    return FailStatus(st);
  }
  const uint32_t pages = kk::AttentionStatsPageCount(s);
  if (!cached.workspace || cached.device != device || !(cached.shape == s)) {
    cached.workspace.reset();
    absl::StatusOr<kk::AttentionStatsWorkspace> ws = kk::AttentionStatsWorkspace::Create(s);
    if (!ws.ok()) return FailStatus(ws.status());
    absl::StatusOr<kk::DeviceBuffer> buf =
        kk::DeviceBuffer::Allocate(size_t{pages} * sizeof(kk::PageAttentionStats));
    if (!buf.ok()) return FailStatus(buf.status());
    cached.workspace.emplace(std::move(*ws));
    cached.out = std::move(*buf);
    cached.shape = s;
    cached.device = device;
  }
  auto* device_out = static_cast<kk::PageAttentionStats*>(cached.out.get());
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  absl::Status st =
      kk::LaunchAttentionStats(s, options, q, k, v, device_out, *cached.workspace, cuda_stream);
  if (st.ok()) {
    st = kk::CudaStatus(cudaMemcpyAsync(out, device_out, size_t{pages} * sizeof(*device_out),
                                        cudaMemcpyDeviceToHost, cuda_stream),
                        "cudaMemcpyAsync(attention statistics)");
  }
  if (st.ok()) st = kk::CudaStatus(cudaStreamSynchronize(cuda_stream), "cudaStreamSynchronize");
  return st.ok() ? 0 : FailStatus(st);
#else
  (void)stream;
  return FailStatus(absl::FailedPreconditionError(
      "attention statistics: this libkvtier.so was built without CUDA (KVTIER_CUDA=OFF or no "
      "nvcc); use kvtier_attention_stats_cpu"));
#endif
}

}  // extern "C"
