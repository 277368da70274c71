#include "transport/etcd_client.h"

#include <curl/curl.h>

#include <atomic>
#include <mutex>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvtier {
namespace {

using nlohmann::json;

// The key just past every key that starts with `prefix` (etcd's range_end for a prefix).
std::string PrefixEnd(std::string prefix) {
  while (!prefix.empty()) {
    if (static_cast<unsigned char>(prefix.back()) < 0xff) {
      prefix.back() = static_cast<char>(prefix.back() + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // every key
}

int64_t Int64Field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  int64_t v = 0;
  if (it->is_string() && absl::SimpleAtoi(it->get<std::string>(), &v)) return v;
  return 0;
}

struct CurlDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

size_t Append(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

absl::StatusOr<json> Parse(const std::string& body, const char* what) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InternalError(
        absl::StrCat("etcd ", what, ": unparseable answer '", body.substr(0, 200), "'"));
  }
  if (j.contains("error") || (j.contains("code") && j.contains("message"))) {
    return absl::FailedPreconditionError(
        absl::StrCat("etcd ", what, ": ", j.value("message", j.dump())));
  }
  return j;
}

}  // namespace

absl::StatusOr<std::unique_ptr<EtcdClient>> EtcdClient::Create(const EtcdOptions& options) {
  if (options.endpoints.empty()) return absl::InvalidArgumentError("no etcd endpoints");
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  return std::unique_ptr<EtcdClient>(new EtcdClient(options));
}

absl::StatusOr<std::string> EtcdClient::Post(const std::string& path, const std::string& body) {
  const size_t n = options_.endpoints.size();
  const size_t first = preferred_.load(std::memory_order_relaxed) % n;
  absl::Status last;
  for (size_t i = 0; i < n; ++i) {
    const size_t e = (first + i) % n;
    std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
    if (!curl) return absl::ResourceExhaustedError("curl_easy_init");
    std::unique_ptr<curl_slist, SlistDeleter> headers(
        curl_slist_append(nullptr, "Content-Type: application/json"));
    const std::string url = options_.endpoints[e] + path;
    std::string out;
    const long timeout_ms = static_cast<long>(absl::ToInt64Milliseconds(options_.request_timeout));
    curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers.get());
    curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, &Append);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &out);
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
    const CURLcode rc = curl_easy_perform(curl.get());
    long http = 0;
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &http);
    if (rc == CURLE_OK && http == 200) {
      preferred_.store(e, std::memory_order_relaxed);
      return out;
    }
    last = absl::UnavailableError(
        absl::StrCat("etcd ", url, ": ",
                     rc != CURLE_OK ? curl_easy_strerror(rc)
                                    : absl::StrCat("HTTP ", http, " ", out.substr(0, 200))));
  }
  return last;
}

absl::StatusOr<int64_t> EtcdClient::LeaseGrant(int64_t ttl_s) {
  absl::StatusOr<std::string> r = Post("/v3/lease/grant", json{{"TTL", ttl_s}}.dump());
  if (!r.ok()) return r.status();
  absl::StatusOr<json> j = Parse(*r, "lease grant");
  if (!j.ok()) return j.status();
  const int64_t id = Int64Field(*j, "ID");
  if (id == 0) return absl::InternalError(absl::StrCat("etcd lease grant: no ID in ", *r));
  return id;
}

absl::StatusOr<int64_t> EtcdClient::LeaseKeepAlive(int64_t lease) {
  absl::StatusOr<std::string> r =
      Post("/v3/lease/keepalive", json{{"ID", std::to_string(lease)}}.dump());
  if (!r.ok()) return r.status();
  // The gateway streams: one {"result": ...} line per keepalive answer.
  const std::string first = r->substr(0, r->find('\n'));
  absl::StatusOr<json> j = Parse(first, "lease keepalive");
  if (!j.ok()) return j.status();
  const json& result = j->contains("result") ? (*j)["result"] : *j;
  return Int64Field(result, "TTL");
}

absl::Status EtcdClient::LeaseRevoke(int64_t lease) {
  return Post("/v3/lease/revoke", json{{"ID", std::to_string(lease)}}.dump()).status();
}

absl::Status EtcdClient::Put(const std::string& key, const std::string& value, int64_t lease) {
  json body{{"key", absl::Base64Escape(key)}, {"value", absl::Base64Escape(value)}};
  if (lease != 0) body["lease"] = std::to_string(lease);
  absl::StatusOr<std::string> r = Post("/v3/kv/put", body.dump());
  if (!r.ok()) return r.status();
  return Parse(*r, "put").status();
}

absl::StatusOr<EtcdClient::Range> EtcdClient::GetPrefix(const std::string& prefix) {
  absl::StatusOr<std::string> r =
      Post("/v3/kv/range", json{{"key", absl::Base64Escape(prefix)},
                                {"range_end", absl::Base64Escape(PrefixEnd(prefix))}}
                               .dump());
  if (!r.ok()) return r.status();
  absl::StatusOr<json> j = Parse(*r, "range");
  if (!j.ok()) return j.status();
  Range out;
  if (j->contains("header")) out.revision = Int64Field((*j)["header"], "revision");
  if (j->contains("kvs") && (*j)["kvs"].is_array()) {
    for (const json& kv : (*j)["kvs"]) {
      std::string k, v;
      if (!kv.contains("key") || !absl::Base64Unescape(kv["key"].get<std::string>(), &k)) continue;
      if (kv.contains("value")) absl::Base64Unescape(kv["value"].get<std::string>(), &v);
      out.kvs.emplace_back(std::move(k), std::move(v));
    }
  }
  return out;
}

namespace {

struct WatchState {
  const std::function<void()>* on_change;
  const std::function<bool()>* stop;
  std::string pending;
};

size_t OnWatchData(char* data, size_t size, size_t n, void* arg) {
  auto* st = static_cast<WatchState*>(arg);
  st->pending.append(data, size * n);
  // One JSON object per line; only batches that carry events matter (the first answer merely
  // confirms the watch).
  size_t nl;
  while ((nl = st->pending.find('\n')) != std::string::npos) {
    const std::string line = st->pending.substr(0, nl);
    st->pending.erase(0, nl + 1);
    if (line.find("\"events\"") != std::string::npos) (*st->on_change)();
  }
  if (st->pending.size() > (1u << 20)) st->pending.clear();  // a line we do not need, unbounded
  return size * n;
}

int OnWatchProgress(void* arg, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return (*static_cast<WatchState*>(arg)->stop)() ? 1 : 0;  // non-zero aborts the transfer
}

}  // namespace

absl::Status EtcdClient::WatchPrefix(const std::string& prefix, int64_t start_revision,
                                     const std::function<void()>& on_change,
                                     const std::function<bool()>& stop) {
  json create{{"key", absl::Base64Escape(prefix)},
              {"range_end", absl::Base64Escape(PrefixEnd(prefix))}};
  if (start_revision > 0) create["start_revision"] = std::to_string(start_revision);
  const std::string body = json{{"create_request", create}}.dump();
  const size_t e = preferred_.load(std::memory_order_relaxed) % options_.endpoints.size();
  std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
  if (!curl) return absl::ResourceExhaustedError("curl_easy_init");
  std::unique_ptr<curl_slist, SlistDeleter> headers(
      curl_slist_append(nullptr, "Content-Type: application/json"));
  const std::string url = options_.endpoints[e] + "/v3/watch";
  WatchState st{&on_change, &stop, {}};
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, &OnWatchData);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &st);
  curl_easy_setopt(curl.get(), CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl.get(), CURLOPT_XFERINFOFUNCTION, &OnWatchProgress);
  curl_easy_setopt(curl.get(), CURLOPT_XFERINFODATA, &st);
  curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.request_timeout)));
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
  const CURLcode rc = curl_easy_perform(curl.get());
  if (rc == CURLE_ABORTED_BY_CALLBACK) return absl::CancelledError("watch stopped");
  return absl::UnavailableError(
      absl::StrCat("etcd watch on ", url, " ended: ", curl_easy_strerror(rc)));
}

}  // namespace kvtier
