// Exception hierarchy of persistence. Every error carries its subject (file,
// dataset key, step, rank) as fields and in its message, so a log line alone
// tells which checkpoint and which rank went wrong.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

namespace persistence {

// Subject of an error. Unknown parts stay empty and are left out of the message.
struct ErrorContext {
  std::string file;
  std::string key;
  std::optional<int64_t> step;
  std::optional<int> rank;
};

// Base of every exception the library throws. what() is the full message:
// the problem, then the subject, then the advice.
class Error : public std::runtime_error {
 public:
  Error(const std::string& problem, ErrorContext context, const std::string& advice = {});

  const std::string& problem() const noexcept { return problem_; }
  const ErrorContext& context() const noexcept { return context_; }
  const std::string& advice() const noexcept { return advice_; }

  // Name of the concrete class, used to rethrow the same kind on every rank.
  virtual const char* kind() const noexcept { return "Error"; }

 private:
  std::string problem_;
  ErrorContext context_;
  std::string advice_;
};

// A caller passed a value the library cannot accept (bad step, name, path, state dict).
class InvalidArgumentError : public Error {
 public:
  using Error::Error;
  const char* kind() const noexcept override { return "InvalidArgumentError"; }
};

// A file, step, model or task that was asked for does not exist.
class NotFoundError : public Error {
 public:
  using Error::Error;
  const char* kind() const noexcept override { return "NotFoundError"; }
};

// Reading or writing storage failed (HDF5, MPI-IO, POSIX calls).
class IoError : public Error {
 public:
  using Error::Error;
  const char* kind() const noexcept override { return "IoError"; }
};

// A file is not a persistence checkpoint, or has a layout this version cannot read.
class FormatError : public Error {
 public:
  using Error::Error;
  const char* kind() const noexcept override { return "FormatError"; }
};

// Data read back does not match the checksum stored when it was written.
class IntegrityError : public Error {
 public:
  using Error::Error;
  const char* kind() const noexcept override { return "IntegrityError"; }
};

// Ranks disagree in a collective call (keys, shapes, shards, steps, names).
class CollectiveError : public Error {
 public:
  using Error::Error;
  const char* kind() const noexcept override { return "CollectiveError"; }
};

// Loaded states do not fit the module or optimizer they are loaded into.
class StateMismatchError : public Error {
 public:
  using Error::Error;
  const char* kind() const noexcept override { return "StateMismatchError"; }
};

}  // namespace persistence
