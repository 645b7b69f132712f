// All schemas of the more3s torch ops, and the Python module stub `more3s._C`.
//
// Importing more3s._C runs the static registrations below; the Python wrappers live in
// more3s/model/ring_ops.py (which also registers the fake implementations for torch.compile).
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(more3s, m) {
  // Ring-buffer KV cache: write n new tokens [B, H, n, D] into slots (lengths[b] + j) % C.
  m.def(
      "ring_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor key, Tensor value, "
      "Tensor lengths) -> ()");
  // Decode attention of n new queries over the ring after ring_append, causal among them.
  m.def(
      "ring_attention(Tensor query, Tensor k_cache, Tensor v_cache, Tensor lengths, "
      "float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(more3s, CPU, m) {
  m.impl("ring_append", &more3s::ring_append_cpu);
  m.impl("ring_attention", &more3s::ring_attention_cpu);
}

#ifdef MORE3S_WITH_CUDA
TORCH_LIBRARY_IMPL(more3s, CUDA, m) {
  m.impl("ring_append", &more3s::ring_append_cuda);
  m.impl("ring_attention", &more3s::ring_attention_cuda);
}
#endif

// A plain extension module with no Python functions: the ops are reached through
// torch.ops.more3s once this shared object is loaded (as vLLM's REGISTER_EXTENSION does).
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, 0, nullptr};
  return PyModule_Create(&module);
}
