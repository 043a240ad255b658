// A test hook that records the phases of saves, so crash tests can tell which
// phase a SIGKILL interrupted and can stop a rank at an exact point. It is off
// unless an environment variable enables it:
//
//   PERSISTENCE_TRACE_PHASES=<path>   every rank appends one line per phase
//                                     change: "<phase> rank <r> step <s>
//                                     <group>/<name> <CLOCK_MONOTONIC in us>"
//   PERSISTENCE_TRACE_KILL=<rank>:<n> rank <rank> sends itself SIGKILL right
//                                     after writing its n-th line (n from 1)
//
// Each line is one write(2) to a descriptor opened with O_APPEND, so lines of
// different ranks never mix. There is no fsync: a SIGKILL keeps the page cache.
// Both variables are read once, on the first call; when the trace is off, a
// call costs one branch.
#pragma once

#include <cstdint>
#include <string>

namespace persistence::detail {

// Phase names, in the order a save goes through them. kCopy happens only when
// a later save extends the committed file of its step; kRename, kCopy and the
// retention phases happen on rank 0 only.
namespace phase {
inline constexpr const char* kPlan = "plan";            // plan exchange and checksum sums
inline constexpr const char* kCopy = "copy";            // copy of the committed step file
inline constexpr const char* kCreate = "create";        // open the temporary file, create datasets
inline constexpr const char* kWrite = "write";          // collective data writes
inline constexpr const char* kClose = "close";          // flush with fsync, close
inline constexpr const char* kRename = "rename";        // fsync, rename to the final name, fsync of the directory
inline constexpr const char* kCommitted = "committed";  // the save is durable under its final name
inline constexpr const char* kRetention = "retention";  // verify the newest step before removing old ones
inline constexpr const char* kRemove = "remove";        // remove one old step file
inline constexpr const char* kPruned = "pruned";        // retention done, directory synced
}  // namespace phase

// Appends a trace line when PERSISTENCE_TRACE_PHASES is set. group and name
// identify the save ("models", "ema"); retention passes its own group and an
// empty name. Thread-safe.
void trace_phase(const char* phase, int rank, int64_t step, const std::string& group, const std::string& name);

}  // namespace persistence::detail
