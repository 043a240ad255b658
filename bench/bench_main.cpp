// persistence_bench: runs one benchmark workload under mpiexec and appends
// every measurement to a JSON-lines file. scripts/bench.sh runs the whole
// suite; BENCHMARKS.md describes the workloads and the results.
//
//   mpiexec -n 2 persistence_bench --workload transformer --dir /tmp/scratch --out results.jsonl
//   persistence_bench --workload describe --scale 0.5 --out spec.json   (no MPI)

#include "harness.h"
#include "suites.h"
#include "workloads.h"

#include <CLI/CLI.hpp>
#include <mpi.h>

#include <exception>
#include <fstream>
#include <iostream>
#include <map>

namespace {

using persistence::bench::SuiteSettings;

struct Arguments {
  std::string workload;
  std::string out;
  std::string series = "default";
  std::string mode = "full";
  SuiteSettings settings;
};

// Writes the shapes of the transformer and the small-tensor workloads for the Python references.
void write_description(const Arguments& arguments) {
  using namespace persistence::bench;
  nlohmann::json description = {
      {"transformer", describe("transformer", transformer_parameters(arguments.settings.scale), true)},
      {"small", describe("small", small_tensors(arguments.settings.small_count), false)}};
  std::ofstream(arguments.out) << description.dump(1) << '\n';
}

void run_workload(const Arguments& arguments) {
  using namespace persistence::bench;
  static const std::map<std::string, void (*)(const SuiteSettings&, Recorder&)> workloads = {
      {"transformer", run_transformer},
      {"small", run_small_tensors},
      {"reshard-save", run_reshard_save},
      {"reshard-load", run_reshard_load},
      {"async", run_async}};
  nlohmann::json common = {{"ranks", world_size()},
                           {"scale", arguments.settings.scale},
                           {"series", arguments.series},
                           {"mode", arguments.mode}};
  if (arguments.workload == "small") common["tensors"] = arguments.settings.small_count;
  Recorder recorder(arguments.out, common);
  make_directory(arguments.settings.dir);
  workloads.at(arguments.workload)(arguments.settings, recorder);
}

}  // namespace

int main(int argc, char** argv) {
  Arguments arguments;
  CLI::App app{"Benchmarks persistence saves and loads; run under mpiexec"};
  app.add_option("--workload", arguments.workload, "What to run")
      ->required()
      ->check(CLI::IsMember({"transformer", "small", "reshard-save", "reshard-load", "async", "describe"}));
  app.add_option("--dir", arguments.settings.dir, "Scratch directory for the checkpoint files");
  app.add_option("--out", arguments.out, "JSON-lines file the measurements are appended to (describe: the JSON file)");
  app.add_option("--scale", arguments.settings.scale, "Fraction of the 1 GiB transformer")
      ->check(CLI::Range(1e-4, 4.0));
  app.add_option("--runs", arguments.settings.runs, "Measured repetitions")->check(CLI::PositiveNumber);
  app.add_option("--small-count", arguments.settings.small_count, "Tensors in the small-tensor workload")
      ->check(CLI::PositiveNumber);
  app.add_option("--saved-ranks", arguments.settings.saved_ranks, "Ranks that saved the resharded checkpoint");
  app.add_option("--series", arguments.series, "Label stored with every record, e.g. sweep");
  app.add_option("--mode", arguments.mode, "Label stored with every record: full or quick");
  app.add_flag("--resume-scan", arguments.settings.resume_scan, "Also time load_last_step");
  bool keep_caches = false;
  app.add_flag("--keep-caches", keep_caches, "Do not drop the page cache before loads");
  CLI11_PARSE(app, argc, argv);
  arguments.settings.drop_caches = !keep_caches;

  if (arguments.workload == "describe") {
    write_description(arguments);
    return 0;
  }
  if (arguments.settings.dir.empty()) {
    std::cerr << "--dir is required for workload " << arguments.workload << '\n';
    return 2;
  }

  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  try {
    run_workload(arguments);
  } catch (const std::exception& error) {
    std::cerr << "persistence_bench " << arguments.workload << " failed: " << error.what() << '\n';
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return 0;
}
