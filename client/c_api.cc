// The C ABI over kvtier::Client: status codes out, messages kept per handle.
#include <cstring>
#include <string>

#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/kvtier_c.h"

struct kvtier_client {
  std::unique_ptr<kvtier::Client> client;
  mutable absl::Mutex mu;
  std::string last_error ABSL_GUARDED_BY(mu);
};

namespace {

int Fail(kvtier_client* c, const absl::Status& s) {
  if (s.ok()) return 0;
  absl::MutexLock lock(&c->mu);
  c->last_error = s.ToString();
  return static_cast<int>(s.code());
}

absl::Span<const kvtier::PageKey> Keys(const kvtier_key* keys, size_t count) {
  static_assert(sizeof(kvtier_key) == sizeof(kvtier::PageKey));
  return {reinterpret_cast<const kvtier::PageKey*>(keys), count};
}

}  // namespace

extern "C" {

kvtier_client* kvtier_connect(const char* socket_path, int* error_code) {
  absl::StatusOr<std::unique_ptr<kvtier::Client>> c =
      kvtier::Client::Connect(socket_path == nullptr ? "" : socket_path);
  if (error_code != nullptr) *error_code = static_cast<int>(c.status().code());
  if (!c.ok()) return nullptr;
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
  kvtier::LayoutSpec spec;
  spec.layers = l->layers;
  spec.kv_heads = l->kv_heads;
  spec.head_dim = l->head_dim;
  spec.dtype = static_cast<kvtier::DType>(l->dtype);
  spec.tokens_per_page = l->tokens_per_page;
  spec.tensor_layout = static_cast<kvtier::TensorLayout>(l->tensor_layout);
  spec.num_blocks = l->num_blocks;
  absl::StatusOr<kvtier::HelloInfo> info = c->client->Hello(ns, spec);
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

}  // extern "C"
