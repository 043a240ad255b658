// Timing, result output and page-cache control shared by the benchmark suites.
// Functions marked collective are called by every rank of MPI_COMM_WORLD.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <string>

namespace persistence::bench {

int world_rank();
int world_size();

// Collective. Waits at a barrier, then returns the wall clock, so the span
// between two calls covers the slowest rank.
double synchronized_now();

// Collective. Returns the largest of every rank's value.
double max_over_ranks(double value);

// Collective. Writes dirty pages back and drops the page cache, so the next
// read comes from the disk rather than from memory. Needs root; returns
// whether the cache was dropped, the same on every rank.
bool drop_page_cache();

// Collective. Removes a directory tree on rank 0 once every rank is done with it.
void remove_tree(const std::string& path);

// Collective. Creates a directory on rank 0 before any rank uses it.
void make_directory(const std::string& path);

// Appends measurements as JSON lines (one object per line) to a file, on rank
// 0 only, and prints a one-line summary of each. Every record carries the
// common fields given at construction (rank count, scale, mode).
class Recorder {
 public:
  Recorder(const std::string& path, nlohmann::json common);

  // Adds a measurement: at least "workload", "system", "operation", "run",
  // "bytes" and "seconds". Local: call it on every rank, only rank 0 writes.
  void record(nlohmann::json fields);

 private:
  nlohmann::json common_;
  std::ofstream out_;
};

}  // namespace persistence::bench
