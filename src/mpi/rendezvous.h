// The check at the start of every collective manager call: all ranks must
// make the same call, and must arrive within a timeout. Rank 0 collects one
// arrival message per rank and replies to each with a verdict, so a mismatch or a
// rank that never comes becomes an error on every rank that arrived, naming
// the call and the ranks, instead of a hang.
#pragma once

#include "mpi/communicator.h"

#include <chrono>
#include <cstdint>
#include <string>

namespace persistence::detail {

// Collective over comm. sequence counts the calls made on comm so far, so a
// rank that skipped a call is caught even when the descriptions match. Throws
// CollectiveError when ranks describe different calls, or when some rank has
// not arrived within timeout.
void rendezvous(const Communicator& comm, uint64_t sequence, const std::string& call,
                std::chrono::milliseconds timeout);

}  // namespace persistence::detail
