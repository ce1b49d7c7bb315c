// Python bindings of fastrel._C. `cuda` tells Python whether the CUDA kernels were compiled in;
// `ACTIVATION_CODES` are the codes the kernels were compiled with, which fastrel/backends/native.py
// compares with fastrel/activations.py before it uses any kernel.
#include <torch/extension.h>

#include "global_relation.h"
#include "relation_math.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrel native kernels";
  m.def("global_relation_forward_cpu", &fastrel::global_relation_forward_cpu);
  m.def("global_relation_backward_cpu", &fastrel::global_relation_backward_cpu);
  m.def("global_relation_sort_forward_cpu", &fastrel::global_relation_sort_forward_cpu);
  m.def("global_relation_sort_backward_cpu", &fastrel::global_relation_sort_backward_cpu);
  pybind11::dict codes;
  codes["identity"] = static_cast<int>(fastrel::kIdentity);
  codes["relu"] = static_cast<int>(fastrel::kRelu);
  codes["leaky_relu"] = static_cast<int>(fastrel::kLeakyRelu);
  codes["abs"] = static_cast<int>(fastrel::kAbs);
  m.attr("ACTIVATION_CODES") = codes;
#ifdef WITH_CUDA
  m.def("global_relation_forward_cuda", &fastrel::global_relation_forward_cuda);
  m.def("global_relation_backward_cuda", &fastrel::global_relation_backward_cuda);
  m.attr("cuda") = true;
#else
  m.attr("cuda") = false;
#endif
}
