// Python bindings of fastrel._C. `cuda` tells Python whether the CUDA kernels were compiled in.
#include "global_relation.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrel native kernels";
  m.def("global_relation_forward_cpu", &fastrel::global_relation_forward_cpu);
  m.def("global_relation_backward_cpu", &fastrel::global_relation_backward_cpu);
  m.def("global_relation_sort_forward_cpu", &fastrel::global_relation_sort_forward_cpu);
  m.def("global_relation_sort_backward_cpu", &fastrel::global_relation_sort_backward_cpu);
#ifdef WITH_CUDA
  m.def("global_relation_forward_cuda", &fastrel::global_relation_forward_cuda);
  m.def("global_relation_backward_cuda", &fastrel::global_relation_backward_cuda);
  m.attr("cuda") = true;
#else
  m.attr("cuda") = false;
#endif
}
