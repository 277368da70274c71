#include "daemon/session.h"

namespace kvtier {

BufferSet::BufferSet(std::vector<Mapping> maps, DaemonCounters* counters)
    : maps_(std::move(maps)), counters_(counters) {
  counters_->registered_buffers.fetch_add(static_cast<uint32_t>(maps_.size()),
                                          std::memory_order_relaxed);
}

BufferSet::BufferSet(std::shared_ptr<const GpuWorkerBuffers> gpu, size_t count,
                     DaemonCounters* counters)
    : gpu_(std::move(gpu)), gpu_count_(count), counters_(counters) {
  counters_->registered_buffers.fetch_add(static_cast<uint32_t>(count), std::memory_order_relaxed);
}

BufferSet::BufferSet(std::vector<FdBuffer> fd_buffers, DaemonCounters* counters)
    : fd_buffers_(std::move(fd_buffers)), counters_(counters) {
  counters_->registered_buffers.fetch_add(static_cast<uint32_t>(fd_buffers_.size()),
                                          std::memory_order_relaxed);
}

BufferSet::~BufferSet() {
  counters_->registered_buffers.fetch_sub(static_cast<uint32_t>(count()),
                                          std::memory_order_relaxed);
}

void Session::Send(const wire::Response& response, int fd) {
  if (ended.load(std::memory_order_acquire)) return;
  // One buffer per thread: replies are sent from the connection thread and the I/O pool.
  thread_local std::string buffer;
  if (!response.SerializeToString(&buffer)) return;
  absl::MutexLock lock(&send_mu_);
  send_(buffer, fd);
}

}  // namespace kvtier
