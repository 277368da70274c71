// The connection limits: machine-derived defaults, the registered-bytes charge (per session, in
// total, given back), and the log rate limiter.
#include "daemon/connection_limits.h"

#include <limits>
#include <memory>

#include "gtest/gtest.h"

namespace kvtier {
namespace {

wire::RegisterBuffers Sizes(std::initializer_list<uint64_t> sizes) {
  wire::RegisterBuffers r;
  for (uint64_t s : sizes) r.add_sizes(s);
  return r;
}

std::unique_ptr<Session> NewSession(uint64_t id) {
  return std::make_unique<Session>(id, PeerCredentials{}, [](absl::string_view, int) {});
}

TEST(ConnectionLimitsTest, DefaultsComeFromTheMachineAndExplicitValuesAreKept) {
  LimitsConfig l;
  const EffectiveLimits e = ResolveLimits(l);
  EXPECT_GT(e.registered_bytes_per_session, 0u);
  EXPECT_LE(e.registered_bytes_per_session, e.registered_bytes);
  EXPECT_LE(e.registered_bytes, uint64_t{1} << 45);  // a quarter of a 47-bit address space
  EXPECT_EQ(e.connections_per_uid, l.max_connections / 4);
  l.max_registered_bytes = 1000;
  l.max_registered_bytes_per_session = 600;
  l.max_connections = 2;
  EXPECT_EQ(ResolveLimits(l).registered_bytes, 1000u);
  EXPECT_EQ(ResolveLimits(l).registered_bytes_per_session, 600u);
  EXPECT_EQ(ResolveLimits(l).connections_per_uid, 1u);  // never 0
}

TEST(ConnectionLimitsTest, RegisteredBytesAreChargedPerSessionAndInTotalAndGivenBack) {
  LimitsConfig l;
  l.max_registered_bytes = 1000;
  l.max_registered_bytes_per_session = 600;
  DaemonCounters counters;
  auto a = NewSession(1);
  auto b = NewSession(2);
  absl::Status st = ChargeRegisteredBytes(l, counters, *a, Sizes({300, 301}));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("limits.max_registered_bytes_per_session is 600"),
            absl::string_view::npos)
      << st;
  ASSERT_TRUE(ChargeRegisteredBytes(l, counters, *a, Sizes({300, 300})).ok());
  EXPECT_EQ(counters.registered_bytes.load(), 600u);
  st = ChargeRegisteredBytes(l, counters, *b, Sizes({401}));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("limits.max_registered_bytes is 1000"), absl::string_view::npos)
      << st;
  ASSERT_TRUE(ChargeRegisteredBytes(l, counters, *b, Sizes({400})).ok());
  // A session holds the most it registered (its earlier buffers may still be mapped).
  ASSERT_TRUE(ChargeRegisteredBytes(l, counters, *a, Sizes({100})).ok());
  EXPECT_EQ(counters.registered_bytes.load(), 1000u);
  // Sizes that overflow 64 bits saturate, and are refused; a refusal takes nothing back.
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  EXPECT_FALSE(ChargeRegisteredBytes(l, counters, *b, Sizes({max, max, 2})).ok());
  EXPECT_EQ(counters.registered_bytes.load(), 1000u);
  b.reset();
  EXPECT_EQ(counters.registered_bytes.load(), 600u);
  a.reset();
  EXPECT_EQ(counters.registered_bytes.load(), 0u) << "an ended session gives its bytes back";
}

TEST(ConnectionLimitsTest, LogLinesBeyondTheBurstAreDroppedAndCounted) {
  DaemonCounters counters;
  LogRateLimiter limiter(/*per_second=*/1e-6, /*burst=*/3);
  int allowed = 0;
  for (int i = 0; i < 100; ++i) allowed += limiter.Allow(counters) ? 1 : 0;
  EXPECT_EQ(allowed, 3);
  EXPECT_EQ(counters.log_lines_suppressed.load(), 97u);
}

}  // namespace
}  // namespace kvtier
