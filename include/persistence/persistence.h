// Umbrella header: the whole public API of persistence.
#pragma once

#include <persistence/errors.h>
#include <persistence/fsdp.h>
#include <persistence/loading.h>
#include <persistence/manager.h>
#include <persistence/model_registry.h>
#include <persistence/module_states.h>
#include <persistence/options.h>
#include <persistence/persisted.h>
#include <persistence/state_dict.h>
#include <persistence/version.h>
#include <persistence/zero.h>
