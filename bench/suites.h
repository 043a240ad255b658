// The benchmark workloads. Each one is collective over MPI_COMM_WORLD, repeats
// its measurement settings.runs times and records every run.
#pragma once

#include "harness.h"

#include <string>

namespace persistence::bench {

struct SuiteSettings {
  std::string dir;            // scratch directory that holds every file a suite writes
  double scale = 1.0;         // fraction of the 1 GiB transformer
  int runs = 3;               // measured repetitions
  int small_count = 10000;    // tensors of the small-tensor workload
  bool drop_caches = true;    // drop the page cache before every load
  bool resume_scan = false;   // also time load_last_step, which verifies every checksum of the step
  int saved_ranks = 0;        // rank count the resharded checkpoint was saved with (reshard-load only)
};

// Workload 1: the transformer with ZeRO-sharded AdamW moments. Blocking
// save_model then save_optimizer into one step, then load_into with checksum
// verification on and off, from a cold page cache. Also times the library's
// checksum over the bytes each rank checksums on save.
void run_transformer(const SuiteSettings& settings, Recorder& recorder);

// Workload 2: many small replicated tensors, blocking save and load_into.
void run_small_tensors(const SuiteSettings& settings, Recorder& recorder);

// Workload 3, first half: saves the sharded AdamW moments of the transformer
// into <dir>/reshard and leaves the file there for reshard-load.
void run_reshard_save(const SuiteSettings& settings, Recorder& recorder);

// Workload 3, second half: loads <dir>/reshard into moments sharded over this
// run's ranks, whatever rank count saved them.
void run_reshard_load(const SuiteSettings& settings, Recorder& recorder);

// Workload 4: asynchronous save of the transformer state. Records how long the
// save calls take to return (the stall) and how long until wait() returns
// (durable), next to a plain memcpy of the bytes each rank holds.
void run_async(const SuiteSettings& settings, Recorder& recorder);

}  // namespace persistence::bench
