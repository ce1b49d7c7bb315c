// fastrel's CUDA kernels and the host code that plans their launches (csrc/global_relation_cuda.cu),
// compiled for the CPU against cuda_emulation.h: the module tests/test_cuda_emulation.py loads.
#include "cuda_emulation.h"
// The emulation header must come first.
#include "global_relation_cuda.cu"

#include <torch/extension.h>

namespace {

// Sets the emulated device's limits (a value < 0 keeps the current one) and clears its counters.
void configure(int multiprocessors, int shared_optin, int64_t max_grid_yz) {
  auto& d = emulation::device;
  if (multiprocessors >= 0) d.multiprocessors = multiprocessors;
  if (shared_optin >= 0) d.shared_optin = shared_optin;
  if (max_grid_yz >= 0) d.max_grid_yz = static_cast<unsigned>(max_grid_yz);
  d.atomics = 0;
  d.most_dynamic_shared = 0;
  d.dynamic_limit.clear();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrel's CUDA kernels and launch plans, emulated on the CPU";
  m.def("forward", &fastrel::forward, "g for checked inputs (CPU tensors)");
  m.def("backward", &fastrel::backward, "(da, db, dweight, dbias) for checked inputs (CPU tensors)");
  m.def("configure", &configure, pybind11::arg("multiprocessors") = -1, pybind11::arg("shared_optin") = -1,
        pybind11::arg("max_grid_yz") = -1);
  m.def("atomics", [] { return emulation::device.atomics; }, "atomic operations since configure()");
  m.def("most_dynamic_shared", [] { return emulation::device.most_dynamic_shared; },
        "largest dynamic shared memory of a launch since configure(), bytes");
  m.attr("max_clip_items") = fastrel::cuda_kernels::kMaxClipItems;
}
