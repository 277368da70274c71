// libFuzzer target over kvtierd's message decoder and dispatcher: exactly the code a connection
// thread runs per datagram, against a real TieredStore. Each input is one session: a valid
// handshake and buffer registration (so fuzzed Load/Store reach real copies), then the input cut
// into datagrams by 2-byte length prefixes, then the lease ends (pins and buffers released).
//
// Short fixed run in CI (scripts/test); longer on demand:
//   build-fuzz/tests/fuzz/kvtier_dispatcher_fuzz -max_total_time=600
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "client/client.h"
#include "daemon/config.h"
#include "daemon/dispatcher.h"
#include "tiering/tiered_store.h"

namespace {

using namespace kvtier;

LayoutSpec FuzzLayout() {
  LayoutSpec s;
  s.layers = 2;
  s.kv_heads = 1;
  s.head_dim = 32;
  s.tokens_per_page = 4;
  s.num_blocks = 16;
  return s;  // 1 KiB pages in 4 pieces
}

struct World {
  DaemonConfig config;
  DaemonCounters counters;
  std::unique_ptr<TieredStore> store;
  std::unique_ptr<Dispatcher> dispatcher;
  std::unique_ptr<WorkerBuffers> buffers;
  std::string hello;
  std::string register_buffers;
  uint64_t next_session = 1;

  World() {
    config.store.page_bytes = 1024;
    config.limits.max_batch_pages = 64;
    config.limits.max_pinned_pages = 32;
    config.limits.max_message_bytes = 1 << 16;
    config.namespaces.push_back(NamespaceRule{.name = "*", .sink_slots = 2});
    StoreOptions o;
    o.page_bytes = 1024;
    o.hbm.slots = 16;
    o.dram.slots = 64;
    o.hbm_backend = HbmBackend::kHostEmulated;
    o.tokens_per_page = 4;
    store = *TieredStore::Create(o);
    // Inline executor: Load and Store run to completion inside Handle.
    dispatcher = std::make_unique<Dispatcher>(
        config, *store, counters, [](std::function<void()> t) { t(); }, ::geteuid(), 0);
    buffers =
        std::make_unique<WorkerBuffers>(*WorkerBuffers::Create(*Layout::Create(FuzzLayout())));
    wire::Request req;
    req.set_id(1);
    wire::Hello* h = req.mutable_hello();
    h->set_protocol_version(1);
    h->set_namespace_name("fuzz/model");
    const LayoutSpec l = FuzzLayout();
    h->mutable_layout()->set_layers(l.layers);
    h->mutable_layout()->set_kv_heads(l.kv_heads);
    h->mutable_layout()->set_head_dim(l.head_dim);
    h->mutable_layout()->set_tokens_per_page(l.tokens_per_page);
    h->mutable_layout()->set_num_blocks(l.num_blocks);
    hello = req.SerializeAsString();
    req.Clear();
    req.set_id(2);
    for (uint64_t size : buffers->sizes()) req.mutable_register_buffers()->add_sizes(size);
    register_buffers = req.SerializeAsString();
  }
};

World& TheWorld() {
  static World* world = new World;  // lives for the whole fuzzing process
  return *world;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = TheWorld();
  auto session = std::make_shared<Session>(w.next_session++, PeerCredentials{1, ::geteuid(), 0},
                                           [](absl::string_view, int) {});
  const bool handshake = size > 0 && (data[0] & 1);
  if (handshake) {
    Incoming hello;
    hello.bytes = w.hello;
    hello.size = w.hello.size();
    w.dispatcher->Handle(session, std::move(hello));
    Incoming reg;
    reg.bytes = w.register_buffers;
    reg.size = w.register_buffers.size();
    for (int fd : w.buffers->fds()) reg.fds.emplace_back(::dup(fd));
    w.dispatcher->Handle(session, std::move(reg));
  }
  size_t pos = size > 0 ? 1 : 0;
  while (pos + 2 <= size) {
    size_t len = data[pos] | (size_t{data[pos + 1]} << 8);
    pos += 2;
    len = std::min(len, size - pos);
    Incoming in;
    in.bytes = absl::string_view(reinterpret_cast<const char*>(data + pos), len);
    in.size = len;
    pos += len;
    if (w.dispatcher->Handle(session, std::move(in)) == Dispatcher::Verdict::kClose) break;
  }
  w.dispatcher->EndSession(*session);
  // The lease is over: this session holds no pins.
  if (w.counters.pinned_pages.load() != 0) __builtin_trap();
  return 0;
}
