// Dtype dispatch for the more3s ops: the three floating types a rollout runs in.
//
// Every kernel accumulates in float32 whatever its storage type, so float16 and bfloat16
// work on the CPU as well as on the GPU.
#pragma once

#include <ATen/Dispatch.h>

#define MORE3S_DISPATCH_CASE_FLOATING_TYPES(...)         \
  AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__)   \
  AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)    \
  AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__)

#define MORE3S_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, MORE3S_DISPATCH_CASE_FLOATING_TYPES(__VA_ARGS__))
