// TenantLedger: live namespaces per uid and in total, pins per uid and per namespace.
#include "daemon/tenant_ledger.h"

#include "gtest/gtest.h"

namespace kvtier {
namespace {

TEST(TenantLedger, NamespacesAreLimitedPerUidAndReleasedWithTheirLastSession) {
  TenantLedger l({.max_namespaces = 3,
                  .max_namespaces_per_uid = 2,
                  .max_pinned_per_uid = 10,
                  .max_pinned_per_namespace = 10});
  ASSERT_TRUE(l.Join(100, "a").ok());
  ASSERT_TRUE(l.Join(100, "a").ok());  // a second session of a namespace it holds
  ASSERT_TRUE(l.Join(100, "b").ok());
  absl::Status third = l.Join(100, "c");
  EXPECT_TRUE(absl::IsResourceExhausted(third));
  EXPECT_NE(third.message().find("limits.max_namespaces_per_uid is 2"), std::string::npos) << third;
  ASSERT_TRUE(l.Join(200, "a").ok());  // another uid joins a live namespace
  ASSERT_TRUE(l.Join(200, "c").ok());
  absl::Status total = l.Join(300, "d");
  EXPECT_NE(total.message().find("limits.max_namespaces is 3"), std::string::npos) << total;
  EXPECT_FALSE(l.Leave(100, "a"));
  EXPECT_FALSE(l.Leave(100, "a"));  // uid 200 still has a session in it
  EXPECT_TRUE(l.Leave(200, "a"));
  EXPECT_EQ(l.live_namespaces(), 2u);
  EXPECT_TRUE(l.Join(300, "d").ok());
  EXPECT_FALSE(l.Join(100, "e").ok());  // its own share allows it; the total does not
  EXPECT_TRUE(l.Leave(200, "c"));
  EXPECT_TRUE(l.Join(100, "e").ok());  // uid 100 holds only "b"
}

TEST(TenantLedger, PinsAreLimitedPerUidAndPerNamespace) {
  TenantLedger l({.max_namespaces = 8,
                  .max_namespaces_per_uid = 8,
                  .max_pinned_per_uid = 10,
                  .max_pinned_per_namespace = 6});
  ASSERT_TRUE(l.AddPins(100, 1, 6).ok());
  absl::Status ns_full = l.AddPins(200, 1, 1);
  EXPECT_NE(ns_full.message().find("in this namespace"), std::string::npos) << ns_full;
  ASSERT_TRUE(l.AddPins(100, 2, 4).ok());
  absl::Status uid_full = l.AddPins(100, 3, 1);
  EXPECT_NE(uid_full.message().find("for uid 100"), std::string::npos) << uid_full;
  EXPECT_TRUE(l.AddPins(200, 3, 5).ok());  // another uid is unaffected
  l.RemovePins(100, 1, 6);
  EXPECT_TRUE(l.AddPins(100, 4, 5).ok());
}

}  // namespace
}  // namespace kvtier
