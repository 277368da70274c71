// The project's one pair of status-propagation macros (Debian 12's Abseil ships none publicly).
//
//   RETURN_IF_ERROR(file.Sync());              // returns the absl::Status when it is not OK
//   ASSIGN_OR_RETURN(Layout layout, Layout::Create(spec));  // declares, or assigns to, `layout`
//
// Both work in functions returning absl::Status or absl::StatusOr<T>. ASSIGN_OR_RETURN expands to
// more than one statement, so it cannot be the body of an unbraced `if`; its left-hand side may
// not contain an unparenthesised comma (name the type with `using` first).
#pragma once

#include <utility>

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define RETURN_IF_ERROR(expr)                             \
  do {                                                    \
    if (::absl::Status kvtier_status_macro_ = (expr);     \
        ABSL_PREDICT_FALSE(!kvtier_status_macro_.ok())) { \
      return kvtier_status_macro_;                        \
    }                                                     \
  } while (false)

#define ASSIGN_OR_RETURN(lhs, expr) \
  KVTIER_ASSIGN_OR_RETURN_IMPL_(KVTIER_STATUS_MACRO_CONCAT_(kvtier_statusor_, __LINE__), lhs, expr)

// Implementation details of the macros above.
#define KVTIER_STATUS_MACRO_CONCAT_INNER_(a, b) a##b
#define KVTIER_STATUS_MACRO_CONCAT_(a, b) KVTIER_STATUS_MACRO_CONCAT_INNER_(a, b)
#define KVTIER_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)                                     \
  /* `statusor` is an identifier and `lhs` may be a declaration: neither takes parentheses. */ \
  auto statusor = (expr);                 /* NOLINT(bugprone-macro-parentheses) */             \
  if (ABSL_PREDICT_FALSE(!statusor.ok())) /* NOLINT(bugprone-macro-parentheses) */             \
    return std::move(statusor).status();                                                       \
  lhs = *std::move(statusor) /* NOLINT(bugprone-macro-parentheses) */
