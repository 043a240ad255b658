// Checked MPI calls, a move-only communicator handle, and the agreement step
// that turns a failure on one rank into the same exception on every rank.
#pragma once

#include <persistence/errors.h>

#include <mpi.h>

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace persistence::detail {

// Throws IoError naming call and the MPI_Error_string of rc unless rc is MPI_SUCCESS.
void check_mpi(int rc, const char* call);

// Initialises MPI with MPI_THREAD_MULTIPLE unless the application already did,
// and finalises it at exit in that case. Returns the provided thread level.
int ensure_mpi_initialized();

// A communicator, owned (a duplicate, freed on destruction while MPI is still
// running) or borrowed. Never frees MPI_COMM_WORLD or MPI_COMM_SELF.
class Communicator {
 public:
  // Collective over comm: duplicates it, so library traffic never matches the application's.
  static Communicator duplicate(MPI_Comm comm);
  static Communicator borrow(MPI_Comm comm);

  Communicator(Communicator&& other) noexcept;
  Communicator& operator=(Communicator&& other) noexcept;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  ~Communicator();

  MPI_Comm get() const noexcept { return comm_; }
  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }

  // All methods below are collective over this communicator.
  void barrier() const;
  std::string broadcast(const std::string& value, int root = 0) const;
  int64_t broadcast(int64_t value, int root = 0) const;
  std::vector<std::string> allgather(const std::string& local) const;
  int64_t allreduce_max(int64_t value) const;
  int64_t allreduce_min(int64_t value) const;
  int64_t allreduce_sum(int64_t value) const;
  // Sums in place, wrapping modulo 2^64.
  void allreduce_sum(std::vector<uint64_t>& values) const;

 private:
  Communicator(MPI_Comm comm, bool owned);

  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
  int rank_ = 0;
  int size_ = 1;
};

// Returns an exception of the class named kind (Error::kind()), so an error
// can be rebuilt with more context without changing its type.
std::exception_ptr make_error(const std::string& kind, const std::string& problem, ErrorContext context,
                              const std::string& advice);

// Collective. Combines the outcome of local work across ranks: when any rank
// passes an exception, every rank throws the same kind of error with the
// lowest failing rank's message, which names that rank and how many failed.
void agree(const Communicator& comm, std::exception_ptr local_failure);

// Collective. Runs work on this rank and agrees on its outcome.
template <typename Work>
void run_agreed(const Communicator& comm, Work&& work) {
  std::exception_ptr failure;
  try {
    work();
  } catch (...) {
    failure = std::current_exception();
  }
  agree(comm, failure);
}

}  // namespace persistence::detail
