// Step file names and the POSIX operations that make a step durable: fsync of
// the file, rename to the final name, fsync of the directory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace persistence::detail {

// Returns "step_<step, 12 digits>.h5".
std::string step_file_name(int64_t step);

// The step of a final step file name, or nullopt for any other name.
std::optional<int64_t> parse_step_file_name(const std::string& name);

// Steps that have a final step file in dir, ascending. A missing dir has none.
std::vector<int64_t> list_steps(const std::string& dir);

// Steps that retention removes from committed (ascending): all but the newest
// keep_last, except multiples of keep_every; never the newest. keep_last 0 keeps all.
std::vector<int64_t> steps_to_remove(const std::vector<int64_t>& committed, int64_t keep_last, int64_t keep_every);

// A hidden temporary name for step in dir; token makes it unique per attempt.
std::string temporary_step_path(const std::string& dir, int64_t step, const std::string& token);

// Removes temporary step files that a crashed save left in dir. Returns how many.
int remove_stale_temporaries(const std::string& dir);

// Turns "/abs/dir" or "file:///abs/dir" into an absolute directory path without
// a trailing slash. Other schemes are an InvalidArgumentError.
std::string local_root(const std::string& path);

// mkdir -p; throws IoError naming the first component that cannot be created.
void make_directories(const std::string& dir);

// Creates dir unless it exists; its parent must exist. Throws IoError otherwise,
// so a mistyped path fails instead of growing a new directory tree.
void make_save_directory(const std::string& dir);

// Throws IoError when dir does not accept new files.
void check_writable(const std::string& dir);

// fsync of a file or directory by path; IoError on failure.
void sync_path(const std::string& path);

// Renames from to to, then syncs the directory, so the new name survives a crash.
void rename_durably(const std::string& from, const std::string& to);

// Copies a file's bytes with copy_file_range, without syncing the copy.
void copy_file(const std::string& from, const std::string& to);

// Writes content to path through a temporary file and a durable rename.
void write_file_atomically(const std::string& path, const std::string& content);

// Free bytes for unprivileged users on the file system that contains dir.
uint64_t free_bytes(const std::string& dir);

}  // namespace persistence::detail
