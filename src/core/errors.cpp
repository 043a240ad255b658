#include <persistence/errors.h>

#include <sstream>

namespace persistence {
namespace {

std::string format_message(const std::string& problem, const ErrorContext& context,
                           const std::string& advice) {
  std::ostringstream out;
  out << problem;

  std::ostringstream subject;
  const char* separator = "";
  if (!context.file.empty()) {
    subject << separator << "file '" << context.file << "'";
    separator = ", ";
  }
  if (!context.key.empty()) {
    subject << separator << "key '" << context.key << "'";
    separator = ", ";
  }
  if (context.step) {
    subject << separator << "step " << *context.step;
    separator = ", ";
  }
  if (context.rank) {
    subject << separator << "rank " << *context.rank;
  }
  if (!subject.str().empty()) out << " (" << subject.str() << ")";
  if (!advice.empty()) out << ". " << advice;
  return out.str();
}

}  // namespace

Error::Error(const std::string& problem, ErrorContext context, const std::string& advice)
    : std::runtime_error(format_message(problem, context, advice)),
      problem_(problem),
      context_(std::move(context)),
      advice_(advice) {}

}  // namespace persistence
