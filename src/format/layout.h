// Names inside a step file. The layout is documented for users in docs/format.md.
#pragma once

namespace persistence::detail::layout {

inline constexpr const char* kFormatName = "persistence";
inline constexpr const char* kChecksumAlgorithm = "poly64-v1";

// Root attributes.
inline constexpr const char* kAttrFormat = "format";
inline constexpr const char* kAttrFormatVersion = "format_version";
inline constexpr const char* kAttrStep = "step";
inline constexpr const char* kAttrWorldSize = "world_size";
inline constexpr const char* kAttrCreated = "created";
inline constexpr const char* kAttrLibraryVersion = "library_version";
inline constexpr const char* kAttrTaskId = "task_id";
inline constexpr const char* kAttrChecksumAlgorithm = "checksum_algorithm";

// Attributes of every tensor dataset.
inline constexpr const char* kAttrTorchDtype = "torch_dtype";
inline constexpr const char* kAttrSourceDtype = "source_dtype";
inline constexpr const char* kAttrKey = "key";
inline constexpr const char* kAttrChecksum = "checksum";

// Objects.
inline constexpr const char* kConfig = "config";
inline constexpr const char* kModels = "models";
inline constexpr const char* kOptimizers = "optimizers";
inline constexpr const char* kStates = "states";
inline constexpr const char* kParamGroups = "param_groups";

}  // namespace persistence::detail::layout
