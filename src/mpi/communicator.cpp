#include "mpi/communicator.h"

#include "core/logging.h"

#include <cstdlib>
#include <numeric>

namespace persistence::detail {
namespace {

bool mpi_running() {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized != 0 && finalized == 0;
}

void finalize_at_exit() {
  if (mpi_running()) MPI_Finalize();
}

// Rebuilds an exception of the given kind so every rank throws the same type.
[[noreturn]] void throw_kind(const std::string& kind, const std::string& problem,
                             ErrorContext context, const std::string& advice) {
  if (kind == "InvalidArgumentError") throw InvalidArgumentError(problem, context, advice);
  if (kind == "NotFoundError") throw NotFoundError(problem, context, advice);
  if (kind == "IoError") throw IoError(problem, context, advice);
  if (kind == "FormatError") throw FormatError(problem, context, advice);
  if (kind == "IntegrityError") throw IntegrityError(problem, context, advice);
  if (kind == "CollectiveError") throw CollectiveError(problem, context, advice);
  if (kind == "StateMismatchError") throw StateMismatchError(problem, context, advice);
  throw Error(problem, context, advice);
}

// Serialises the fields of an exception as NUL-separated strings.
std::string describe(std::exception_ptr failure, int rank) {
  std::string kind = "Error";
  std::string problem;
  ErrorContext context;
  std::string advice;
  try {
    std::rethrow_exception(failure);
  } catch (const Error& error) {
    kind = error.kind();
    problem = error.problem();
    context = error.context();
    advice = error.advice();
  } catch (const std::exception& error) {
    problem = error.what();
  } catch (...) {
    problem = "Unknown exception";
  }
  std::string step = context.step ? std::to_string(*context.step) : std::string();
  std::string parts[] = {kind, problem, context.file, context.key, step, advice};
  std::string encoded;
  for (const auto& part : parts) {
    encoded += part;
    encoded.push_back('\0');
  }
  encoded += std::to_string(context.rank.value_or(rank));
  return encoded;
}

std::vector<std::string> split_nul(const std::string& encoded) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t end = encoded.find('\0', start);
    parts.push_back(encoded.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return parts;
}

}  // namespace

std::exception_ptr make_error(const std::string& kind, const std::string& problem, ErrorContext context,
                              const std::string& advice) {
  try {
    throw_kind(kind, problem, std::move(context), advice);
  } catch (...) {
    return std::current_exception();
  }
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw IoError(std::string(call) + " failed: " + std::string(text, length), {});
}

int ensure_mpi_initialized() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  int provided = MPI_THREAD_SINGLE;
  if (initialized != 0) {
    MPI_Query_thread(&provided);
    return provided;
  }
  check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
  std::atexit(finalize_at_exit);
  return provided;
}

Communicator::Communicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

Communicator Communicator::duplicate(MPI_Comm comm) {
  MPI_Comm copy = MPI_COMM_NULL;
  check_mpi(MPI_Comm_dup(comm, &copy), "MPI_Comm_dup");
  return Communicator(copy, true);
}

Communicator Communicator::borrow(MPI_Comm comm) { return Communicator(comm, false); }

Communicator::Communicator(Communicator&& other) noexcept
    : comm_(other.comm_), owned_(other.owned_), rank_(other.rank_), size_(other.size_) {
  other.comm_ = MPI_COMM_NULL;
  other.owned_ = false;
}

Communicator& Communicator::operator=(Communicator&& other) noexcept {
  if (this != &other) {
    this->~Communicator();
    new (this) Communicator(std::move(other));
  }
  return *this;
}

Communicator::~Communicator() {
  bool predefined = comm_ == MPI_COMM_WORLD || comm_ == MPI_COMM_SELF || comm_ == MPI_COMM_NULL;
  if (owned_ && !predefined && mpi_running()) MPI_Comm_free(&comm_);
}

void Communicator::barrier() const { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

std::string Communicator::broadcast(const std::string& value, int root) const {
  int64_t length = broadcast(static_cast<int64_t>(value.size()), root);
  std::string result = rank_ == root ? value : std::string(static_cast<size_t>(length), '\0');
  if (length > 0) {
    check_mpi(MPI_Bcast(result.data(), static_cast<int>(length), MPI_CHAR, root, comm_), "MPI_Bcast");
  }
  return result;
}

int64_t Communicator::broadcast(int64_t value, int root) const {
  check_mpi(MPI_Bcast(&value, 1, MPI_INT64_T, root, comm_), "MPI_Bcast");
  return value;
}

std::vector<std::string> Communicator::allgather(const std::string& local) const {
  int length = static_cast<int>(local.size());
  std::vector<int> lengths(static_cast<size_t>(size_));
  check_mpi(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, comm_), "MPI_Allgather");

  std::vector<int> displacements(lengths.size(), 0);
  std::exclusive_scan(lengths.begin(), lengths.end(), displacements.begin(), 0);
  std::string gathered(static_cast<size_t>(displacements.back() + lengths.back()), '\0');
  check_mpi(MPI_Allgatherv(local.data(), length, MPI_CHAR, gathered.data(), lengths.data(),
                           displacements.data(), MPI_CHAR, comm_),
            "MPI_Allgatherv");

  std::vector<std::string> result;
  result.reserve(lengths.size());
  for (size_t r = 0; r < lengths.size(); ++r) {
    result.push_back(gathered.substr(static_cast<size_t>(displacements[r]), static_cast<size_t>(lengths[r])));
  }
  return result;
}

int64_t Communicator::allreduce_max(int64_t value) const {
  int64_t result = 0;
  check_mpi(MPI_Allreduce(&value, &result, 1, MPI_INT64_T, MPI_MAX, comm_), "MPI_Allreduce");
  return result;
}

int64_t Communicator::allreduce_min(int64_t value) const {
  int64_t result = 0;
  check_mpi(MPI_Allreduce(&value, &result, 1, MPI_INT64_T, MPI_MIN, comm_), "MPI_Allreduce");
  return result;
}

int64_t Communicator::allreduce_sum(int64_t value) const {
  int64_t result = 0;
  check_mpi(MPI_Allreduce(&value, &result, 1, MPI_INT64_T, MPI_SUM, comm_), "MPI_Allreduce");
  return result;
}

void Communicator::allreduce_sum(std::vector<uint64_t>& values) const {
  if (values.empty()) return;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_UINT64_T,
                          MPI_SUM, comm_),
            "MPI_Allreduce");
}

void agree(const Communicator& comm, std::exception_ptr local_failure) {
  int64_t failed = local_failure ? 1 : 0;
  int64_t candidate = local_failure ? comm.rank() : comm.size();
  int64_t first = comm.allreduce_min(candidate);
  if (first == comm.size()) return;
  int64_t failures = comm.allreduce_sum(failed);

  std::string encoded = comm.rank() == first ? describe(local_failure, comm.rank()) : std::string();
  encoded = comm.broadcast(encoded, static_cast<int>(first));
  std::vector<std::string> parts = split_nul(encoded);
  parts.resize(7);

  ErrorContext context{parts[2], parts[3], std::nullopt, std::atoi(parts[6].c_str())};
  if (!parts[4].empty()) context.step = std::atoll(parts[4].c_str());
  std::string problem = parts[1];
  // An error that an earlier agreement produced (a background write's, thrown
  // again by the next manager call) already names the failing ranks.
  const bool ranks_named = problem.find(" ranks; this message is from the lowest]") != std::string::npos;
  if (failures > 1 && !ranks_named) {
    problem += " [failed on " + std::to_string(failures) + " of " + std::to_string(comm.size()) +
               " ranks; this message is from the lowest]";
  }
  throw_kind(parts[0], problem, context, parts[5]);
}

}  // namespace persistence::detail
