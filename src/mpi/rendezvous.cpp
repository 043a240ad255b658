#include "mpi/rendezvous.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

namespace persistence::detail {
namespace {

constexpr int kArrivalTag = 7301;
constexpr int kVerdictTag = 7302;

struct Arrival {
  uint64_t sequence = 0;
  char call[248] = {};
};

struct Verdict {
  int32_t ok = 0;
  char message[1020] = {};
};

void copy_text(char* destination, size_t capacity, const std::string& text) {
  size_t length = std::min(text.size(), capacity - 1);
  std::memcpy(destination, text.data(), length);
  destination[length] = '\0';
}

// Polls request until it completes or the deadline passes. Returns completion.
bool wait_until(MPI_Request& request, std::chrono::steady_clock::time_point deadline) {
  auto pause = std::chrono::microseconds(20);
  while (true) {
    int done = 0;
    check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done != 0) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
}

std::string describe(const Arrival& arrival) {
  return std::string(arrival.call) + " (call " + std::to_string(arrival.sequence) + ")";
}

// Rank 0: collects arrivals, compares them, and replies to every rank that arrived.
void judge(const Communicator& comm, const Arrival& mine, std::chrono::steady_clock::time_point deadline,
           std::chrono::milliseconds timeout) {
  auto ranks = static_cast<size_t>(comm.size());
  std::vector<Arrival> arrivals(ranks);
  std::vector<MPI_Request> requests(ranks, MPI_REQUEST_NULL);
  arrivals[0] = mine;
  for (size_t r = 1; r < ranks; ++r) {
    check_mpi(MPI_Irecv(&arrivals[r], sizeof(Arrival), MPI_BYTE, static_cast<int>(r), kArrivalTag, comm.get(),
                        &requests[r]),
              "MPI_Irecv");
  }

  std::vector<int> missing;
  for (size_t r = 1; r < ranks; ++r) {
    if (!wait_until(requests[r], deadline)) missing.push_back(static_cast<int>(r));
  }

  Verdict verdict;
  verdict.ok = 1;
  std::string problem;
  if (!missing.empty()) {
    problem = "Timed out after " + std::to_string(timeout.count()) + " ms waiting for ranks to make the collective call " +
              describe(mine) + "; ranks that did not arrive:";
    for (int r : missing) problem += " " + std::to_string(r);
  } else {
    for (size_t r = 1; r < ranks; ++r) {
      if (arrivals[r].sequence != mine.sequence || std::strcmp(arrivals[r].call, mine.call) != 0) {
        problem = "Ranks make different calls: rank 0 calls " + describe(mine) + " but rank " + std::to_string(r) +
                  " calls " + describe(arrivals[r]);
        break;
      }
    }
  }
  if (!problem.empty()) {
    verdict.ok = 0;
    copy_text(verdict.message, sizeof(verdict.message), problem);
  }

  for (size_t r = 1; r < ranks; ++r) {
    if (std::find(missing.begin(), missing.end(), static_cast<int>(r)) != missing.end()) {
      MPI_Cancel(&requests[r]);
      MPI_Request_free(&requests[r]);
      continue;
    }
    check_mpi(MPI_Send(&verdict, sizeof(Verdict), MPI_BYTE, static_cast<int>(r), kVerdictTag, comm.get()), "MPI_Send");
  }
  if (!problem.empty()) {
    throw CollectiveError(problem, ErrorContext{{}, {}, std::nullopt, 0},
                          "Every rank must call the manager in the same order with the same step and name");
  }
}

}  // namespace

void rendezvous(const Communicator& comm, uint64_t sequence, const std::string& call,
                std::chrono::milliseconds timeout) {
  if (comm.size() == 1) return;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  Arrival mine;
  mine.sequence = sequence;
  copy_text(mine.call, sizeof(mine.call), call);
  if (comm.rank() == 0) {
    judge(comm, mine, deadline, timeout);
    return;
  }

  check_mpi(MPI_Send(&mine, sizeof(Arrival), MPI_BYTE, 0, kArrivalTag, comm.get()), "MPI_Send");
  Verdict verdict;
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Irecv(&verdict, sizeof(Verdict), MPI_BYTE, 0, kVerdictTag, comm.get(), &request), "MPI_Irecv");
  // Rank 0 replies at its own deadline at the latest; allow it a margin.
  if (!wait_until(request, deadline + timeout / 10 + std::chrono::seconds(1))) {
    MPI_Cancel(&request);
    MPI_Request_free(&request);
    throw CollectiveError("Timed out waiting for rank 0 to confirm the collective call " + describe(mine),
                          ErrorContext{{}, {}, std::nullopt, comm.rank()},
                          "Rank 0 did not reach this call; check that every rank calls the manager alike");
  }
  if (verdict.ok == 0) {
    throw CollectiveError(verdict.message, ErrorContext{{}, {}, std::nullopt, comm.rank()},
                          "Every rank must call the manager in the same order with the same step and name");
  }
}

}  // namespace persistence::detail
