// The fastdnas op library: its schemas (schemas.h); kernels register per dispatch key beside
// each op (the autograd formulas too: *_autograd.cpp), the fake (meta) kernels from Python
// (fastdnas/ops/, one module per op).
#include <Python.h>
#include <torch/library.h>

#include "schemas.h"

extern "C" {
// Importing fastdnas._C loads this library and so runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastdnas, m) { fastdnas::define_op_schemas(m); }
