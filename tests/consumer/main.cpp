// Uses an installed persistence the way an application does: the umbrella
// header, the persistence::persistence target, and calls into the shared
// library. Needs no MPI launcher. Exits non-zero when a check fails.

#include <persistence/persistence.h>

#include <iostream>
#include <string>

int main() {
  int failures = 0;

  // Defined in the library, so this checks linking as well as compiling.
  const persistence::ShardedTensor tensor({4, 3}, c10::ScalarType::Float);
  if (tensor.global_numel() != 12) {
    std::cerr << "ShardedTensor({4, 3}).global_numel(): expected 12, but got "
              << tensor.global_numel() << "\n";
    ++failures;
  }

  const auto models = persistence::registered_models();

  const std::string header_version = persistence::kLibraryVersion;
  if (header_version != PERSISTENCE_PACKAGE_VERSION) {
    std::cerr << "installed persistence/version.h reports " << header_version
              << ", but find_package(persistence) found version " << PERSISTENCE_PACKAGE_VERSION
              << "\n";
    ++failures;
  }

  if (failures > 0) {
    return 1;
  }
  std::cout << "consumer: persistence " << header_version << " links and runs, "
            << models.size() << " registered models\n";
  return 0;
}
