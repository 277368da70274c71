#include "daemon/observability/nvme_metrics.h"

namespace kvtier {

NvmeIoMetrics::NvmeIoMetrics(metrics::Registry& r) {
  auto& h = r.AddHistogram("kvtier_nvme_io_duration_seconds",
                           "Latency of one batch of NVMe page I/O (submission to verified "
                           "completion, index write included for writes), by operation.",
                           {"op"}, metrics::LatencyBuckets());
  batch_seconds_ = {&h.Get({"read"}), &h.Get({"write"})};
}

void NvmeIoMetrics::OnBatch(Tier, bool write, size_t, uint64_t nanos) {
  batch_seconds_[write ? 1 : 0]->Observe(static_cast<double>(nanos) / 1e9);
}

void BindNvmeMetrics(metrics::Registry& r, const NvmeTier& tier) {
  auto& pages = r.AddCounter("kvtier_nvme_pages_total", "Pages moved to or from NVMe.", {"op"});
  auto& bytes =
      r.AddCounter("kvtier_nvme_bytes_total", "Page bytes moved to or from NVMe.", {"op"});
  auto& errors =
      r.AddCounter("kvtier_nvme_errors_total",
                   "NVMe I/O errors by kind (the page is dropped, never served wrong).", {"kind"});
  auto& corrupt = r.AddCounter(
      "kvtier_nvme_corrupt_pages_total",
      "Pages whose header or checksum did not verify on read: dropped and recomputed.");
  auto& refused =
      r.AddCounter("kvtier_nvme_refused_pages_total",
                   "Pages refused because the NVMe tier stopped admitting (disk full).");
  auto& recovered = r.AddCounter("kvtier_nvme_recovered_pages_total",
                                 "Pages found in the NVMe index at start and kept.");
  auto& recovery_dropped = r.AddCounter("kvtier_nvme_recovery_dropped_pages_total",
                                        "NVMe index entries dropped at start (bad record, lost "
                                        "file).");
  auto& copy_path = r.AddCounter("kvtier_nvme_copy_path_pages_total",
                                 "NVMe pages by data path: zero-copy from registered memory or "
                                 "staged through a bounce buffer.",
                                 {"path"});
  auto& admitting = r.AddGauge("kvtier_nvme_admitting",
                               "1 while the NVMe tier accepts new pages, 0 after the disk filled.");
  metrics::Counter* pw = &pages.Get({"write"});
  metrics::Counter* pr = &pages.Get({"read"});
  metrics::Counter* bw = &bytes.Get({"write"});
  metrics::Counter* br = &bytes.Get({"read"});
  metrics::Counter* ew = &errors.Get({"write"});
  metrics::Counter* er = &errors.Get({"read"});
  metrics::Counter* es = &errors.Get({"short_io"});
  metrics::Counter* en = &errors.Get({"no_space"});
  metrics::Counter* cc = &corrupt.Get({});
  metrics::Counter* rf = &refused.Get({});
  metrics::Counter* rc = &recovered.Get({});
  metrics::Counter* rd = &recovery_dropped.Get({});
  metrics::Counter* zc = &copy_path.Get({"zero_copy"});
  metrics::Counter* st = &copy_path.Get({"staged"});
  metrics::Gauge* ad = &admitting.Get({});
  r.AddCollector([&tier, pw, pr, bw, br, ew, er, es, en, cc, rf, rc, rd, zc, st, ad] {
    const NvmeCounters c = tier.counters();
    pw->Set(static_cast<double>(c.pages_written));
    pr->Set(static_cast<double>(c.pages_read));
    bw->Set(static_cast<double>(c.bytes_written));
    br->Set(static_cast<double>(c.bytes_read));
    ew->Set(static_cast<double>(c.write_errors));
    er->Set(static_cast<double>(c.read_errors));
    es->Set(static_cast<double>(c.short_ios));
    en->Set(static_cast<double>(c.enospc));
    cc->Set(static_cast<double>(c.checksum_mismatches));
    rf->Set(static_cast<double>(c.rejected_full));
    rc->Set(static_cast<double>(c.recovered_pages));
    rd->Set(static_cast<double>(c.recovery_dropped));
    zc->Set(static_cast<double>(c.zero_copy_pages));
    st->Set(static_cast<double>(c.staged_pages));
    ad->Set(tier.admitting() ? 1 : 0);
  });
}

}  // namespace kvtier
