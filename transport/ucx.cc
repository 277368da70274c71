#include "transport/ucx.h"

#include "absl/strings/str_cat.h"

namespace kvtier::ucx {

absl::Status ToStatus(ucs_status_t s, absl::string_view what) {
  if (s == UCS_OK) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": ", ucs_status_string(s));
  switch (s) {
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      return absl::ResourceExhaustedError(msg);
    case UCS_ERR_TIMED_OUT:
      return absl::DeadlineExceededError(msg);
    case UCS_ERR_CANCELED:
      return absl::CancelledError(msg);
    case UCS_ERR_INVALID_PARAM:
      return absl::InvalidArgumentError(msg);
    default:
      return absl::UnavailableError(msg);
  }
}

absl::StatusOr<Context> Context::Create(const ContextOptions& options) {
  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return ToStatus(s, "ucp_config_read");
  }
  // The config object is released on every path below.
  std::unique_ptr<ucp_config_t, void (*)(ucp_config_t*)> held(config, ucp_config_release);
  if (ucs_status_t s = ucp_config_modify(config, "TLS", options.tls.c_str()); s != UCS_OK) {
    return ToStatus(s, absl::StrCat("UCX_TLS '", options.tls, "'"));
  }
  if (ucs_status_t s = ucp_config_modify(config, "NET_DEVICES", options.net_devices.c_str());
      s != UCS_OK) {
    return ToStatus(s, absl::StrCat("UCX_NET_DEVICES '", options.net_devices, "'"));
  }
  // Control messages go eagerly, whole, however long (up to the protocol's limit): a peer that
  // asks for a rendezvous is not one of ours, and is refused before it sends a byte.
  if (ucs_status_t s = ucp_config_modify(config, "RNDV_THRESH", "inf"); s != UCS_OK) {
    return ToStatus(s, "UCX_RNDV_THRESH");
  }
  // Every kvtier endpoint asks for peer-failure handling, and UCX 1.13 leaves its shared-memory
  // transports (sysv, posix) out of such endpoints unless they are told to claim it: without
  // this, peers on one host move page bytes over TCP on loopback. A dead holder is still found
  // out (UCP's keepalive, and every call's deadline), and every page is verified on arrival.
  if (ucs_status_t s = ucp_config_modify(config, "MM_ERROR_HANDLING", "y"); s != UCS_OK) {
    return ToStatus(s, "UCX_MM_ERROR_HANDLING");
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 1;
  ucp_context_h h = nullptr;
  if (ucs_status_t s = ucp_init(&params, config, &h); s != UCS_OK) {
    return ToStatus(s, absl::StrCat("ucp_init (UCX_TLS '", options.tls, "')"));
  }
  return Context(h);
}

Context::~Context() {
  if (h_ != nullptr) ucp_cleanup(h_);
}

absl::StatusOr<Worker> Worker::Create(const Context& context) {
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = UCS_THREAD_MODE_SINGLE;
  ucp_worker_h h = nullptr;
  if (ucs_status_t s = ucp_worker_create(context.get(), &params, &h); s != UCS_OK) {
    return ToStatus(s, "ucp_worker_create");
  }
  return Worker(h);
}

Worker::~Worker() {
  if (h_ != nullptr) ucp_worker_destroy(h_);
}

void Listener::Reset() {
  if (h_ != nullptr) ucp_listener_destroy(h_);
  h_ = nullptr;
}

namespace {

// The remote key of a mapped region, for peers to read it with; on failure the region is unmapped
// (both Register and Allocate hand back either a whole Memory or nothing).
absl::StatusOr<std::string> PackRkeyOrUnmap(const Context& context, ucp_mem_h memh) {
  void* packed = nullptr;
  size_t packed_size = 0;
  if (ucs_status_t s = ucp_rkey_pack(context.get(), memh, &packed, &packed_size); s != UCS_OK) {
    ucp_mem_unmap(context.get(), memh);
    return ToStatus(s, "ucp_rkey_pack");
  }
  std::string rkey(static_cast<const char*>(packed), packed_size);
  ucp_rkey_buffer_release(packed);
  return rkey;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Memory>> Memory::Register(std::shared_ptr<const Context> context,
                                                         void* base, size_t length) {
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  params.address = base;
  params.length = length;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t s = ucp_mem_map(context->get(), &params, &memh); s != UCS_OK) {
    return ToStatus(s, absl::StrCat("ucp_mem_map of ", length, " bytes"));
  }
  absl::StatusOr<std::string> rkey = PackRkeyOrUnmap(*context, memh);
  if (!rkey.ok()) return rkey.status();
  return std::unique_ptr<Memory>(new Memory(std::move(context), memh, static_cast<std::byte*>(base),
                                            length, *std::move(rkey)));
}

absl::StatusOr<std::unique_ptr<Memory>> Memory::Allocate(std::shared_ptr<const Context> context,
                                                         size_t length) {
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  params.address = nullptr;
  params.length = length;
  params.flags = UCP_MEM_MAP_ALLOCATE;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t s = ucp_mem_map(context->get(), &params, &memh); s != UCS_OK) {
    return ToStatus(s, absl::StrCat("ucp_mem_map allocating ", length, " bytes"));
  }
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  if (ucs_status_t s = ucp_mem_query(memh, &attr); s != UCS_OK || attr.length < length) {
    ucp_mem_unmap(context->get(), memh);
    return ToStatus(s != UCS_OK ? s : UCS_ERR_NO_MEMORY, "ucp_mem_query of an allocated region");
  }
  absl::StatusOr<std::string> rkey = PackRkeyOrUnmap(*context, memh);
  if (!rkey.ok()) return rkey.status();
  return std::unique_ptr<Memory>(new Memory(
      std::move(context), memh, static_cast<std::byte*>(attr.address), length, *std::move(rkey)));
}

Memory::~Memory() { ucp_mem_unmap(context_->get(), memh_); }

absl::StatusOr<RemoteKey> RemoteKey::Unpack(ucp_ep_h ep, absl::string_view packed) {
  ucp_rkey_h h = nullptr;
  if (ucs_status_t s = ucp_ep_rkey_unpack(ep, packed.data(), &h); s != UCS_OK) {
    return ToStatus(s, absl::StrCat("ucp_ep_rkey_unpack of a ", packed.size(), "-byte key"));
  }
  return RemoteKey(h);
}

}  // namespace kvtier::ucx
