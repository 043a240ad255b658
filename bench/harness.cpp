#include "harness.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <stdexcept>

namespace persistence::bench {

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

double synchronized_now() {
  MPI_Barrier(MPI_COMM_WORLD);
  return MPI_Wtime();
}

double max_over_ranks(double value) {
  double result = value;
  MPI_Allreduce(&value, &result, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return result;
}

bool drop_page_cache() {
  int dropped = 0;
  if (world_rank() == 0) {
    ::sync();
    // Writing 3 frees the page cache and the dentry and inode caches. It fails unless the process runs as root.
    if (FILE* control = std::fopen("/proc/sys/vm/drop_caches", "w")) {
      dropped = std::fputs("3\n", control) >= 0 ? 1 : 0;
      if (std::fclose(control) != 0) dropped = 0;
    }
  }
  MPI_Bcast(&dropped, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return dropped != 0;
}

void remove_tree(const std::string& path) {
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) std::filesystem::remove_all(path);
  MPI_Barrier(MPI_COMM_WORLD);
}

void make_directory(const std::string& path) {
  if (world_rank() == 0) std::filesystem::create_directories(path);
  MPI_Barrier(MPI_COMM_WORLD);
}

Recorder::Recorder(const std::string& path, nlohmann::json common) : common_(std::move(common)) {
  if (world_rank() != 0 || path.empty()) return;
  out_.open(path, std::ios::app);
  if (!out_) throw std::runtime_error("Cannot open the result file " + path + " for appending");
}

void Recorder::record(nlohmann::json fields) {
  if (world_rank() != 0) return;
  for (const auto& [name, value] : common_.items()) {
    if (!fields.contains(name)) fields[name] = value;
  }
  if (out_.is_open()) out_ << fields.dump() << '\n' << std::flush;

  double seconds = fields.value("seconds", 0.0);
  double gib = static_cast<double>(fields.value("bytes", uint64_t{0})) / double(1 << 30);
  std::printf("%-12s %-12s %-22s np=%-2d run=%-2d %8.3f s %8.3f GiB %8.3f GiB/s\n",
              fields.value("workload", "").c_str(), fields.value("system", "").c_str(),
              fields.value("operation", "").c_str(), fields.value("ranks", 0), fields.value("run", 0), seconds, gib,
              seconds > 0 ? gib / seconds : 0.0);
  std::fflush(stdout);
}

}  // namespace persistence::bench
