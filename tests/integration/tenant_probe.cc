// kvtier-tenant-probe: a hostile worker for the tenant-isolation tests. It speaks the wire
// protocol by hand (so it keeps every descriptor the daemon attaches) and tries what a tenant on
// the same node would try against another tenant. The tests run it under a second uid
// (setpriv --reuid=65534).
//
//   kvtier-tenant-probe pool SOCKET NAMESPACE
//     Hello asking for the DRAM pool. Prints "fds=N"; for each descriptor received, how many
//     nonzero bytes it could read ("read_nonzero=B"), and whether it could reopen it read-write
//     through /proc/self/fd ("reopen_rw=0|1"); when it could, it overwrites the pool with 0x5a.
//     Exit 0 when the daemon shared nothing, 3 when it shared a pool.
//   kvtier-tenant-probe hold SOCKET NAMESPACE...
//     Hello on one connection per namespace; prints "hello NS ok" or "hello NS refused: why"
//     for each, then "ready", and keeps the connections open until killed.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/seqpacket.h"
#include "client/client.h"
#include "client/defaults.h"
#include "client/proto/kvtier.pb.h"

namespace {

using namespace kvtier;

wire::Request HelloRequest(const std::string& ns, bool want_pool) {
  wire::Request req;
  req.set_id(1);
  wire::Hello* h = req.mutable_hello();
  h->set_protocol_version(kProtocolVersion);
  h->set_namespace_name(ns);
  h->set_want_dram_pool(want_pool);
  h->set_client_name("tenant-probe");
  wire::Layout* l = h->mutable_layout();
  // The integration tests' worker layout: 4 layers x 2 x 2 heads x 64 x bf16 x 16 = 32 KiB pages.
  l->set_layers(4);
  l->set_kv_heads(2);
  l->set_head_dim(64);
  l->set_dtype(static_cast<uint32_t>(DType::kBF16));
  l->set_tokens_per_page(16);
  l->set_tensor_layout(static_cast<uint32_t>(TensorLayout::kVllmPerLayer));
  l->set_num_blocks(64);
  return req;
}

// Sends a Hello and returns the reply (error or not) with its descriptors.
absl::StatusOr<std::pair<wire::Response, std::vector<UniqueFd>>> Hello(int sock,
                                                                       const std::string& ns,
                                                                       bool want_pool) {
  const std::string bytes = HelloRequest(ns, want_pool).SerializeAsString();
  if (absl::Status s = SendDatagram(sock, bytes); !s.ok()) return s;
  std::string buffer(1 << 20, '\0');
  absl::StatusOr<Datagram> d = ReceiveDatagram(sock, buffer, buffer.size());
  if (!d.ok()) return d.status();
  if (d->eof) return absl::UnavailableError("the daemon closed the connection");
  wire::Response resp;
  if (!resp.ParseFromArray(buffer.data(), static_cast<int>(d->size))) {
    return absl::DataLossError("reply does not parse");
  }
  return std::make_pair(std::move(resp), std::move(d->fds));
}

int Pool(const std::string& socket, const std::string& ns) {
  absl::StatusOr<UniqueFd> sock = ConnectSeqpacket(socket);
  if (!sock.ok()) {
    std::fprintf(stderr, "connect: %s\n", sock.status().ToString().c_str());
    return 1;
  }
  auto reply = Hello(sock->get(), ns, /*want_pool=*/true);
  if (!reply.ok()) {
    std::fprintf(stderr, "hello: %s\n", reply.status().ToString().c_str());
    return 1;
  }
  if (reply->first.has_error()) {
    std::fprintf(stderr, "hello refused: %s\n", reply->first.error().message().c_str());
    return 1;
  }
  std::printf("fds=%zu dram_pool_slots=%u\n", reply->second.size(),
              reply->first.hello().dram_pool_slots());
  bool leaked = false;
  for (const UniqueFd& fd : reply->second) {
    struct stat st {};
    ::fstat(fd.get(), &st);
    std::vector<char> buf(1 << 16);
    uint64_t nonzero = 0;
    for (off_t off = 0; off < st.st_size;) {
      const ssize_t n = ::pread(fd.get(), buf.data(), buf.size(), off);
      if (n <= 0) break;
      for (ssize_t i = 0; i < n; ++i) nonzero += buf[i] != 0;
      off += n;
    }
    std::printf("read_nonzero=%llu of %lld bytes\n", static_cast<unsigned long long>(nonzero),
                static_cast<long long>(st.st_size));
    UniqueFd rw(::open(absl::StrCat("/proc/self/fd/", fd.get()).c_str(), O_RDWR | O_CLOEXEC));
    std::printf("reopen_rw=%d\n", rw.valid() ? 1 : 0);
    if (rw.valid()) {
      std::vector<char> junk(1 << 16, 0x5a);
      for (off_t off = 0; off < st.st_size; off += static_cast<off_t>(junk.size())) {
        if (::pwrite(rw.get(), junk.data(), junk.size(), off) <= 0) break;
      }
    }
    leaked = true;
  }
  std::fflush(stdout);
  return leaked ? 3 : 0;
}

int Hold(const std::string& socket, const std::vector<std::string>& namespaces) {
  std::vector<UniqueFd> held;
  for (const std::string& ns : namespaces) {
    absl::StatusOr<UniqueFd> sock = ConnectSeqpacket(socket);
    if (!sock.ok()) {
      std::printf("hello %s refused: connect: %s\n", ns.c_str(), sock.status().ToString().c_str());
      continue;
    }
    auto reply = Hello(sock->get(), ns, /*want_pool=*/false);
    if (!reply.ok()) {
      std::printf("hello %s refused: %s\n", ns.c_str(), reply.status().ToString().c_str());
    } else if (reply->first.has_error()) {
      std::printf("hello %s refused: %s\n", ns.c_str(), reply->first.error().message().c_str());
    } else {
      std::printf("hello %s ok\n", ns.c_str());
      held.push_back(*std::move(sock));
    }
  }
  std::printf("ready\n");
  std::fflush(stdout);
  while (true) ::pause();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "pool" && argc == 4) return Pool(argv[2], argv[3]);
  if (mode == "hold" && argc >= 4)
    return Hold(argv[2], std::vector<std::string>(argv + 3, argv + argc));
  std::fprintf(stderr, "usage: kvtier-tenant-probe pool SOCKET NS | hold SOCKET NS...\n");
  return 2;
}
